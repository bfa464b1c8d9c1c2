"""A running engine records slot samples for the doctor (``monitor.samples``).

Against a real PostgreSQL: the engine samples every slot of the cluster on
a short interval, prunes samples past the retention, and the doctor's
growth estimate and quiet-publication check are made from those samples
without any earlier doctor run. A sample that cannot be written is a
warning; replication goes on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.support import count_lines, execute, running_engine, wait_for
from tests.integration.test_postgres_exporter import wait_wal_written
from walrelay.config import parse_config
from walrelay.engine import Engine
from walrelay.monitor.doctor import run_doctor
from walrelay.monitor.sampling import SlotSampler
from walrelay.monitor.thresholds import MiB, Severity


def _config(db: str, out: Path, slot: str) -> dict[str, Any]:
    return {
        "source": {
            "dsn": db,
            "slot": slot,
            "publication": f"{slot}_pub",
            "tables": ["public.items"],
            "status_interval": 1,
        },
        "destinations": [{"name": "file", "sink": {"type": "file", "path": str(out)}}],
        "shutdown_timeout": 10,
        "monitor": {"interval": "100ms", "samples": {"interval": "300ms"}},
        "http": {"enabled": False},
    }


def _sampler(engine: Engine) -> SlotSampler:
    monitor = engine.services.monitor
    assert monitor is not None and monitor.sampler is not None
    return monitor.sampler


def _rows(db: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(db, autocommit=True) as conn:
        return conn.execute(query, params or None).fetchall()


async def _samples_after(sampler: SlotSampler, n: int) -> None:
    target = sampler.samples_total + n
    await wait_for(lambda: sampler.samples_total >= target, what=f"{n} more slot samples")


async def test_engine_samples_prunes_and_the_doctor_estimates_from_them(
    db: str, tmp_path: Path
) -> None:
    execute(
        db,
        "create table items (id int primary key, v text)",
        "create table filler (v text)",
        "select pg_create_logical_replication_slot('samples_stuck', 'pgoutput')",
    )
    config = parse_config(_config(db, tmp_path / "out.jsonl", "samples_live"))
    async with running_engine(config) as engine:
        sampler = _sampler(engine)
        await _samples_after(sampler, 1)
        # Samples past the retention (7 days by default) go; younger ones stay.
        execute(
            db,
            "insert into walrelay.slot_sample_history (slot_name, sampled_at, recorded_by, "
            "active, wal_lsn) values ('old', now() - interval '8 days', 'engine', false, "
            "'0/1'), ('kept', now() - interval '6 days', 'engine', false, '0/1')",
        )
        # ~40 MB of WAL that nobody consumes from samples_stuck, over several samples.
        for _ in range(5):
            execute(db, "insert into filler select repeat('x', 1000) from generate_series(1, 8000)")
            await _samples_after(sampler, 1)
        await asyncio.to_thread(wait_wal_written, db)  # synchronous_commit is off here
        await _samples_after(sampler, 1)
        assert sampler.pruned_total >= 1 and sampler.failures_total == 0
        names = {r[0] for r in _rows(db, "select slot_name from walrelay.slot_sample_history")}
        assert "old" not in names and {"kept", "samples_stuck", "samples_live"} <= names
        stuck = _rows(
            db,
            "select recorded_by, active, wal_status, retained_bytes, confirmed_lag_bytes, "
            "safe_wal_size, published_writes, extract(epoch from sampled_at)::float8 "
            "from walrelay.slot_sample_history "
            "where slot_name = 'samples_stuck' order by sampled_at",
        )
        # At the configured interval (300 ms), not at every monitor check (100 ms);
        # on average, as each sample's server time also includes its connect.
        gaps = [b[7] - a[7] for a, b in itertools.pairwise(stuck)]
        assert sum(gaps) / len(gaps) >= 0.2, gaps
        assert len(stuck) >= 7
        assert {(r[0], r[1], r[2]) for r in stuck} == {("engine", False, "reserved")}
        retained = [r[3] for r in stuck]
        assert retained == sorted(retained) and retained[-1] - retained[0] >= 32 * MiB
        assert all(r[4] is not None and r[5] is not None and r[6] == 0 for r in stuck)
        # Nothing is left open on the source between samples.
        idle = _rows(
            db,
            "select state from pg_stat_activity where application_name = 'walrelay-samples' "
            "and xact_start is not null and state <> 'active'",
        )
        assert idle == []

        # The doctor, writing nothing, estimates from the engine's samples alone.
        report = await asyncio.to_thread(
            run_doctor, db, state_schema=None, history_schema="walrelay"
        )
        [growth] = [
            f
            for f in report.findings
            if f.code == "slot_wal_growth" and f.object == "slot samples_stuck"
        ]
        samples = _rows(
            db,
            "select count(*) from walrelay.slot_sample_history where slot_name = "
            "'samples_stuck' and sampled_at > now() - interval '1 hour'",
        )[0][0]
        assert growth.details["samples"] == samples + 1  # + the doctor's own reading
        # Tens of MB in seconds against a 4 GB cap: lost within the hour here
        # (within the day on the slowest machine), and paged when within the hour.
        until_lost = growth.details["seconds_until_lost"]
        assert 0 < until_lost < 24 * 3600
        assert growth.severity is (Severity.PAGE if until_lost < 3600 else Severity.WARN)
        assert growth.details["bytes_per_hour"] * until_lost / 3600 <= 4 * 1024**3
        assert "is lost in" in growth.message
        # A first recording doctor run sees the quiet publication from the
        # engine's samples: the slot did not move and its tables were quiet.
        report = await asyncio.to_thread(run_doctor, db)
        [quiet] = [
            f
            for f in report.findings
            if f.code == "quiet_publication" and f.object == "slot samples_stuck"
        ]
        assert quiet.details["wal_written"] >= 32 * MiB


async def test_a_sample_that_cannot_be_written_never_stops_replication(
    db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    execute(db, "create table items (id int primary key, v text)")
    out = tmp_path / "out.jsonl"
    config = parse_config(_config(db, out, "samples_fail"))
    async with running_engine(config) as engine:
        sampler = _sampler(engine)
        await _samples_after(sampler, 1)
        execute(
            db,
            "create function walrelay.refuse() returns trigger language plpgsql as "
            "$$ begin raise exception 'no room for samples'; end $$",
            "create trigger refuse before insert on walrelay.slot_sample_history "
            "for each statement execute function walrelay.refuse()",
        )
        with caplog.at_level(logging.WARNING, logger="walrelay.monitor"):
            await wait_for(lambda: sampler.failures_total >= 2, what="failed samples")
        warnings = [r.getMessage() for r in caplog.records if "slot samples" in r.getMessage()]
        assert len(warnings) == 1  # once, not at every sample
        assert "no room for samples" in warnings[0] and "replication goes on" in warnings[0]
        execute(db, "insert into items select g, 'x' from generate_series(1, 50) g")
        await wait_for(lambda: count_lines(out) == 50, what="50 events delivered")
        assert engine.services.status()["monitor"]["samples"]["error"] is not None
        execute(db, "drop trigger refuse on walrelay.slot_sample_history")
        await _samples_after(sampler, 1)
        assert sampler.last_error is None


async def test_inactive_time_of_another_slot_survives_a_restart_through_the_samples(
    db: str, tmp_path: Path
) -> None:
    """Before PostgreSQL 17 the server does not say since when a slot is
    inactive; the samples remember it across walrelay's restarts, so a slot
    abandoned ten minutes ago pages at once rather than five minutes later."""
    execute(
        db,
        "create table items (id int primary key, v text)",
        "select pg_create_logical_replication_slot('samples_abandoned', 'pgoutput')",
    )
    config = parse_config(_config(db, tmp_path / "out.jsonl", "samples_restart"))
    async with running_engine(config) as engine:
        sampler = _sampler(engine)
        await _samples_after(sampler, 1)
    # Recorded by an earlier run of walrelay (or the doctor) ten minutes ago.
    execute(
        db,
        "update walrelay.slot_samples set inactive_since = now() - interval '10 min' "
        "where slot_name = 'samples_abandoned'",
    )
    async with running_engine(config) as engine:

        def paged() -> bool:
            return any(
                a.rule == "slot_inactive"
                and a.object == "slot samples_abandoned"
                and a.severity is Severity.PAGE
                for a in engine.services.open_alerts()
            )

        await wait_for(paged, what="the abandoned slot's page")
        # The samples keep the time: it is still ten minutes, not restarted.
        [row] = _rows(
            db,
            "select extract(epoch from now() - inactive_since)::float8 "
            "from walrelay.slot_samples where slot_name = 'samples_abandoned'",
        )
        assert row[0] >= 600
