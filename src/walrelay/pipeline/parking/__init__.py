"""Parking: where an event waits after its delivery failed.

A failed event -- and every later event of the same key -- is parked in the
state database (``<state schema>.parked_events``), re-delivered with
exponential backoff in key order, and survives restarts. One module per job:

``index``        which keys are blocked, barriers, what is due, the cap (pure)
``writes``       the writes queued for the state database
``store``        :class:`ParkingStore`: the database writer, load, fetch
``destination``  :class:`DestinationParking`: one destination's parking, as the
                 scheduler sees it (:class:`walrelay.pipeline.scheduler.Parking`)
``retry_loop``   re-delivery of due parked events with backoff
``listen``       operators' changes (``walrelay parking retry|discard``)
``host``         :class:`ParkingHost`: what parking needs from its destination
"""

from walrelay.pipeline.parking.destination import (
    PAUSED_MESSAGE,
    RESUMED_MESSAGE,
    DestinationParking,
)
from walrelay.pipeline.parking.host import ParkingHost
from walrelay.pipeline.parking.index import ParkedRow, ParkingIndex
from walrelay.pipeline.parking.store import ParkingStore

__all__ = [
    "PAUSED_MESSAGE",
    "RESUMED_MESSAGE",
    "DestinationParking",
    "ParkedRow",
    "ParkingHost",
    "ParkingIndex",
    "ParkingStore",
]
