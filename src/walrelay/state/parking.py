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
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any, LiteralString

from psycopg import sql

from walrelay.model import Route

__all__ = [
    "CHANNEL",
    "TABLE",
    "decode_key",
    "display_key",
    "encode_key",
    "key_matches",
    "migration_statements",
    "rename_migration_statements",
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

_SEP = "\x1f"

# Per-row changes an operator makes (walrelay parking retry / discard); the
# placeholder is the table, the parameters (destination, commit_lsn, seq).
REVIVE: LiteralString = (
    "update {} set dead = false, skipped = false, next_attempt_at = now(),"
    " revision = revision + 1 where destination = %s and commit_lsn = %s and seq = %s"
)
DISCARD: LiteralString = "delete from {} where destination = %s and commit_lsn = %s and seq = %s"


def table(schema: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(TABLE))


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


def route_from_json(data: Any) -> Route | None:
    """Inverse of :func:`route_to_json` (a NULL column: None)."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"parked_events.route is not a JSON object: {data!r}")
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
