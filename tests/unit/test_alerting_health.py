"""The rules with memory of the engine and the walsender (walrelay.monitor.health)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from walrelay.monitor.health import EngineHealth, WalsenderCpu
from walrelay.monitor.probe import ServerState, Snapshot
from walrelay.monitor.thresholds import DEFAULT_THRESHOLDS, GiB, Severity


def row(**kw: Any) -> dict[str, Any]:
    return {"name": "hook", "failures": 0, "events_out": 0, "parked": 0, **kw}


def test_destination_failing_warns_after_a_minute_and_pages_after_five() -> None:
    h = EngineHealth()
    h.observe_destinations([row(failures=1)], 0.0)  # first look: no history
    h.observe_destinations([row(failures=5)], 10.0)  # failing from here
    assert h.destination_conditions([row()], 60.0) == []
    [warn] = h.destination_conditions([row(last_error="HTTP 500")], 70.0)
    assert (warn.rule, warn.severity) == ("destination_failing", Severity.WARN)
    assert "HTTP 500" in warn.message
    h.observe_destinations([row(failures=50, retry_failures=3)], 200.0)  # still failing
    [page] = h.destination_conditions([row()], 310.0)
    assert page.severity is Severity.PAGE
    # one success clears it
    h.observe_destinations([row(failures=51, events_out=1)], 320.0)
    assert h.failing_seconds("hook", 400.0) == 0.0
    # a parked event re-delivered by parking's retry also counts as a success
    h.observe_destinations([row(failures=60, events_out=1)], 330.0)
    h.observe_destinations([row(failures=60, events_out=1, redelivered=1)], 340.0)
    assert h.failing_seconds("hook", 400.0) == 0.0


def test_parked_cap_nearing_warns_below_the_cap_only() -> None:
    h = EngineHealth()
    assert h.destination_conditions([row(parked_cap_used=0.5)], 0.0) == []
    [c] = h.destination_conditions([row(parked_cap_used=0.85)], 0.0)
    assert (c.rule, c.severity) == ("parked_cap", Severity.WARN)
    assert h.destination_conditions([row(parked_cap_used=1.0)], 0.0) == []  # paused: a page


def test_heartbeat_lag_uses_the_delivery_lag_thresholds() -> None:
    t = DEFAULT_THRESHOLDS
    assert EngineHealth.heartbeat_conditions(None, "s", t) == []
    assert EngineHealth.heartbeat_conditions(2.0, "s", t) == []
    assert EngineHealth.heartbeat_conditions(11.0, "s", t)[0].severity is Severity.WARN
    assert EngineHealth.heartbeat_conditions(61.0, "s", t)[0].severity is Severity.PAGE


def _proc(tmp: Path, pid: int, ticks: int, cmd: bytes = b"postgres: walsender x") -> None:
    d = tmp / str(pid)
    d.mkdir(exist_ok=True)
    (d / "cmdline").write_bytes(cmd)
    fields = ["S"] + ["0"] * 10 + [str(ticks), "0"] + ["0"] * 30
    (d / "stat").write_text(f"{pid} (postgres) " + " ".join(fields))


def test_walsender_cpu_from_proc_only_for_walsenders(tmp_path: Path) -> None:
    cpu = WalsenderCpu(tmp_path)
    _proc(tmp_path, 10, 0)
    assert cpu.ratio(10, 0.0) is None  # first sample
    _proc(tmp_path, 10, int(cpu._ticks * 6))  # 6 s of CPU in 10 s
    assert cpu.ratio(10, 10.0) == 0.6
    _proc(tmp_path, 11, 0, cmd=b"/usr/bin/python3")
    assert cpu.ratio(11, 0.0) is None and cpu.ratio(11, 1.0) is None  # not a walsender


def test_pg_wal_size_judged_against_the_settings_when_the_volume_is_unseen() -> None:
    server = ServerState(150000, "0/0", 4 * GiB, 11 * GiB // 2, None, None, max_wal_size=4 * GiB)
    notes: list[str] = []
    conds = EngineHealth().walsender_conditions(
        Snapshot(0.0, server, []), DEFAULT_THRESHOLDS, 0.0, notes
    )
    assert [(c.rule, c.severity) for c in conds] == [("pg_wal_size", Severity.WARN)]
    assert any("walsender CPU unknown" in n for n in notes)
