"""A direction's conflict counter is never behind its conflicts table: the
conflicts of a transaction are counted before its COMMIT (when the logged rows
become visible), uncounted when the COMMIT fails, and settled by the origin's
progress when the connection broke during it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from walrelay.model import Change
from walrelay.state.sync import ConflictRecord
from walrelay.sync.applier import Direction
from walrelay.sync.config import parse_sync_config
from walrelay.sync.conflicts import load_resolver
from walrelay.sync.transactions import SourceTx

T0 = datetime(2030, 1, 1, tzinfo=UTC)


class FakeConn:
    """Records what the counter said at each COMMIT; fails COMMITs from ``failures``."""

    def __init__(self, direction: Direction, failures: list[BaseException]) -> None:
        self.direction = direction
        self.failures = failures
        self.seen_at_commit: list[dict[str, int]] = []

    def transaction(self) -> FakeConn:
        return self

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: object, error: object, tb: object) -> bool:
        if kind is None:  # the COMMIT: from here on a reader sees the logged rows
            self.seen_at_commit.append(dict(self.direction.stats.conflicts))
            if self.failures:
                raise self.failures.pop(0)
        return False

    async def execute(self, *args: Any) -> None:
        return None


def direction(monkeypatch: pytest.MonkeyPatch) -> Direction:
    settings = parse_sync_config(
        {
            "sync": {
                "name": "t",
                "nodes": {"a": {"dsn": "host=a", "priority": 1}, "b": {"dsn": "host=b"}},
                "tables": ["public.items"],
            }
        }
    )
    d = Direction(settings, "b", "a", {"public.items": load_resolver("last_write_wins")})

    async def apply_change(
        conn: Any, tx: SourceTx, change: Change, conflicts: list[ConflictRecord], note: object
    ) -> None:
        conflicts.append(
            ConflictRecord(
                table="public.items",
                key={"id": "1"},
                conflict="delete_missing",
                local_row=None,
                local_origin=None,
                local_committed_at=None,
                remote_row={"id": "1"},
                remote_origin="b",
                remote_committed_at=T0,
                resolution="skip",
            )
        )

    monkeypatch.setattr(d, "_apply_change", apply_change)
    monkeypatch.setattr("walrelay.sync.applier.asyncio.sleep", _no_sleep)
    return d


async def _no_sleep(seconds: float) -> None:
    return None


def tx(end: int) -> SourceTx:
    return SourceTx("b", end - 1, end, T0, (Change(op="delete"),))


async def test_the_conflicts_are_counted_before_the_commit_makes_them_visible(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = direction(monkeypatch)
    conn = FakeConn(d, [])
    await d._apply_tx(conn, tx(100))  # type: ignore[arg-type]
    assert conn.seen_at_commit == [{"delete_missing": 1}]
    assert d.stats.conflicts == {"delete_missing": 1}


async def test_a_failed_commit_is_uncounted_and_its_retry_counted_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = direction(monkeypatch)
    conn = FakeConn(d, [psycopg.errors.SerializationFailure("could not serialize")])
    await d._apply_tx(conn, tx(100))  # type: ignore[arg-type]
    assert conn.seen_at_commit == [{"delete_missing": 1}, {"delete_missing": 1}]
    assert d.stats.conflicts == {"delete_missing": 1}


@pytest.mark.parametrize(("progress", "expected"), [(100, {"delete_missing": 1}), (99, {})])
async def test_a_commit_in_doubt_is_settled_by_the_origin_progress(
    monkeypatch: pytest.MonkeyPatch, progress: int, expected: dict[str, int]
) -> None:
    d = direction(monkeypatch)
    conn = FakeConn(d, [psycopg.OperationalError("server closed the connection")])
    with pytest.raises(psycopg.OperationalError):
        await d._apply_tx(conn, tx(100))  # type: ignore[arg-type]
    assert d.stats.conflicts == {"delete_missing": 1}  # it may have committed
    d._settle_in_doubt(progress)  # what _connect does on the next connection
    assert d.stats.conflicts == expected
