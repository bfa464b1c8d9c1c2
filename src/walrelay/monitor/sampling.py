"""The doctor's memory between runs: slot samples in walrelay's state schema.

:func:`record_samples` writes what a doctor run saw of every slot
(:mod:`walrelay.state.slot_samples`) and returns the previous run's samples:
how long a slot has been
inactive before PostgreSQL 17, and whether a slot's WAL grew while its
published tables were quiet. It is the doctor's only write, on a connection
of its own; when it cannot write (a read-only role, a standby) the doctor
says so and goes on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg

from walrelay.config import masked_dsn
from walrelay.state.migrations import migrate
from walrelay.state.slot_samples import SlotObservation, SlotSample, record

__all__ = ["Sampling", "SlotObservation", "record_samples"]


@dataclass
class Sampling:
    """The previous run's samples, this run's published write count, and per
    slot how long the samples have seen it inactive (0: this run was first)."""

    previous: dict[str, SlotSample] = field(default_factory=dict)
    published_writes: int = 0
    inactive_seconds: dict[str, float] = field(default_factory=dict)


async def _migrate(dsn: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, application_name="walrelay doctor"
    ) as conn:
        await migrate(conn, schema)


def record_samples(
    dsn: str, schema: str, observations: Sequence[SlotObservation], published_writes: int
) -> Sampling | str:
    """Record this run's samples; the :class:`Sampling`, or why it could not."""
    try:
        # The state migrations are async; the doctor is not (and may be called
        # from code that runs an event loop): run them on a thread of their own.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, _migrate(dsn, schema)).result()
        with psycopg.connect(
            dsn, autocommit=True, application_name="walrelay doctor", connect_timeout=10
        ) as conn:
            previous, inactive = record(conn, schema, observations)
    except psycopg.Error as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"cannot write {schema}.slot_samples on {masked_dsn(dsn)}: {first}"
    return Sampling(
        previous, published_writes, {k: v for k, v in inactive.items() if v is not None}
    )
