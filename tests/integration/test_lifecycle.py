"""Processes: SIGTERM and restart, a second instance, set-up errors, reconnects."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from tests.integration.support import (
    count_lines,
    execute,
    make_config,
    read_jsonl,
    running_engine,
    slot_state,
    wait_for,
    wait_for_sync,
    walrelay_process,
    write_config_file,
)
from walrelay.model import parse_event_id
from walrelay.testing.pgcluster import start_cluster


def config_dict(dsn: str, tables: list[str], out: Path, **source: Any) -> dict[str, Any]:
    return {
        "source": {"dsn": dsn, "tables": tables, "status_interval": 1, **source},
        "destinations": [{"name": "file", "sink": {"type": "file", "path": str(out)}}],
        "shutdown_timeout": 20,
        "log_level": "info",
    }


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "walrelay", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def objects(dsn: str) -> tuple[list[str], list[str]]:
    with psycopg.connect(dsn) as conn:
        slots = [
            r[0]
            for r in conn.execute(
                "select slot_name from pg_replication_slots where database = current_database()"
            )
        ]
        pubs = [r[0] for r in conn.execute("select pubname from pg_publication")]
    return slots, pubs


def test_sigterm_then_restart_loses_nothing_and_repeats_nothing(db: str, tmp_path: Path) -> None:
    execute(db, "create table orders (id int primary key, note text)")
    out = tmp_path / "events.jsonl"
    cfg = write_config_file(tmp_path / "walrelay.yaml", config_dict(db, ["public.orders"], out))
    total = 4000
    stop_writer = threading.Event()

    def writer() -> None:
        with psycopg.connect(db, autocommit=True) as conn:
            i = 0
            while i < total and not stop_writer.is_set():
                with conn.transaction():
                    for _ in range(1 + i % 7):  # transactions of 1..7 rows
                        if i < total:
                            i += 1
                            conn.execute("insert into orders values (%s, 'n')", (i,))

    thread = threading.Thread(target=writer)
    try:
        with walrelay_process(cfg, tmp_path / "run1.log") as first:
            wait_for_sync(
                lambda: slot_state(db, "walrelay").get("active") is True,
                what="the first run to stream",
            )
            thread.start()
            wait_for_sync(lambda: len(read_jsonl(out)) >= 1000, what="1000 events")
            first.send_signal(signal.SIGTERM)
            assert first.wait(timeout=60) == 0, (tmp_path / "run1.log").read_text()
        log1 = (tmp_path / "run1.log").read_text()
        assert "confirmed" in log1
        with walrelay_process(cfg, tmp_path / "run2.log") as second:
            thread.join(timeout=120)
            wait_for_sync(
                lambda: len(read_jsonl(out)) >= total,
                within=120,
                what="every row after the restart",
            )
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=60) == 0, (tmp_path / "run2.log").read_text()
    finally:
        stop_writer.set()
        if thread.is_alive():
            thread.join(timeout=60)
    events = read_jsonl(out)
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)), "an id was written twice"
    assert sorted(e["record"]["id"] for e in events) == list(range(1, total + 1))
    assert [parse_event_id(i) for i in ids] == sorted(parse_event_id(i) for i in ids)


def test_second_instance_exits_with_slot_and_pid(db: str, tmp_path: Path) -> None:
    execute(db, "create table t (id int primary key)")
    cfg = write_config_file(
        tmp_path / "walrelay.yaml", config_dict(db, ["public.t"], tmp_path / "e.jsonl")
    )
    with walrelay_process(cfg, tmp_path / "first.log"):
        # Streaming for sure: a change came through (possibly as an initial
        # snapshot row, delivered before streaming starts) and the slot is held.
        execute(db, "insert into t values (1)")
        wait_for_sync(lambda: len(read_jsonl(tmp_path / "e.jsonl")) >= 1, what="first event")
        wait_for_sync(
            lambda: slot_state(db, "walrelay")["active_pid"] is not None, what="slot streaming"
        )
        holder = slot_state(db, "walrelay")["active_pid"]
        confirmed_before = slot_state(db, "walrelay")["confirmed"]
        second = run_cli("run", "--config", str(cfg))
        assert second.returncode == 2, second.stderr
        assert "walrelay" in second.stderr and f"PID {holder}" in second.stderr
        # The first one still holds the slot; its position was not touched.
        state = slot_state(db, "walrelay")
        assert state["active_pid"] == holder and state["confirmed"] >= confirmed_before


@pytest.mark.parametrize(
    ("setup", "tables", "expected"),
    [
        ([], ["public.missing"], r"table public\.missing does not exist"),
        (
            ["create table nokey (v text)"],
            ["public.nokey"],
            r"table public\.nokey has no primary key"
            r".*fix: ALTER TABLE public\.nokey ADD PRIMARY KEY",
        ),
        (
            [
                "create table t (id int primary key)",
                "select pg_create_logical_replication_slot('walrelay', 'test_decoding')",
            ],
            ["public.t"],
            r"slot walrelay exists but is a logical slot using plugin 'test_decoding'",
        ),
        (
            ["create table t (id int primary key)", "alter table t replica identity nothing"],
            ["public.t"],
            r"REPLICA IDENTITY NOTHING",
        ),
    ],
    ids=["missing-table", "no-primary-key", "other-plugin", "identity-nothing"],
)
def test_setup_errors_exit_2_and_create_nothing(
    db: str, tmp_path: Path, setup: list[str], tables: list[str], expected: str
) -> None:
    execute(db, *setup)
    slots_before, pubs_before = objects(db)
    cfg = write_config_file(tmp_path / "w.yaml", config_dict(db, tables, tmp_path / "e.jsonl"))
    result = run_cli("run", "--config", str(cfg))
    assert result.returncode == 2, result.stderr
    assert re.search(expected, result.stderr), result.stderr
    assert result.stderr.count("\n") == 1, "one clear line, no traceback"
    assert objects(db) == (slots_before, pubs_before), "nothing half-created"


def test_bad_config_exits_2_naming_the_setting(tmp_path: Path) -> None:
    cfg = tmp_path / "w.yaml"
    cfg.write_text(
        "source: {dsn: 'host=127.0.0.1 password=hunter2', tables: [t], slott: x}\n"
        "destinations: [{name: a, sink: {type: file}}]\n"
    )
    result = run_cli("run", "--config", str(cfg))
    assert result.returncode == 2
    assert "source.slott: unknown setting" in result.stderr
    assert "destinations.0.sink.file.path" in result.stderr
    assert "hunter2" not in result.stderr


def test_wal_level_not_logical_is_refused(tmp_path: Path) -> None:
    cluster = start_cluster({"wal_level": "replica"})
    try:
        execute(cluster.dsn(), "create table t (id int primary key)")
        cfg = write_config_file(
            tmp_path / "w.yaml", config_dict(cluster.dsn(), ["public.t"], tmp_path / "e.jsonl")
        )
        result = run_cli("run", "--config", str(cfg))
        assert result.returncode == 2
        assert "wal_level is 'replica'" in result.stderr
        assert "ALTER SYSTEM SET wal_level = logical" in result.stderr
        assert objects(cluster.dsn()) == ([], [])
    finally:
        cluster.stop()


async def test_reconnects_after_walsender_is_terminated(db: str, tmp_path: Path) -> None:
    execute(db, "create table t (id int primary key, v int)")
    out = tmp_path / "e.jsonl"
    config = make_config(
        db,
        ["public.t"],
        [{"name": "f", "sink": {"type": "file", "path": str(out)}}],
        reconnect={"initial": 0.05, "max": 0.5},
    )
    async with running_engine(config) as engine:
        execute(db, "insert into t select g, 0 from generate_series(1, 2000) g")
        await wait_for(lambda: len(read_jsonl(out)) >= 2000, what="first batch")
        for round_ in range(3):
            pid = slot_state(db, "walrelay")["active_pid"]
            execute(db, "select pg_terminate_backend(%s)", params=(pid,))
            execute(db, f"update t set v = {round_ + 1} where id <= 500")

            def reconnected(times: int = round_ + 1) -> bool:
                return engine.stats.reconnects >= times

            await wait_for(reconnected, what="a reconnect")
        await wait_for(lambda: len(read_jsonl(out)) >= 3500, what="all events")
    events = read_jsonl(out)
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)) == 3500
    last_version = {}
    for e in events:
        last_version[e["record"]["id"]] = e["record"]["v"]
    assert all(last_version[i] == 3 for i in range(1, 501))


async def test_alter_table_interleaved_and_restart(db: str, tmp_path: Path) -> None:
    execute(db, "create table evolving (id int primary key, a text, b int)")
    out = tmp_path / "e.jsonl"
    config = make_config(
        db, ["public.evolving"], [{"name": "f", "sink": {"type": "file", "path": str(out)}}]
    )
    async with running_engine(config):
        execute(db, "insert into evolving values (1, 'x', 1)")
        execute(db, "alter table evolving add column c jsonb default '{\"k\": 1}'")
        execute(db, "insert into evolving values (2, 'y', 2, '{\"k\": 2}')")
        execute(db, "alter table evolving drop column b")
        execute(db, "insert into evolving values (3, 'z', '{\"k\": 3}')")
        await wait_for(lambda: len(read_jsonl(out)) >= 3, what="3 events")
    # Changes while walrelay is down, decoded after the restart.
    execute(db, "alter table evolving rename column a to name")
    execute(db, "insert into evolving values (4, 'w', null)")
    execute(
        db,
        "begin; alter table evolving alter column id type bigint; "
        "insert into evolving values (5000000000, 'big', null); commit;",
    )
    execute(db, "update evolving set name = 'v' where id = 1")
    async with running_engine(config):
        await wait_for(lambda: len(read_jsonl(out)) >= 6, what="6 events")
    records = [e["record"] for e in read_jsonl(out)]
    assert records == [
        {"id": 1, "a": "x", "b": 1},
        {"id": 2, "a": "y", "b": 2, "c": {"k": 2}},
        {"id": 3, "a": "z", "c": {"k": 3}},
        {"id": 4, "name": "w", "c": None},
        {"id": 5000000000, "name": "big", "c": None},
        {"id": 1, "name": "v", "c": {"k": 1}},
    ]


def test_large_transaction_streams_with_bounded_memory(db: str, tmp_path: Path) -> None:
    """200k rows in one transaction, logical_decoding_work_mem=64kB (streamed)."""
    execute(db, "create table big (id int primary key, payload text)")
    out = tmp_path / "e.jsonl"
    conf = config_dict(db, ["public.big"], out, spill_memory_bytes="4MiB", spill_dir=str(tmp_path))
    conf["destinations"][0]["buffer_bytes"] = "16MiB"
    cfg = write_config_file(tmp_path / "w.yaml", conf)
    rows = 200_000
    with walrelay_process(cfg, tmp_path / "run.log") as proc:
        wait_for_sync(
            lambda: slot_state(db, "walrelay").get("active") is True, what="walrelay to stream"
        )
        ps = psutil.Process(proc.pid)
        baseline = ps.memory_info().rss
        execute(
            db, f"insert into big select g, repeat('p', 100) || g from generate_series(1, {rows}) g"
        )
        peak = baseline

        def done() -> bool:
            nonlocal peak
            peak = max(peak, ps.memory_info().rss)
            return count_lines(out) >= rows

        wait_for_sync(done, within=240, what="200k events")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    growth_mb = (peak - baseline) / 2**20
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "select stream_txns from pg_stat_replication_slots where slot_name = 'walrelay'"
        ).fetchone()
    assert row is not None and row[0] >= 1, "the transaction was not streamed in progress"
    events = read_jsonl(out)
    assert len(events) == rows
    assert len({e["id"] for e in events}) == rows
    assert events[-1]["record"] == {"id": rows, "payload": "p" * 100 + str(rows)}
    # The transaction's raw data alone is ~25 MB and its decoded events ~120 MB;
    # memory must stay bounded by the spill limit (4 MiB) and the buffer (16 MiB).
    assert growth_mb < 60, f"RSS grew by {growth_mb:.0f} MiB"
    assert not list(tmp_path.glob("*.spill*")), "spill files left behind"
    print(f"peak RSS growth for a 200k-row transaction: {growth_mb:.1f} MiB")


def test_demo_runs_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "demo.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "walrelay", "demo", "--transactions", "300", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    m = re.search(r"(\d+) events from (\d+) transactions", result.stderr)
    assert m, result.stderr
    events = read_jsonl(out)
    assert len(events) == int(m.group(1)) > 300
    assert {e["table"] for e in events} == {"public.customers", "public.orders"}
    customer_lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert customer_lines and all('"public.customers"' in line for line in customer_lines)
    stopped = re.search(r"PostgreSQL \(pid (\d+)\) stopped and removed", result.stderr)
    assert stopped, result.stderr
    pid = int(stopped.group(1))
    assert not psutil.pid_exists(pid)
