"""Recording the initial snapshot as done is not cut short by a stop: a
snapshot delivered but not recorded would be read again after a restart."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from walrelay.config import parse_config
from walrelay.engine import snapshot as snapshot_mod
from walrelay.model import Lsn
from walrelay.pipeline.lsn import LsnTracker


async def test_a_stop_during_the_record_waits_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    recorded: list[tuple[Lsn, str]] = []

    async def slow_record(dsn: str, schema: str, slot: str, point: Lsn, status: str) -> None:
        entered.set()
        await release.wait()  # the state database answering slowly
        recorded.append((point, status))

    monkeypatch.setattr(snapshot_mod, "record_snapshot", slow_record)
    config = parse_config(
        {
            "source": {"dsn": "host=localhost", "tables": ["public.t"]},
            "destinations": [{"name": "f", "sink": {"type": "file", "path": "/dev/null"}}],
        },
        "(t)",
    )
    tracker = LsnTracker(start=0x200)  # already confirmed past the snapshot's point
    host = SimpleNamespace(config=config, tracker=tracker)
    task = asyncio.create_task(snapshot_mod.mark_done_when_confirmed(host, 0x100))
    await entered.wait()
    task.cancel()  # the engine stopping
    await asyncio.sleep(0)  # let the cancellation reach the task
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert recorded == [(0x100, "done")]
