"""The failed-events table: ``<state schema>.failed_events`` (state migration 2).

One row per parked event and destination, primary key ``(destination,
commit_lsn, seq)`` so that reading a destination's rows in key order is reading
them in id order. The event itself is kept whole (``payload`` is the exact
body the sink was given, plus op/table/xid/committed_at/keys), so it can be
delivered again after a restart exactly as it would have been.

Columns a user reads (``walrelay failed list``):

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

The CLI changes rows while walrelay runs and then sends ``NOTIFY
walrelay_failed, '<schema>'`` in the same transaction, so the engine
re-reads the table (:data:`CHANNEL`).
"""

from __future__ import annotations

from collections.abc import Iterable

from psycopg import sql

__all__ = [
    "CHANNEL",
    "decode_key",
    "display_key",
    "encode_key",
    "key_matches",
    "migration_statements",
    "table",
]

CHANNEL = "walrelay_failed"
"""LISTEN/NOTIFY channel; the payload is the state schema whose table changed."""

_SEP = "\x1f"


def table(schema: str) -> sql.Composed:
    return sql.SQL("{}.failed_events").format(sql.Identifier(schema))


def migration_statements(s: sql.Identifier) -> list[sql.Composed]:
    """State migration 2: the failed-events table."""
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
