"""Transaction metadata (``transaction_metadata: true``): a ``begin`` and an
``end`` event per transaction that gave a destination at least one event, as
Debezium's ``provide.transaction.metadata`` does.

The Router counts each destination's events of the current transaction per
table (:meth:`TransactionCounts.count`, which also gives a row event its
place: total and per-table order) and, at the commit, makes the two events
(:meth:`TransactionCounts.close`). They are made at the commit, when the
counts are known, so both come after the transaction's own events: ids
``<commit_lsn>/<n>`` and ``<commit_lsn>/<n+1>`` where ``n`` is one past the
transaction's last change. Like every event they are counted for the safe
LSN. Their body in walrelay's envelope::

    {"id", "op": "begin" | "end", "table": null, "key": null, "record": null,
     "old": null, "commit_lsn", "xid", "committed_at",
     "transaction_id": "<xid>:<commit_lsn>",
     "event_count": null | n,
     "data_collections": null | [{"data_collection": "public.t", "event_count": k}]}

the debezium format renders it as Debezium's transaction topic value, and the
Kafka sink (any broker sink) sends it to ``<prefix>.transaction``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import orjson

from walrelay.model import Event, Lsn
from walrelay.pipeline.envelope import encode_json, envelope_head

__all__ = ["TRANSACTION_KEY", "TransactionCounts", "TransactionOrder", "transaction_id"]

TRANSACTION_KEY: Final = "transaction"
"""The scheduling key of begin/end events: they keep their order among themselves."""

TransactionOrder = tuple[str, int, int]
"""(transaction id, total order, order within its table), each from 1."""


def transaction_id(xid: int, commit_lsn: Lsn) -> str:
    return f"{xid}:{commit_lsn}"


class TransactionCounts:
    """One destination's events of the open transaction, per table."""

    __slots__ = ("_commit_lsn", "_committed_at", "_tables", "_total", "_xid")

    def __init__(self) -> None:
        self._commit_lsn: Lsn | None = None
        self._xid = 0
        self._committed_at = datetime.min
        self._total = 0
        self._tables: dict[str, int] = {}

    def count(self, event: Event) -> TransactionOrder | None:
        """Count ``event`` into its transaction; its place in it. None for a
        non-transactional logical message (xid 0): no transaction, as Debezium."""
        if event.xid == 0:
            return None
        if event.commit_lsn != self._commit_lsn:
            self._commit_lsn = event.commit_lsn
            self._xid = event.xid
            self._committed_at = event.committed_at
            self._total = 0
            self._tables = {}
        self._total += 1
        table = event.table or _truncated(event) or event.op
        n = self._tables.get(table, 0) + 1
        self._tables[table] = n
        return transaction_id(event.xid, event.commit_lsn), self._total, n

    def close(self, commit_lsn: Lsn, seq: int) -> list[Event]:
        """The begin and end events of transaction ``commit_lsn`` (ids ``seq``,
        ``seq + 1``); none when it gave this destination no event."""
        if self._commit_lsn != commit_lsn or self._total == 0:
            return []
        self._commit_lsn = None
        collections = [  # by name, as Debezium lists them
            {"data_collection": table, "event_count": n}
            for table, n in sorted(self._tables.items())
        ]
        return [
            self._event("begin", commit_lsn, seq, None, None),
            self._event("end", commit_lsn, seq + 1, self._total, collections),
        ]

    def _event(
        self,
        op: Any,
        commit_lsn: Lsn,
        seq: int,
        count: int | None,
        collections: list[dict[str, Any]] | None,
    ) -> Event:
        at = self._committed_at
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        body = envelope_head(commit_lsn, seq, op, self._xid, at)
        body["transaction_id"] = transaction_id(self._xid, commit_lsn)
        body["event_count"] = count
        body["data_collections"] = collections
        return Event(
            commit_lsn=commit_lsn,
            seq=seq,
            op=op,
            table="",
            keys=(TRANSACTION_KEY,),
            body=encode_json(body),
            xid=self._xid,
            committed_at=self._committed_at,
            key_json=b"null",
        )


def _truncated(event: Event) -> str:
    """A truncate's first table (its one event is counted there, as the debezium
    format's ``source.table`` names it)."""
    if event.op != "truncate":
        return ""
    tables = orjson.loads(event.body).get("tables") or [""]
    return str(tables[0])
