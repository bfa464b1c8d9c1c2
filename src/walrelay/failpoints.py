"""Named failpoints: crash (or stall) walrelay at exactly one durability step.

Every point where progress becomes durable calls :func:`hit` with a stable
name. In production nothing is configured and ``hit`` is one dict lookup on
an empty dict. Tests switch points on through an environment variable read
once at import (or again by :func:`reload`)::

    WALRELAY_FAILPOINTS="ledger.after_record=crash"          # first hit
    WALRELAY_FAILPOINTS="sink.after_send=crash@3"            # third hit
    WALRELAY_FAILPOINTS="pipeline.after_finish=sleep:0.5;lsn.after_confirm=crash@2"

Actions:

``crash`` / ``crash@N``
    write one line ``walrelay: failpoint NAME: crash`` to stderr, then
    ``os._exit(137)`` at once (no ``finally`` blocks, no flushing of
    buffers, no goodbye to the server: like ``kill -9``, but at a known
    point). ``@N``: on the N-th hit (counted per process), default 1.
``sleep:SECONDS``
    block the thread for that long on every hit (to widen a race window).
``off``
    nothing (a way to keep a name in a list).

The names, in the order an event passes them (see :data:`POINTS`):

``sink.before_send``
    the ledger said "not delivered yet"; nothing sent.
``sink.after_send``
    the sink acknowledged the batch (HTTP 2xx, broker ack, PostgreSQL
    COMMIT returned); the ledger is not written yet.
``ledger.after_record``
    the ledger holds the batch's ids; the pipeline does not know yet.
``pipeline.after_finish``
    the events are finished (delivered or parked) and the LSN tracker
    counted them; the server has not been told.
``lsn.after_confirm``
    a standby status update with the new confirmed LSN was sent.
``postgres.before_commit``
    the PostgreSQL sink applied a batch and recorded its ids, inside the
    target transaction, and is about to COMMIT.
``retry.after_park``
    failed (or diverted) events are committed to the failed-events table;
    the pipeline has not counted them as finished yet.
``retry.after_delete``
    a parked event was delivered from the table and its row deleted; its
    key has not moved on yet.

The failed-event store (``walrelay.pipeline.retry``) adds its own:
``retry.after_park`` (events committed to the failed-events table, not yet
counted as finished) and ``retry.after_delete`` (a parked event delivered and
its row deleted).

Anyone may add a point: call ``failpoints.hit("area.step")`` at the spot and
name it here.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

__all__ = ["ENV_VAR", "EXIT_CODE", "POINTS", "FailpointSpecError", "active", "hit", "reload"]

ENV_VAR = "WALRELAY_FAILPOINTS"
EXIT_CODE = 137  # what a shell reports for SIGKILL: the crash looks like kill -9

POINTS: tuple[str, ...] = (
    "sink.before_send",
    "sink.after_send",
    "ledger.after_record",
    "pipeline.after_finish",
    "lsn.after_confirm",
    "postgres.before_commit",
    "retry.after_park",  # failed events committed to the store, not yet finished
    "retry.after_delete",  # a parked event delivered and its row deleted; key not yet released
)
"""The points walrelay's core calls. Others may be hit too (any name is accepted)."""


class FailpointSpecError(ValueError):
    """``WALRELAY_FAILPOINTS`` does not parse."""


@dataclass
class _Point:
    action: str  # "crash" | "sleep" | "off"
    nth: int = 1
    seconds: float = 0.0
    hits: int = 0


_points: dict[str, _Point] = {}


def _parse(spec: str) -> dict[str, _Point]:
    points: dict[str, _Point] = {}
    for raw in spec.replace(",", ";").split(";"):
        item = raw.strip()
        if not item:
            continue
        name, sep, action = item.partition("=")
        name, action = name.strip(), action.strip()
        if not sep or not name:
            raise FailpointSpecError(f"{ENV_VAR}: {item!r} is not NAME=ACTION")
        if action == "off":
            points[name] = _Point("off")
        elif action == "crash" or action.startswith("crash@"):
            nth = 1
            if "@" in action:
                try:
                    nth = int(action.partition("@")[2])
                except ValueError:
                    nth = 0
                if nth < 1:
                    raise FailpointSpecError(f"{ENV_VAR}: {item!r}: crash@N needs N >= 1")
            points[name] = _Point("crash", nth=nth)
        elif action.startswith("sleep:"):
            try:
                seconds = float(action.partition(":")[2])
            except ValueError:
                seconds = -1.0
            if seconds < 0:
                raise FailpointSpecError(f"{ENV_VAR}: {item!r}: sleep:SECONDS needs SECONDS >= 0")
            points[name] = _Point("sleep", seconds=seconds)
        else:
            raise FailpointSpecError(
                f"{ENV_VAR}: {item!r}: unknown action (use crash, crash@N, sleep:SECONDS, off)"
            )
    return points


def reload(spec: str | None = None) -> None:
    """Re-read the points from ``spec`` (default: the environment variable)."""
    global _points
    _points = _parse(os.environ.get(ENV_VAR, "") if spec is None else spec)


def active() -> dict[str, str]:
    """The configured points and their actions (for logs)."""
    out: dict[str, str] = {}
    for name, p in _points.items():
        if p.action == "crash":
            out[name] = f"crash@{p.nth}"
        elif p.action == "sleep":
            out[name] = f"sleep:{p.seconds:g}"
        else:
            out[name] = p.action
    return out


def hit(name: str) -> None:
    """Pass the failpoint ``name``: does nothing unless it is switched on."""
    if not _points:
        return
    point = _points.get(name)
    if point is None:
        return
    point.hits += 1
    if point.action == "crash" and point.hits == point.nth:
        try:
            sys.stderr.write(f"walrelay: failpoint {name}: crash\n")
            sys.stderr.flush()
        finally:
            os._exit(EXIT_CODE)
    elif point.action == "sleep":
        time.sleep(point.seconds)  # blocking on purpose: the whole process stalls here


reload()
