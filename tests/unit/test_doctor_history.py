"""The doctor's judgements that need statistics or the previous run's samples."""

from __future__ import annotations

from dataclasses import replace

from tests.unit.test_thresholds import by_code, healthy, slot
from walrelay.monitor.doctor import Report, diagnose
from walrelay.monitor.sampling import Sampling
from walrelay.monitor.thresholds import MiB, Severity
from walrelay.state.slot_samples import SlotSample


def _sample(**kw: object) -> SlotSample:
    base = SlotSample(
        slot="walrelay",
        active=True,
        inactive_seconds=None,
        age_seconds=600.0,
        confirmed_flush_lsn="0/1000100",
        wal_lsn="0/1000100",
        published_writes=5,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_inactive_slot_timed_by_samples_warns_then_pages() -> None:
    facts = healthy()
    facts.slots = [slot(active=False, active_pid=None)]
    for seconds, expected in (
        (0.0, Severity.WARN),
        (30.0, Severity.INFO),
        (61.0, Severity.WARN),
        (301.0, Severity.PAGE),
    ):
        facts.sampled_inactive_seconds = {"walrelay": seconds}
        assert by_code(diagnose(facts))["slot_inactive"] == [expected], seconds
    facts.sampled_inactive_seconds = {}  # not recorded (--no-record): cannot time it
    [f] = [f for f in diagnose(facts) if f.code == "slot_inactive"]
    assert f.severity is Severity.WARN and "--no-record" in f.message


def test_quiet_publication_needs_wal_growth_no_writes_and_a_still_slot() -> None:
    facts = healthy()
    facts.current_wal_lsn = "0/3000100"  # 32 MiB after the sample
    facts.sampling = Sampling({"walrelay": _sample()}, published_writes=5)
    [quiet] = [f for f in diagnose(facts) if f.code == "quiet_publication"]
    assert quiet.severity is Severity.WARN and quiet.details["wal_written"] == 32 * MiB
    cases = {
        "a write since": (Sampling({"walrelay": _sample()}, published_writes=6), False),
        "slot moved": (Sampling({"walrelay": _sample(confirmed_flush_lsn="0/1000000")}, 5), False),
        "first run": (Sampling({}, 5), False),
        "16 MiB written": (Sampling({"walrelay": _sample(wal_lsn="0/2000100")}, 5), True),
        "under 16 MiB": (Sampling({"walrelay": _sample(wal_lsn="0/2000101")}, 5), False),
    }
    for what, (sampling, expected) in cases.items():
        facts.sampling = sampling
        assert ("quiet_publication" in by_code(diagnose(facts))) is expected, what


def test_heartbeat_off_in_the_config_warns() -> None:
    facts = healthy()
    assert "heartbeat_off" not in by_code(diagnose(facts))
    facts.heartbeat_enabled = False
    assert by_code(diagnose(facts))["heartbeat_off"] == [Severity.WARN]


def test_delete_cleanup_is_judged_by_statistics_not_names() -> None:
    facts = healthy()
    jobs = replace(facts.tables[0], name="jobs", inserts=5000, deletes=4900, dead_tuples=4000)
    busy = replace(facts.tables[0], name="accounts", inserts=5000, updates=9000, deletes=4900)
    few = replace(facts.tables[0], name="outbox_small", inserts=100, deletes=100)
    facts.tables = [jobs, busy, few]
    cleanup = [f for f in diagnose(facts) if f.code == "delete_cleanup"]
    assert [f.object for f in cleanup] == ["table public.jobs"]
    assert cleanup[0].details == {
        "inserts": 5000,
        "updates": 0,
        "deletes": 4900,
        "dead_tuples": 4000,
    }


def test_exit_code_is_the_worst_severity() -> None:
    facts = healthy()
    assert Report("h", "15", "d", diagnose(facts)).exit_code == 0
    facts.heartbeat_enabled = False
    assert Report("h", "15", "d", diagnose(facts)).exit_code == 1
    facts.slots = [slot(wal_status="lost")]
    assert Report("h", "15", "d", diagnose(facts)).exit_code == 3
    facts.settings["wal_level"] = replace(facts.settings["wal_level"], value="replica")
    assert Report("h", "15", "d", diagnose(facts)).exit_code == 4
