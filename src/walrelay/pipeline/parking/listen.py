"""Operators' changes to parked events, while walrelay runs.

``walrelay parking retry|discard`` change rows and send ``NOTIFY
walrelay_parking, '<schema>'`` in the same transaction
(:data:`walrelay.state.parking.CHANNEL`). :func:`follow_operator_changes`
listens for it and asks for a re-read of the table on every notification
for our schema, and after every (re)connection -- a change made while
nobody listened is not missed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg

from walrelay.pipeline.backoff import Backoff
from walrelay.state import parking as T

__all__ = ["follow_operator_changes"]

log = logging.getLogger("walrelay.parking")


async def follow_operator_changes(dsn: str, schema: str, reread: Callable[[], None]) -> None:
    """Call ``reread`` whenever ``schema``'s parked events changed; runs until
    cancelled, reconnecting with backoff."""
    backoff = Backoff(initial=0.5, multiplier=2.0, maximum=30.0)
    attempt = 0
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, application_name="walrelay-parking-listen"
            )
            async with conn:
                await conn.execute(T.LISTEN)
                reread()  # changes made while we were not listening
                attempt = 0
                async for note in conn.notifies():
                    if note.payload == schema:
                        reread()
        except psycopg.Error as e:
            attempt += 1
            delay = backoff.delay(attempt)
            log.warning(
                "parking: lost the LISTEN connection (%s); reconnecting in %.1fs",
                str(e).strip() or type(e).__name__,
                delay,
            )
            await asyncio.sleep(delay)  # a reconnect delay, not synchronisation
