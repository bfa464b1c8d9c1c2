"""Walsender CPU estimated from wait events when /proc is not on this host."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.waiting import wait_for
from walrelay.monitor.health import EngineHealth
from walrelay.monitor.probe import ServerState, SlotState, Snapshot
from walrelay.monitor.thresholds import DEFAULT_THRESHOLDS, Severity
from walrelay.monitor.walsender_waits import WalsenderWaits


async def _never() -> list[tuple[int, bool]]:
    raise AssertionError("not read in this test")


def _feed(waits: WalsenderWaits, pid: int, pattern: list[bool], seconds: int) -> None:
    for t in range(seconds + 1):
        waits.observe([(pid, pattern[t % len(pattern)])], float(t))


def test_share_of_samples_on_cpu_once_the_window_is_full() -> None:
    waits = WalsenderWaits(_never, window=300.0)
    _feed(waits, 7, [True, True, False, True], 200)
    assert waits.ratio(7) is None  # 200 s of a 300 s window: not judged yet
    _feed(waits, 7, [True, True, False, True], 400)
    ratio = waits.ratio(7)
    assert ratio is not None and abs(ratio - 0.75) < 0.01
    waits.observe([(8, False)], 401.0)  # pid 7 gone: forgotten, pid 8 starts afresh
    assert waits.ratio(7) is None and waits.ratio(8) is None


def _remote(pid: int) -> Snapshot:
    server = ServerState(150000, "0/0", None, None, None, None)
    nothing: dict[str, None] = {
        f: None
        for f in SlotState.__dataclass_fields__
        if f not in {"name", "slot_type", "plugin", "database", "active", "active_pid", "temporary"}
    }
    slot = SlotState(
        name="walrelay",
        slot_type="logical",
        plugin="pgoutput",
        database="app",
        active=True,
        active_pid=pid,
        temporary=False,
        **nothing,
    )
    return Snapshot(0.0, server, [slot])


def test_remote_walsender_pages_from_its_wait_events() -> None:
    health = EngineHealth()
    notes: list[str] = []
    health.walsender_conditions(_remote(7), DEFAULT_THRESHOLDS, 0.0, notes)
    assert any("walsender CPU unknown" in n for n in notes)  # no samples: says so
    health.waits = WalsenderWaits(_never)
    _feed(health.waits, 7, [True] * 19 + [False], 300)  # 95% on CPU
    notes = []
    [cond] = [
        c
        for c in health.walsender_conditions(_remote(7), DEFAULT_THRESHOLDS, 0.0, notes)
        if c.rule == "walsender_cpu"
    ]
    assert cond.severity is Severity.PAGE and "estimated from its wait events" in cond.message
    assert abs(health.cpu_ratio["walrelay"] - 0.95) < 0.01
    assert any("walsender CPU estimated" in n for n in notes)
    health.waits = WalsenderWaits(_never)
    _feed(health.waits, 7, [True, False, False, False], 300)  # 25%: fine
    conds = health.walsender_conditions(_remote(7), DEFAULT_THRESHOLDS, 0.0, [])
    assert [c for c in conds if c.rule == "walsender_cpu"] == []


async def test_sampling_loop_reads_until_cancelled_and_survives_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("walrelay.monitor.walsender_waits._RETRY_SECONDS", 0.001)
    reads = 0

    async def read() -> list[tuple[int, bool]]:
        nonlocal reads
        reads += 1
        if reads == 2:
            raise OSError("connection lost")
        return [(9, True)]

    waits = WalsenderWaits(read, window=0.05)
    task = asyncio.create_task(waits.run(period=0.001))
    await wait_for(lambda: waits.ratio(9) is not None, interval=0.001, what="a full window")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert waits.errors_total == 1 and waits.ratio(9) == 1.0 and reads > 2
