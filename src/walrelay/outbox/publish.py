"""``publish()``: write an outbox event inside the application's own transaction.

Two ways to write an event, routed alike by the outbox router
(:mod:`walrelay.pipeline.outbox_router`):

:func:`publish`
    INSERTs a row into the outbox table (``walrelay outbox init``). The row
    commits or rolls back with the caller's transaction, so the event exists
    exactly when the business change does.
:func:`publish_message`
    Table-less: ``pg_logical_emit_message(true, prefix, <JSON object>)``. The
    message is *transactional* (``true``): it is decoded only if the caller's
    transaction commits, at its place in commit order. Nothing is stored in a
    table, so there is nothing to clean up, but also nothing to re-read if the
    slot is ever lost.

Both accept a psycopg 3 connection, sync or async (for an
``AsyncConnection`` they return a coroutine: ``await publish(aconn, ...)``),
and a psycopg2 connection (recognised by duck typing -- anything with a
DB-API ``cursor()`` -- so psycopg2 is not a dependency). The connection must
be inside a transaction: a psycopg 3 connection in autocommit mode outside
``conn.transaction()``, or a psycopg2 one with ``autocommit = True``, would
commit the event on its own, apart from the change it describes; that raises
:class:`NotInTransaction` unless ``standalone=True`` says it is meant.

``payload`` is any JSON-serialisable value (dicts, lists, numbers, ``Decimal``,
dates, ...), encoded the way walrelay encodes column values; a ``str`` is a
JSON string. ``columns`` fills extra columns of a customised outbox table (or
extra fields of a table-less event), which the router can use in ``topic``,
``headers`` or ``envelope_fields``.
"""

from __future__ import annotations

from collections.abc import Coroutine, Mapping
from functools import lru_cache
from typing import Any, Final, overload

import psycopg
from psycopg import pq, sql

from walrelay.errors import WalrelayError
from walrelay.pipeline.envelope import encode_json

__all__ = [
    "DEFAULT_MESSAGE_PREFIX",
    "DEFAULT_TABLE",
    "NotInTransaction",
    "apublish",
    "apublish_message",
    "publish",
    "publish_message",
]

DEFAULT_TABLE: Final = "public.outbox"
DEFAULT_MESSAGE_PREFIX: Final = "walrelay.outbox"
_BASE_COLUMNS: Final = ("aggregate_type", "aggregate_id", "event_type", "payload")


class NotInTransaction(WalrelayError):
    """publish() was called on a connection that would commit the event on its own."""


@lru_cache(maxsize=64)
def _insert_sql(table: str, extra: tuple[str, ...]) -> str:
    schema, _, name = table.partition(".")
    if not name:
        schema, name = "public", schema
    columns = (*_BASE_COLUMNS, *extra)
    values = ["%s"] * len(columns)
    values[3] = "%s::jsonb"

    def ident(*parts: str) -> str:  # quoted; a '%' in a name must not read as a placeholder
        return sql.Identifier(*parts).as_string(None).replace("%", "%%")

    return (
        f"INSERT INTO {ident(schema, name)} ({', '.join(ident(c) for c in columns)}) "
        f"VALUES ({', '.join(values)})"
    )


_MESSAGE_SQL: Final = "SELECT pg_logical_emit_message(true, %s, %s)"


def _insert(
    aggregate_type: str,
    aggregate_id: str | int,
    event_type: str,
    payload: Any,
    table: str,
    columns: Mapping[str, Any] | None,
) -> tuple[str, tuple[Any, ...]]:
    extra = tuple(columns or ())
    clash = [c for c in extra if c in _BASE_COLUMNS]
    if clash:
        raise ValueError(f"columns may not set {', '.join(clash)}: pass them as arguments")
    body = None if payload is None else encode_json(payload).decode()
    params = (str(aggregate_type), str(aggregate_id), str(event_type), body)
    if columns:
        params += tuple(columns.values())
    return _insert_sql(table, extra), params


def _message(
    aggregate_type: str,
    aggregate_id: str | int,
    event_type: str,
    payload: Any,
    prefix: str,
    columns: Mapping[str, Any] | None,
) -> tuple[str, tuple[Any, ...]]:
    doc: dict[str, Any] = dict(columns or {})
    doc.update(
        aggregate_type=str(aggregate_type),
        aggregate_id=str(aggregate_id),
        event_type=str(event_type),
        payload=payload,
    )
    return _MESSAGE_SQL, (prefix, encode_json(doc).decode())


def _refuse(what: str) -> NotInTransaction:
    return NotInTransaction(
        f"{what}: the connection is in autocommit mode outside a transaction, so the event "
        "would commit apart from the change it describes",
        fix="call it inside `with conn.transaction():` (psycopg 3) or on a connection with "
        "autocommit off, or pass standalone=True if the event stands alone",
    )


def _check_psycopg(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    if conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE:
        raise _refuse("walrelay.outbox.publish")


def _check_dbapi(conn: Any) -> None:
    """psycopg2 (or another DB-API driver): autocommit on and idle -> refuse."""
    if not getattr(conn, "autocommit", False):
        return  # the driver opens a transaction itself; the caller commits it
    status = getattr(conn, "get_transaction_status", None)
    if status is None or status() == 0:  # psycopg2.extensions.TRANSACTION_STATUS_IDLE
        raise _refuse("walrelay.outbox.publish")


def _run_sync(conn: Any, query: str, params: tuple[Any, ...], standalone: bool) -> None:
    if isinstance(conn, psycopg.Connection):
        if not standalone:
            _check_psycopg(conn)
        conn.execute(query, params)
        return
    if not callable(getattr(conn, "cursor", None)):
        raise TypeError(
            f"walrelay.outbox.publish: {type(conn).__name__} is not a psycopg 3 or "
            "psycopg2 connection"
        )
    if not standalone:
        _check_dbapi(conn)
    cur = conn.cursor()
    try:
        cur.execute(query, params)
    finally:
        cur.close()


async def _run_async(
    conn: psycopg.AsyncConnection[Any], query: str, params: tuple[Any, ...], standalone: bool
) -> None:
    if not standalone:
        _check_psycopg(conn)
    await conn.execute(query, params)


@overload
def publish(
    conn: psycopg.AsyncConnection[Any],
    aggregate_type: str,
    aggregate_id: str | int,
    event_type: str,
    payload: Any,
    *,
    table: str = ...,
    columns: Mapping[str, Any] | None = ...,
    standalone: bool = ...,
) -> Coroutine[Any, Any, None]: ...


@overload
def publish(
    conn: psycopg.Connection[Any] | Any,
    aggregate_type: str,
    aggregate_id: str | int,
    event_type: str,
    payload: Any,
    *,
    table: str = ...,
    columns: Mapping[str, Any] | None = ...,
    standalone: bool = ...,
) -> None: ...


def publish(
    conn: Any,
    aggregate_type: str,
    aggregate_id: str | int,
    event_type: str,
    payload: Any,
    *,
    table: str = DEFAULT_TABLE,
    columns: Mapping[str, Any] | None = None,
    standalone: bool = False,
) -> Coroutine[Any, Any, None] | None:
    """INSERT an event into the outbox ``table`` within the caller's transaction.

    For a psycopg 3 ``AsyncConnection`` this returns a coroutine to await.
    """
    query, params = _insert(aggregate_type, aggregate_id, event_type, payload, table, columns)
    if isinstance(conn, psycopg.AsyncConnection):
        return _run_async(conn, query, params, standalone)
    _run_sync(conn, query, params, standalone)
    return None


async def apublish(
    conn: psycopg.AsyncConnection[Any],
    aggregate_type: str,
    aggregate_id: str | int,
    event_type: str,
    payload: Any,
    *,
    table: str = DEFAULT_TABLE,
    columns: Mapping[str, Any] | None = None,
    standalone: bool = False,
) -> None:
    """:func:`publish` for an ``AsyncConnection``, spelled as a coroutine function."""
    query, params = _insert(aggregate_type, aggregate_id, event_type, payload, table, columns)
    await _run_async(conn, query, params, standalone)


@overload
def publish_message(
    conn: psycopg.AsyncConnection[Any],
    aggregate_type: str,
    aggregate_id: str | int,
    event_type: str,
    payload: Any,
    *,
    prefix: str = ...,
    columns: Mapping[str, Any] | None = ...,
    standalone: bool = ...,
) -> Coroutine[Any, Any, None]: ...


@overload
def publish_message(
    conn: psycopg.Connection[Any] | Any,
    aggregate_type: str,
    aggregate_id: str | int,
    event_type: str,
    payload: Any,
    *,
    prefix: str = ...,
    columns: Mapping[str, Any] | None = ...,
    standalone: bool = ...,
) -> None: ...


def publish_message(
    conn: Any,
    aggregate_type: str,
    aggregate_id: str | int,
    event_type: str,
    payload: Any,
    *,
    prefix: str = DEFAULT_MESSAGE_PREFIX,
    columns: Mapping[str, Any] | None = None,
    standalone: bool = False,
) -> Coroutine[Any, Any, None] | None:
    """Table-less: emit the event as a transactional logical decoding message.

    The router's ``message_prefix`` must match ``prefix``. For a psycopg 3
    ``AsyncConnection`` this returns a coroutine to await.
    """
    query, params = _message(aggregate_type, aggregate_id, event_type, payload, prefix, columns)
    if isinstance(conn, psycopg.AsyncConnection):
        return _run_async(conn, query, params, standalone)
    _run_sync(conn, query, params, standalone)
    return None


async def apublish_message(
    conn: psycopg.AsyncConnection[Any],
    aggregate_type: str,
    aggregate_id: str | int,
    event_type: str,
    payload: Any,
    *,
    prefix: str = DEFAULT_MESSAGE_PREFIX,
    columns: Mapping[str, Any] | None = None,
    standalone: bool = False,
) -> None:
    """:func:`publish_message` for an ``AsyncConnection``, as a coroutine function."""
    query, params = _message(aggregate_type, aggregate_id, event_type, payload, prefix, columns)
    await _run_async(conn, query, params, standalone)
