"""The retained-WAL growth estimate from slot samples, and the doctor's finding on it."""

from __future__ import annotations

from dataclasses import replace

from tests.unit.test_thresholds import by_code, healthy, slot
from walrelay.monitor.doctor import diagnose
from walrelay.monitor.sampling import Sampling
from walrelay.monitor.thresholds import GiB, MiB, Severity
from walrelay.monitor.wal_growth import estimate_growth
from walrelay.state.slot_samples import HistoryPoint


def _point(age: float, retained: int | None, **kw: object) -> HistoryPoint:
    base = HistoryPoint(
        age_seconds=age,
        active=False,
        wal_status="reserved",
        wal_lsn="0/1000100",
        confirmed_flush_lsn="0/1000100",
        retained_bytes=retained,
        confirmed_lag_bytes=retained,
        safe_wal_size=None,
        published_writes=5,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_a_steady_rise_gives_its_rate() -> None:
    # 1 MiB a minute for 30 minutes: 60 MiB/h.
    growth = estimate_growth([(60.0 * m, (100 - m) * MiB) for m in range(31)])
    assert growth is not None
    assert abs(growth.bytes_per_second * 3600 - 60 * MiB) < 1024
    assert growth.samples == 31 and growth.span_seconds == 1800.0
    assert (growth.first_bytes, growth.last_bytes) == (70 * MiB, 100 * MiB)
    assert abs(growth.seconds_until(60 * MiB) - 3600) < 1


def test_noise_flat_short_or_old_is_not_growth() -> None:
    # A healthy slot's saw-tooth: up 40 MiB, back to 0, again and again.
    saw = [(30.0 * i, (i % 4) * 20 * MiB) for i in range(40)]
    assert estimate_growth(saw) is None
    assert estimate_growth([(60.0 * m, 5 * GiB) for m in range(10)]) is None  # flat
    assert estimate_growth([(60.0 * m, m * MiB) for m in range(10)]) is None  # shrinking
    assert estimate_growth([(10.0, 0), (0.0, 64 * MiB)]) is None  # two samples
    assert estimate_growth([(20.0, 0), (10.0, 4 * MiB), (0.0, 8 * MiB)]) is None  # < 16 MiB
    # Samples older than the hour are not used: only the last two are left.
    assert estimate_growth([(7200.0, 0), (5000.0, 0), (60.0, GiB), (0.0, GiB)]) is None
    assert estimate_growth([(0.0, 0), (0.0, GiB), (0.0, 2 * GiB)]) is None  # one instant


def test_doctor_pages_warns_or_informs_by_time_to_loss() -> None:
    facts = healthy()
    history = [_point(60.0 * m, (100 - m) * MiB) for m in range(1, 31)]  # 60 MiB/h
    facts.history = {"walrelay": history}
    for safe, expected in (
        (30 * MiB, Severity.PAGE),  # lost in 30 min
        (600 * MiB, Severity.WARN),  # in 10 h
        (6000 * MiB, Severity.INFO),  # in 100 h
    ):
        facts.slots = [slot(retained_bytes=100 * MiB, safe_wal_size=safe)]
        facts.disk = None
        [f] = [f for f in diagnose(facts) if f.code == "slot_wal_growth"]
        assert f.severity is expected, safe
        assert f.details["samples"] == 31
        assert abs(f.details["bytes_per_hour"] - 60 * MiB) < 1024
        assert f.details["seconds_until_disk_full"] is None
        assert "is lost in" in f.message and "60.0 MB/h" in f.message
    # The disk under pg_wal filling first decides.
    facts.slots = [slot(retained_bytes=100 * MiB, safe_wal_size=6000 * MiB)]
    facts.disk = replace(healthy().disk, free=20 * MiB)  # type: ignore[type-var]
    [f] = [f for f in diagnose(facts) if f.code == "slot_wal_growth"]
    assert f.severity is Severity.PAGE and f.details["seconds_until_disk_full"] == 1200
    assert f.message.index("disk under pg_wal fills") < f.message.index("is lost")
    # No history, or a lost slot: nothing to say.
    facts.history = {}
    assert "slot_wal_growth" not in by_code(diagnose(facts))
    facts.history = {"walrelay": history}
    facts.slots = [slot(retained_bytes=100 * MiB, wal_status="lost")]
    assert "slot_wal_growth" not in by_code(diagnose(facts))


def test_quiet_publication_measured_from_the_start_of_the_quiet_samples() -> None:
    facts = healthy()
    facts.current_wal_lsn = "0/3000100"
    # The latest sample is 1 s old and barely behind: alone it shows no quiet time.
    latest = _point(1.0, 0, wal_lsn="0/3000000")
    quiet_start = _point(900.0, 0, wal_lsn="0/1000100")
    moved = _point(1000.0, 0, wal_lsn="0/0", confirmed_flush_lsn="0/FF")
    facts.sampling = Sampling({}, published_writes=5)
    facts.history = {"walrelay": [moved, quiet_start, _point(500.0, 0), latest]}
    [quiet] = [f for f in diagnose(facts) if f.code == "quiet_publication"]
    assert quiet.details["wal_written"] == 32 * MiB and "15.0min" in quiet.message
    facts.history = {"walrelay": [latest]}
    assert "quiet_publication" not in by_code(diagnose(facts))
    # A write to a published table between the samples breaks the quiet run.
    written = _point(500.0, 0, published_writes=4)
    facts.history = {"walrelay": [quiet_start, written, latest]}
    assert "quiet_publication" not in by_code(diagnose(facts))


def test_engine_samples_every_minute_for_a_week_by_default() -> None:
    from walrelay.config import MonitorConfig

    samples = MonitorConfig().samples
    assert (samples.enabled, samples.interval, samples.retention) == (True, 60.0, 7 * 86400.0)
    custom = MonitorConfig.model_validate({"samples": {"interval": "5s", "retention": "2h"}})
    assert (custom.samples.interval, custom.samples.retention) == (5.0, 7200.0)
