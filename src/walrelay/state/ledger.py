"""The delivery ledger table: ``<state schema>.ledger`` (created by state migration 3).

The rows of :class:`walrelay.pipeline.ledger.PostgresLedger`: one per
delivered event id and ledger key (``destination``), with the event's
``commit_lsn`` so that ids below the trim floor can be deleted. The
statements are composed and rendered to bytes once per schema
(:class:`LedgerTable`: psycopg would otherwise render a composed statement
again on every execute, a third of a round trip's client CPU); each call is
one round trip.

:meth:`LedgerTable.exchange` records, trims and checks in one statement, its
ids passed as one comma-separated text each (one parameter instead of an
array element per id: building and sending it costs the client far less)
and each recorded id's commit LSN read from the id itself
(:func:`walrelay.model.format_event_id`: 16 hex digits, then ``/<seq>``).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

__all__ = ["LedgerTable"]

Conn = psycopg.AsyncConnection[tuple[Any, ...]]


class LedgerTable:
    """The ledger table of one state schema: check, record and trim."""

    def __init__(self, schema: str) -> None:
        t = sql.Identifier(schema, "ledger")
        # The commit LSN range is implied by the ids (an id starts with its commit
        # LSN) and keeps the lookup on the (destination, commit_lsn) index: with
        # ``event_id = any(..)`` alone the planner, before the table was first
        # analyzed, read every row of the destination (measured: 0.9 s a check
        # at 60,000 rows, against 2 ms).
        self._delivered = sql.SQL(
            "select event_id from {} where destination = %s "
            "and commit_lsn between %s::pg_lsn and %s::pg_lsn and event_id = any(%s)"
        ).format(t)
        self._record = sql.SQL(
            "insert into {} (destination, event_id, commit_lsn) "
            "select %s, i, l::pg_lsn from unnest(%s::text[], %s::text[]) as u(i, l) "
            "on conflict do nothing"
        ).format(t)
        self._trim = sql.SQL(
            "delete from {} where destination = %s and commit_lsn < %s::pg_lsn"
        ).format(t)
        self._highest = sql.SQL(
            "select commit_lsn::text from {} where destination = %s"
            " order by commit_lsn desc limit 1"
        ).format(t)
        # Data-modifying CTEs run whether or not the select reads them; the
        # select sees the table as it was before them, which is right because
        # a round trip never checks an id it records (see
        # walrelay.pipeline.ledger_exchange). A null parameter makes its part
        # a no-op.
        self._exchange = sql.SQL(
            "with recorded as ("
            " insert into {t} (destination, event_id, commit_lsn)"
            " select %(d)s, i, (left(i, 8) || '/' || substr(i, 9, 8))::pg_lsn"
            " from unnest(string_to_array(%(record)s, ',')) as u(i)"
            " on conflict do nothing"
            "), trimmed as ("
            " delete from {t} where destination = %(d)s and commit_lsn < %(trim)s::pg_lsn"
            ") "
            "select event_id from {t} where destination = %(d)s"
            " and commit_lsn between %(low)s::pg_lsn and %(high)s::pg_lsn"
            " and event_id = any(string_to_array(%(check)s, ','))"
        ).format(t=t)
        # Rendered once: executing a Composed renders it again on every call.
        self._delivered_q = self._delivered.as_bytes(None)
        self._record_q = self._record.as_bytes(None)
        self._trim_q = self._trim.as_bytes(None)
        self._highest_q = self._highest.as_bytes(None)
        self._exchange_q = self._exchange.as_bytes(None)

    async def delivered(
        self, conn: Conn, destination: str, ids: list[str], low: str, high: str
    ) -> set[str]:
        """The ids among ``ids`` recorded for ``destination``; ``low`` and ``high``
        (text LSNs) are the lowest and highest commit LSN of those ids."""
        cur = await conn.execute(self._delivered_q, (destination, low, high, ids))
        return {str(r[0]) for r in await cur.fetchall()}

    async def record(
        self,
        conn: Conn,
        destination: str,
        ids: list[str],
        lsns: list[str],
        trim_below: str | None = None,
    ) -> None:
        """Record ``ids`` (with their commit LSNs, as text) and, with ``trim_below``,
        delete the ids of commit LSNs below it; one pipelined round trip."""
        async with conn.pipeline():
            if ids:
                await conn.execute(self._record_q, (destination, ids, lsns))
            if trim_below is not None:
                await conn.execute(self._trim_q, (destination, trim_below))

    async def highest(self, conn: Conn, destination: str) -> str | None:
        """The highest commit LSN recorded for ``destination`` (text), or None."""
        cur = await conn.execute(self._highest_q, (destination,))
        row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def exchange(
        self,
        conn: Conn,
        destination: str,
        record: str | None,
        trim_below: str | None,
        check: str | None,
        low: str | None,
        high: str | None,
    ) -> set[str]:
        """Record the ids in ``record`` (comma-separated), delete the ids of
        commit LSNs below ``trim_below``, and return the ids among ``check``
        (comma-separated; ``low`` and ``high`` are the lowest and highest of
        their commit LSNs) recorded before; one statement, one round trip.
        None for a part leaves it out."""
        params = {
            "d": destination,
            "record": record,
            "trim": trim_below,
            "check": check,
            "low": low,
            "high": high,
        }
        cur = await conn.execute(self._exchange_q, params)
        return {str(r[0]) for r in await cur.fetchall()}
