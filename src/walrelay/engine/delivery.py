"""A slot's destinations: sink, buffer and scheduler, with their delivery hooks.

Each destination's hooks, in order (see :mod:`walrelay.pipeline.hooks`):
the dedup ledger (non-transactional sinks), failpoints, the completion
hook (LSN tracker, delivery lag, ``--until-lsn``), latency metrics. Parking
(the failed deliveries' store) is the scheduler's own collaborator, because
it also decides which events may be taken at all.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from walrelay.config import Config, DestinationConfig
from walrelay.engine.waiting_sink import WaitingSink
from walrelay.errors import SinkUnavailable
from walrelay.model import Event, Lsn
from walrelay.pipeline.backoff import Backoff
from walrelay.pipeline.hooks import DeliveryHook, FailpointHook
from walrelay.pipeline.ledger import TrimAware, ledger_hook
from walrelay.pipeline.lsn import LsnTracker
from walrelay.pipeline.parking import ParkingStore
from walrelay.pipeline.scheduler import Destination, ParkingFactory
from walrelay.pipeline.stats import EngineStats
from walrelay.sinks.base import Sink

__all__ = ["CompletionHook", "Destinations", "SinkFactory", "open_destinations"]

log = logging.getLogger("walrelay.engine")

SinkFactory = Callable[[DestinationConfig], Sink]


class CompletionHook(DeliveryHook):
    """Finished events count into the LSN tracker; the newest one's age is the
    delivery lag; once ``until_lsn`` is confirmed the engine is asked to stop."""

    def __init__(
        self,
        destination: str,
        tracker: LsnTracker,
        stats: EngineStats,
        *,
        until_lsn: Lsn | None,
        request_stop: Callable[[], None],
    ) -> None:
        self.destination = destination
        self.tracker = tracker
        self.stats = stats
        self.until_lsn = until_lsn
        self.request_stop = request_stop

    def on_finished(self, events: Sequence[Event], *, parked: bool) -> None:
        tracker = self.tracker
        tracker.finish_events(events, self.destination)
        if self.until_lsn is not None and tracker.confirmed >= self.until_lsn:
            self.request_stop()
        if events:
            self.stats.last_delivery_lag = max(
                0.0, (datetime.now(UTC) - events[-1].committed_at).total_seconds()
            )


class Destinations:
    """The open destinations of one slot, and the parking store they share."""

    def __init__(self) -> None:
        self.by_name: dict[str, Destination] = {}
        self.parking: ParkingStore | None = None

    def oldest_parked(self) -> Lsn | None:
        """The commit LSN of the oldest parked event of any destination."""
        if self.parking is None:
            return None
        oldest: Lsn | None = None
        for parked in self.parking.destinations.values():
            lsn = parked.oldest_commit_lsn()
            if lsn is not None and (oldest is None or lsn < oldest):
                oldest = lsn
        return oldest

    def trim_targets(self) -> list[TrimAware]:
        """Whatever keeps per-id records: ledger hooks and self-deduplicating sinks."""
        return [
            t for d in self.by_name.values() for t in (d.sink, *d.hooks) if isinstance(t, TrimAware)
        ]

    async def close(self) -> None:
        """Stop the schedulers, then parking (its retry loops use the sinks),
        then the hooks and sinks."""
        for dest in self.by_name.values():
            with contextlib.suppress(Exception):
                await dest.stop()
        if self.parking is not None:
            try:
                await self.parking.close()
            except Exception as e:
                log.warning("parking: error while closing: %s", e)
        for dest in self.by_name.values():
            for hook in dest.hooks:
                try:
                    await hook.close()
                except Exception as e:
                    log.warning("destination %s: error while closing %r: %s", dest.name, hook, e)
            try:
                await dest.sink.close()
            except Exception as e:  # closing must not hide the reason we stopped
                log.warning("destination %s: error while closing sink: %s", dest.name, e)


async def open_destinations(
    config: Config,
    sink_factory: SinkFactory,
    hooks_for: Callable[[str], list[DeliveryHook]],
    *,
    ledger_sole_writer: bool = False,
) -> Destinations:
    """Open every configured destination (not started). ``hooks_for(name)``
    gives the hooks that follow the ledger and failpoint hooks.
    ``ledger_sole_writer``: no other process records under these destinations'
    ledger keys (the relay; see :class:`walrelay.pipeline.ledger.LedgerHook`)."""
    out = Destinations()
    opened: list[Sink | DeliveryHook] = []
    try:
        for dcfg in config.destinations:
            backoff = Backoff(
                initial=dcfg.retry.initial,
                multiplier=dcfg.retry.multiplier,
                maximum=dcfg.retry.max,
            )
            sink = await _open_sink(dcfg.name, sink_factory(dcfg), backoff)
            opened.append(sink)
            ledger = ledger_hook(sink, config, dcfg, sole_writer=ledger_sole_writer)
            hooks = [
                *([ledger] if ledger is not None else []),
                FailpointHook(),
                *hooks_for(dcfg.name),
            ]
            for hook in hooks:
                await hook.open()
                opened.append(hook)
            out.by_name[dcfg.name] = Destination(
                dcfg.name,
                sink,
                max_in_flight=dcfg.effective_max_in_flight(),
                max_buffer_bytes=dcfg.buffer_bytes,
                backoff=backoff,
                hooks=hooks,
                parking=_parking_for(config, dcfg, sink, out),
            )
        if out.parking is not None:
            await out.parking.open()
            await out.parking.load()
            out.parking.start()
    except BaseException:
        if out.parking is not None:
            await out.parking.close()
        for thing in opened:
            with contextlib.suppress(Exception):
                await thing.close()
        raise
    return out


async def _open_sink(name: str, sink: Sink, backoff: Backoff) -> Sink:
    """The sink, open; or, if its server cannot be reached now, a
    :class:`WaitingSink` that opens it when it can (a config error still raises)."""
    try:
        await sink.open()
    except SinkUnavailable as e:
        waiting = WaitingSink(name, sink, e, backoff)
        log.error("%s", waiting.not_ready)
        waiting.start()
        return waiting
    return sink


def _parking_for(
    config: Config, dcfg: DestinationConfig, sink: Sink, out: Destinations
) -> ParkingFactory | None:
    """The destination's parking, unless it is off or the sink is ordered (a
    parked event would be overtaken: those retry in memory)."""
    if not dcfg.parking.enabled:
        return None
    if sink.ordered:
        log.info(
            "destination %s: its sink delivers in exact id order, so failed deliveries"
            " are retried in memory instead of being parked",
            dcfg.name,
        )
        return None
    if out.parking is None:
        out.parking = ParkingStore(config.state_dsn, config.state.schema)
    return out.parking.parking_for(
        dcfg.name, dcfg.parking, max_in_flight=dcfg.effective_max_in_flight()
    )
