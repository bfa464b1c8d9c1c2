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

The names, in the order an event passes them (see :data:`POINTS`); each has
a module constant (``SINK_BEFORE_SEND`` for ``sink.before_send``, ...):

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
    the PostgreSQL sink sent a batch's claim of its ids and its changes,
    inside the target transaction, and is about to queue COMMIT (in the same
    pipeline; their results are read after it).
``retry.after_park``
    failed (or diverted) events are committed to the parked-events table;
    the pipeline has not counted them as finished yet.
``retry.after_delete``
    a parked event was delivered from the table and its row deleted; its
    key has not moved on yet.
``kafka.before_commit``
    the transactional (``exactly_once``) Kafka sink produced the batch and
    its checkpoint record and is about to call ``commit_transaction``.
``kafka.after_commit``
    ``commit_transaction`` returned; the sink has not reported the batch
    delivered yet.
``file.after_fsync``
    the file sink's ``fsync`` of the batch returned (``fsync: batch`` or
    ``always``); the batch is not reported delivered yet.
``nats.after_ack``
    every JetStream publish ack of the batch was received; not yet checked
    nor reported delivered.
``redis.after_xadd``
    the replies to the batch's ``XADD`` pipeline were received; not yet
    checked nor reported delivered.
``snapshot.after_record``
    the snapshot's state row (its progress) was written.
``backfill.after_cursor``
    a backfill's cursor / progress row was written.
``outbox.after_partition_drop``
    outbox upkeep dropped a detached partition; the next one (if any) is
    not handled yet.

A name in ``WALRELAY_FAILPOINTS`` that is not one of these is an error
(:class:`FailpointSpecError`, a :class:`~walrelay.errors.ConfigError`),
raised when the variable is parsed: at import and by :func:`reload`.

To add a point: define a constant here, add it to :data:`POINTS`, describe
it above, and call ``failpoints.hit(failpoints.THE_CONSTANT)`` at the spot
(a unit test refuses string literals at ``hit`` call sites).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Final

from walrelay.errors import ConfigError

__all__ = [
    "BACKFILL_AFTER_CURSOR",
    "ENV_VAR",
    "EXIT_CODE",
    "FILE_AFTER_FSYNC",
    "KAFKA_AFTER_COMMIT",
    "KAFKA_BEFORE_COMMIT",
    "LEDGER_AFTER_RECORD",
    "LSN_AFTER_CONFIRM",
    "NATS_AFTER_ACK",
    "OUTBOX_AFTER_PARTITION_DROP",
    "PIPELINE_AFTER_FINISH",
    "POINTS",
    "POSTGRES_BEFORE_COMMIT",
    "REDIS_AFTER_XADD",
    "RETRY_AFTER_DELETE",
    "RETRY_AFTER_PARK",
    "SINK_AFTER_SEND",
    "SINK_BEFORE_SEND",
    "SNAPSHOT_AFTER_RECORD",
    "FailpointSpecError",
    "active",
    "hit",
    "reload",
]

ENV_VAR = "WALRELAY_FAILPOINTS"
EXIT_CODE = 137  # what a shell reports for SIGKILL: the crash looks like kill -9

SINK_BEFORE_SEND: Final = "sink.before_send"
SINK_AFTER_SEND: Final = "sink.after_send"
LEDGER_AFTER_RECORD: Final = "ledger.after_record"
PIPELINE_AFTER_FINISH: Final = "pipeline.after_finish"
LSN_AFTER_CONFIRM: Final = "lsn.after_confirm"
POSTGRES_BEFORE_COMMIT: Final = "postgres.before_commit"
RETRY_AFTER_PARK: Final = "retry.after_park"
RETRY_AFTER_DELETE: Final = "retry.after_delete"
KAFKA_BEFORE_COMMIT: Final = "kafka.before_commit"
KAFKA_AFTER_COMMIT: Final = "kafka.after_commit"
FILE_AFTER_FSYNC: Final = "file.after_fsync"
NATS_AFTER_ACK: Final = "nats.after_ack"
REDIS_AFTER_XADD: Final = "redis.after_xadd"
SNAPSHOT_AFTER_RECORD: Final = "snapshot.after_record"
BACKFILL_AFTER_CURSOR: Final = "backfill.after_cursor"
OUTBOX_AFTER_PARTITION_DROP: Final = "outbox.after_partition_drop"

POINTS: Final[tuple[str, ...]] = (
    SINK_BEFORE_SEND,
    SINK_AFTER_SEND,
    LEDGER_AFTER_RECORD,
    PIPELINE_AFTER_FINISH,
    LSN_AFTER_CONFIRM,
    POSTGRES_BEFORE_COMMIT,
    RETRY_AFTER_PARK,
    RETRY_AFTER_DELETE,
    KAFKA_BEFORE_COMMIT,
    KAFKA_AFTER_COMMIT,
    FILE_AFTER_FSYNC,
    NATS_AFTER_ACK,
    REDIS_AFTER_XADD,
    SNAPSHOT_AFTER_RECORD,
    BACKFILL_AFTER_CURSOR,
    OUTBOX_AFTER_PARTITION_DROP,
)
"""Every known point; ``WALRELAY_FAILPOINTS`` may name only these."""

_KNOWN: Final = frozenset(POINTS)


class FailpointSpecError(ConfigError, ValueError):
    """``WALRELAY_FAILPOINTS`` does not parse, or names an unknown point."""


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
        if name not in _KNOWN:
            raise FailpointSpecError(
                f"{ENV_VAR}: unknown failpoint {name!r}",
                fix="use one of " + ", ".join(POINTS),
            )
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
    """Re-read the points from ``spec`` (default: the environment variable).

    Raises :class:`FailpointSpecError` (a ``ConfigError``) for a spec that does
    not parse or names an unknown point; the points in effect do not change then.
    """
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
