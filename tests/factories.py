"""Events built by hand for tests: one factory, so that a field added to
:class:`~walrelay.model.Event` is filled in one place."""

from __future__ import annotations

from datetime import UTC, datetime

from walrelay.model import Event, Op, Route

T0 = datetime(2024, 1, 1, tzinfo=UTC)
"""``committed_at`` of every event the factories build unless told otherwise."""


def make_event(
    commit_lsn: int = 1,
    seq: int = 0,
    *,
    keys: tuple[str, ...] = ("k",),
    op: Op = "insert",
    table: str = "public.t",
    body: bytes = b"{}",
    xid: int = 1,
    committed_at: datetime = T0,
    route: Route | None = None,
) -> Event:
    """An event with id ``commit_lsn/seq``; every other field has a plain default."""
    return Event(
        commit_lsn=commit_lsn,
        seq=seq,
        op=op,
        table=table,
        keys=keys,
        body=body,
        xid=xid,
        committed_at=committed_at,
        route=route,
    )


def numbered_event(i: int, *keys: str, size: int = 10, per_commit: int = 8) -> Event:
    """Event number ``i``: ids increase with ``i``, ``per_commit`` events share
    a commit LSN; the body is ``size`` bytes. No keys: a barrier (a truncate)."""
    return make_event(
        1000 + i // per_commit,
        i % per_commit,
        keys=keys,
        op="truncate" if not keys else "insert",
        body=b"x" * size,
    )
