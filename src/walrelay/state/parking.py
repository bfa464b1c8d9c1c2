"""The parked-events table: ``<state schema>.parked_events``.

Created as ``failed_events`` by state migration 2 (extended by 4 and 6) and
renamed ``parked_events`` by migration 7; shipped migrations are never
edited, so theirs keep the old name.

One row per parked event and destination, primary key ``(destination,
commit_lsn, seq)`` so that reading a destination's rows in key order is reading
them in id order. The event itself is kept whole (``payload`` is the exact
body the sink was given, plus op/table/xid/committed_at/keys), so it can be
delivered again after a restart exactly as it would have been.

Columns a user reads (``walrelay parking list``):

``attempts``        deliveries tried (in memory before parking, then from here)
``last_error``      the error of the last attempt (NULL: never tried, it waits
                    behind an earlier failed event of its key)
``permanent``       the last error was a rejection (HTTP 4xx), not an outage
``dead``            out of attempts: no longer retried
``skipped``         dead and skipped (``on_dead: skip_dead``): kept for the
                    record, no longer holds its key
``next_attempt_at`` when the retry loop tries it next (when it is first of its
                    key)

``keys`` holds the scheduler's grouping keys (``"<schema.table>\\x1f<key
values>"``) escaped for ``text`` (which cannot hold NUL): ``\\`` becomes
``\\\\`` and NUL becomes ``\\0``. :func:`display_key` turns one into what
users type after ``--key`` (``public.orders:7``).

``route`` (state migration 4) is the event's :class:`~walrelay.model.Route`
when a router (the outbox event router) set one, else NULL, as a JSON object
(:func:`route_to_json` / :func:`route_from_json`): ``{"topic", "key",
"value", "headers": [[name, value], ...]}`` with the value as text (the
routed payload is JSON), or ``"value_base64"`` instead when it is not UTF-8;
``"value": null`` is a tombstone. Strings are escaped like ``keys`` (jsonb
cannot hold NUL). A broker sink sends a reloaded event to the routed topic
exactly as it would have before the restart.

The CLI changes rows while walrelay runs and then sends ``NOTIFY
walrelay_parking, '<schema>'`` in the same transaction, so the engine
re-reads the table (:data:`CHANNEL`).

Every statement on the table is here, composed once per schema by
:class:`ParkedEventsTable`: the engine's (the parking store's writer, load
and fetch) and the operators' (``walrelay parking``).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from walrelay.model import Event, Rendering, Route

__all__ = [
    "CHANNEL",
    "LISTEN",
    "TABLE",
    "ParkedEventsTable",
    "decode_key",
    "display_key",
    "encode_key",
    "key_matches",
    "migration_statements",
    "rename_migration_statements",
    "rendering_from_json",
    "rendering_to_json",
    "revision_migration_statements",
    "route_from_json",
    "route_migration_statements",
    "route_to_json",
    "table",
]

CHANNEL = "walrelay_parking"
"""LISTEN/NOTIFY channel; the payload is the state schema whose table changed."""

TABLE = "parked_events"
"""The table's name in the state schema (``failed_events`` before migration 7)."""

LISTEN = sql.SQL("listen {}").format(sql.Identifier(CHANNEL))
"""Subscribes a connection to :data:`CHANNEL`."""

_SEP = "\x1f"

Conn = psycopg.AsyncConnection[tuple[Any, ...]]
Cursor = psycopg.AsyncCursor[tuple[Any, ...]]
OperatorConn = psycopg.Connection[dict[str, Any]]
"""The CLI's connection: synchronous, rows as dicts by column name."""

RowId = tuple[str, int, int]
"""A row's primary key: (destination, commit_lsn, seq)."""

# One row, by its primary key (RowId).
_BY_ID: LiteralString = "where destination = %s and commit_lsn = %s and seq = %s"

# The columns `walrelay parking list|show` print (show adds the payload).
_LISTED: LiteralString = (
    "destination, commit_lsn, seq, event_id, keys, op, table_name, xid, committed_at, size,"
    " attempts, last_error, permanent, dead, skipped, first_failed_at, last_attempt_at,"
    " next_attempt_at"
)


def table(schema: str) -> sql.Composed:
    """The table's qualified name in ``schema``."""
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(TABLE))


class ParkedEventsTable:
    """The parked-events table of one state schema: every statement on it.

    The statements are composed once, here. The engine's side
    (:class:`walrelay.pipeline.parking.store.ParkingStore`) runs them on an
    async connection, batching and retrying as it needs; the operators' side
    (``walrelay parking``) on an :data:`OperatorConn`.
    """

    def __init__(self, schema: str) -> None:
        self.schema = schema
        t = table(schema)
        self._table = t
        self._park = sql.SQL(
            "insert into {} (destination, commit_lsn, seq, event_id, keys, op, table_name, xid,"
            " committed_at, payload, size, attempts, last_error, permanent, dead, skipped,"
            " first_failed_at, last_attempt_at, next_attempt_at, route)"
            " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " %s)"
            " on conflict (destination, commit_lsn, seq) do update set"
            " attempts = excluded.attempts, last_error = excluded.last_error,"
            " permanent = excluded.permanent, dead = excluded.dead, skipped = excluded.skipped,"
            " first_failed_at = excluded.first_failed_at,"
            " last_attempt_at = excluded.last_attempt_at,"
            " next_attempt_at = excluded.next_attempt_at"
        ).format(t)
        self._delete = sql.SQL("delete from {} " + _BY_ID).format(t)
        self._update = sql.SQL(
            "update {} set attempts = %s, last_error = %s, permanent = %s, dead = %s,"
            " skipped = %s, next_attempt_at = %s, last_attempt_at = coalesce(%s, last_attempt_at) "
            + _BY_ID
            + " and revision = %s"
        ).format(t)
        self._index_rows = sql.SQL(
            "select commit_lsn, seq, keys, size, attempts, dead, skipped, permanent,"
            " extract(epoch from next_attempt_at), extract(epoch from first_failed_at), revision"
            " from {} where destination = %s order by commit_lsn, seq"
        ).format(t)
        self._events = sql.SQL(
            "select commit_lsn, seq, op, table_name, xid, committed_at, keys, payload, route"
            " from {}"
            " where destination = %s and (commit_lsn, seq) in"
            " (select * from unnest(%s::bigint[], %s::int[]))"
        ).format(t)
        self._skip_dead = sql.SQL(
            "update {} set skipped = true where destination = %s and dead and not skipped"
        ).format(t)
        self._unconfigured = sql.SQL(
            "select destination, count(*) from {} where destination <> all(%s) group by 1"
        ).format(t)
        self._summary = sql.SQL(
            "select destination,"
            " count(*) filter (where not dead) as parked,"
            " count(*) filter (where dead) as dead,"
            " count(*) filter (where skipped) as skipped,"
            " coalesce(sum(size) filter (where not skipped), 0) as bytes,"
            " extract(epoch from now() - min(first_failed_at) filter (where not dead)) as age"
            " from {} group by destination order by destination"
        ).format(t)
        # Per destination, its first row by the primary key's order.
        self._oldest = sql.SQL(
            "select min(first.commit_lsn) from unnest(%s::text[]) as d(name),"
            " lateral (select commit_lsn from {} where destination = d.name"
            " order by commit_lsn limit 1) as first"
        ).format(t)
        self._revive = sql.SQL(
            "update {} set dead = false, skipped = false, next_attempt_at = now(),"
            " revision = revision + 1 " + _BY_ID
        ).format(t)

    # -- the engine (ParkingStore) -------------------------------------------------------

    async def index_rows(self, conn: Conn, destination: str) -> list[tuple[Any, ...]]:
        """``destination``'s rows in id order, as parking's index reads them:
        (commit_lsn, seq, keys, size, attempts, dead, skipped, permanent,
        next_attempt_at and first_failed_at as epoch seconds, revision)."""
        cur = await conn.execute(self._index_rows, (destination,))
        return await cur.fetchall()

    async def oldest_commit_lsn(self, conn: Conn, destinations: list[str]) -> int | None:
        """The lowest commit LSN of any row of ``destinations`` (None: no row),
        whichever process parked it (a scale-out worker's trim floor)."""
        cur = await conn.execute(self._oldest, (destinations,))
        row = await cur.fetchone()
        return None if row is None or row[0] is None else int(row[0])

    async def park(self, cur: Cursor, rows: list[tuple[Any, ...]]) -> None:
        """Insert parked events, or overwrite their attempt columns when already
        parked; a row's parameters follow the insert's column list."""
        await cur.executemany(self._park, rows)

    async def delete(self, cur: Cursor, ids: list[RowId]) -> None:
        """Delete the rows ``ids`` (delivered events)."""
        await cur.executemany(self._delete, ids)

    async def update(self, cur: Cursor, params: tuple[Any, ...]) -> bool:
        """Write an attempt's outcome: ``params`` are (attempts, last_error,
        permanent, dead, skipped, next_attempt_at, last_attempt_at or None,
        destination, commit_lsn, seq, revision). False when the row is gone or
        no longer at that revision: then nothing was written."""
        await cur.execute(self._update, params)
        return cur.rowcount != 0

    async def events(
        self, conn: Conn, destination: str, idents: list[tuple[int, int]]
    ) -> dict[tuple[int, int], Event]:
        """The parked events ``idents`` ((commit_lsn, seq)) of ``destination``,
        as they were parked; an ident without a row is missing."""
        cur = await conn.execute(
            self._events, (destination, [i[0] for i in idents], [i[1] for i in idents])
        )
        rows = await cur.fetchall()
        out: dict[tuple[int, int], Event] = {}
        for lsn, seq, op, table_name, xid, committed_at, keys, payload, route in rows:
            ident = (int(lsn), int(seq))
            out[ident] = Event(
                commit_lsn=ident[0],
                seq=ident[1],
                op=op,
                table=table_name,
                keys=tuple(decode_key(k) for k in keys),
                body=bytes(payload),
                xid=int(xid),
                committed_at=committed_at,
                route=route_from_json(route),
                rendering=rendering_from_json(route),
            )
        return out

    async def skip_dead(self, conn: Conn, destination: str) -> None:
        """Mark ``destination``'s dead rows skipped (``on_dead: skip_dead``)."""
        await conn.execute(self._skip_dead, (destination,))

    async def unconfigured(self, conn: Conn, configured: list[str]) -> list[tuple[Any, ...]]:
        """(destination, row count) of every destination not in ``configured``."""
        cur = await conn.execute(self._unconfigured, (configured,))
        return await cur.fetchall()

    # -- the operators (walrelay parking) ------------------------------------------------

    def exists(self, conn: OperatorConn) -> tuple[bool, bool]:
        """Whether this table exists, and whether the table of an older walrelay
        (``failed_events``, renamed by state migration 7) does."""
        row = conn.execute(
            "select to_regclass(format('%%I.%%I', %s::text, %s::text)) is not null as ok,"
            " to_regclass(format('%%I.failed_events', %s::text)) is not null as old",
            (self.schema, TABLE, self.schema),
        ).fetchone()
        if row is None:
            return False, False
        return bool(row["ok"]), bool(row["old"])

    def listed(
        self,
        conn: OperatorConn,
        *,
        destination: str | None,
        ident: tuple[int, int] | None,
        dead_only: bool,
        payload: bool,
    ) -> psycopg.Cursor[dict[str, Any]]:
        """The rows of ``destination`` (None: all), of event ``ident`` (None: all),
        dead only or not, in destination and id order; with ``payload``, the
        payload too."""
        where: list[sql.Composable] = [sql.SQL("true")]
        params: list[Any] = []
        if destination is not None:
            where.append(sql.SQL("destination = %s"))
            params.append(destination)
        if ident is not None:
            where.append(sql.SQL("commit_lsn = %s and seq = %s"))
            params.extend(ident)
        if dead_only:
            where.append(sql.SQL("dead"))
        columns: sql.Composable = sql.SQL(_LISTED)
        if payload:
            columns = sql.SQL("{}, payload").format(columns)
        query = sql.SQL("select {} from {} where {} order by destination, commit_lsn, seq").format(
            columns, self._table, sql.SQL(" and ").join(where)
        )
        return conn.execute(query, params)

    def summary(self, conn: OperatorConn) -> list[dict[str, Any]]:
        """Per destination with rows: ``parked``, ``dead`` and ``skipped`` counts,
        ``bytes`` (not skipped) and ``age`` (seconds since the oldest parked
        event failed; None without one)."""
        return conn.execute(self._summary).fetchall()

    def revive(self, conn: OperatorConn, ids: list[RowId]) -> None:
        """Make the rows ``ids`` due now and alive, bumping their revision."""
        conn.cursor().executemany(self._revive, ids)

    def discard(self, conn: OperatorConn, ids: list[RowId]) -> None:
        """Delete the rows ``ids`` for good."""
        conn.cursor().executemany(self._delete, ids)

    def notify(self, conn: OperatorConn) -> None:
        """Tell a running engine this schema's table changed (:data:`CHANNEL`);
        it is delivered when ``conn``'s transaction commits."""
        conn.execute("select pg_notify(%s, %s)", (CHANNEL, self.schema))


def migration_statements(s: sql.Identifier) -> list[sql.Composed]:
    """State migration 2: the table, under its first name ``failed_events``."""
    return [
        sql.SQL(
            "create table if not exists {}.failed_events ("
            "destination text not null, "
            "commit_lsn bigint not null, "
            "seq integer not null, "
            "event_id text not null, "
            "keys text[] not null, "
            "op text not null, "
            "table_name text not null, "
            "xid bigint not null, "
            "committed_at timestamptz not null, "
            "payload bytea not null, "
            "size integer not null, "
            "attempts integer not null default 0, "
            "last_error text, "
            "permanent boolean not null default false, "
            "dead boolean not null default false, "
            "skipped boolean not null default false, "
            "first_failed_at timestamptz not null default now(), "
            "last_attempt_at timestamptz, "
            "next_attempt_at timestamptz not null default now(), "
            "primary key (destination, commit_lsn, seq))"
        ).format(s),
        sql.SQL(
            "comment on table {}.failed_events is "
            "'walrelay: parked deliveries; inspect with walrelay failed list'"
        ).format(s),
    ]


def route_migration_statements(s: sql.Identifier) -> list[sql.Composed]:
    """State migration 4: the routed events' route (NULL: not routed)."""
    return [
        sql.SQL("alter table {}.failed_events add column if not exists route jsonb").format(s),
    ]


def revision_migration_statements(s: sql.Identifier) -> list[sql.Composed]:
    """State migration 6: a row's revision, bumped by ``walrelay parking retry``.

    The engine writes an attempt's outcome only over the revision it last
    read, so an operator's retry made while that attempt was in flight is
    not overwritten by it (the engine re-reads the row instead).
    """
    return [
        sql.SQL(
            "alter table {}.failed_events add column if not exists revision bigint not null"
            " default 0"
        ).format(s),
    ]


def rename_migration_statements(s: sql.Identifier) -> list[sql.Composed]:
    """State migration 7: ``failed_events`` becomes ``parked_events`` (one name,
    "parking", everywhere), its primary key index with it."""
    return [
        sql.SQL("alter table {}.failed_events rename to parked_events").format(s),
        sql.SQL(
            "alter table {}.parked_events rename constraint failed_events_pkey"
            " to parked_events_pkey"
        ).format(s),
        sql.SQL(
            "comment on table {}.parked_events is "
            "'walrelay: parked events; inspect with walrelay parking list'"
        ).format(s),
    ]


def route_to_json(route: Route | None) -> dict[str, Any] | None:
    """The ``route`` column's value for an event's route (module docstring)."""
    if route is None:
        return None
    out: dict[str, Any] = {
        "topic": encode_key(route.topic),
        "key": None if route.key is None else encode_key(route.key),
        "headers": [[encode_key(k), encode_key(v)] for k, v in route.headers],
    }
    value = route.value
    if value is None:
        out["value"] = None
    else:
        try:
            out["value"] = encode_key(value.decode("utf-8"))
        except UnicodeDecodeError:
            out["value_base64"] = base64.b64encode(value).decode("ascii")
    return out


def rendering_to_json(rendering: Rendering) -> dict[str, Any]:
    """What an output format made of a parked event besides its body (its record
    key, CloudEvents attributes...), kept in the ``route`` column under
    ``"rendering"`` so a re-delivery sends the same key and headers."""

    def b64(data: bytes | None) -> str | None:
        return None if data is None else base64.b64encode(data).decode("ascii")

    return {
        "key": b64(rendering.key),
        "old_key": b64(rendering.old_key),
        "attributes": [[encode_key(k), encode_key(v)] for k, v in rendering.attributes],
        "tables": [encode_key(t) for t in rendering.tables],
        "content_type": rendering.content_type,
    }


def rendering_from_json(data: Any) -> Rendering | None:
    """Inverse of :func:`rendering_to_json`, from the ``route`` column's value."""
    if not isinstance(data, dict) or not isinstance(data.get("rendering"), dict):
        return None
    r = data["rendering"]

    def unb64(text: str | None) -> bytes | None:
        return None if text is None else base64.b64decode(text)

    return Rendering(
        key=unb64(r.get("key")),
        old_key=unb64(r.get("old_key")),
        attributes=tuple((decode_key(k), decode_key(v)) for k, v in r.get("attributes") or ()),
        tables=tuple(decode_key(t) for t in r.get("tables") or ()),
        content_type=r.get("content_type"),
    )


def route_from_json(data: Any) -> Route | None:
    """Inverse of :func:`route_to_json` (a NULL column, or only a rendering: None)."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"parked_events.route is not a JSON object: {data!r}")
    if "topic" not in data:
        return None
    value: bytes | None
    if data.get("value_base64") is not None:
        value = base64.b64decode(data["value_base64"])
    elif data.get("value") is not None:
        value = decode_key(data["value"]).encode("utf-8")
    else:
        value = None
    key = data.get("key")
    return Route(
        topic=decode_key(data["topic"]),
        key=None if key is None else decode_key(key),
        value=value,
        headers=tuple((decode_key(k), decode_key(v)) for k, v in data.get("headers") or ()),
    )


def encode_key(key: str) -> str:
    """A grouping key as storable ``text`` (no NUL)."""
    if "\\" not in key and "\x00" not in key:
        return key
    return key.replace("\\", "\\\\").replace("\x00", "\\0")


def decode_key(text: str) -> str:
    """Inverse of :func:`encode_key`."""
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n:
            nxt = text[i + 1]
            out.append("\x00" if nxt == "0" else nxt)
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def display_key(key: str) -> str:
    """``'public.orders\\x1f7'`` -> ``'public.orders:7'``; several key columns are
    joined by ``,``; SQL NULL shows as ``NULL``, a value not sent as ``?``."""
    parts = key.split(_SEP)
    head, values = parts[0], parts[1:]
    if not values:
        return head
    shown = []
    for v in values:
        if v == "\x00":
            shown.append("NULL")
        elif v == "\x00?":
            shown.append("?")
        else:
            shown.append(v.replace("\x00E", _SEP))
    return f"{head}:{','.join(shown)}"


def key_matches(wanted: str, keys: Iterable[str]) -> bool:
    """Whether ``--key wanted`` names one of ``keys`` (raw grouping keys):
    ``public.orders:7`` matches exactly, a bare ``7`` matches that value in
    any table."""
    for key in keys:
        shown = display_key(key)
        if wanted in (shown, key):
            return True
        if ":" not in wanted and shown.partition(":")[2] == wanted:
            return True
    return False
