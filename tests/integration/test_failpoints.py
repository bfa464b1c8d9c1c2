"""A crash at each durability step, then a restart: nothing lost, nothing twice.

walrelay runs as a child process with ``WALRELAY_FAILPOINTS`` set; it must
die with exit code 137 exactly at the named point (it says so on stderr).
A second run without failpoints goes on until everything up to the end of
the workload is delivered and confirmed (``--until-lsn``). The history
checker then judges what the receiver saw:

- PostgreSQL sink: an audit trigger on the target records every row write,
  and each (key, version) must appear exactly once, in order per key; the
  target must equal the source;
- webhook sink (with a ledger): every event arrives; duplicates only for a
  crash between the send and the ledger write (``sink.after_send``), and
  then with the id it had the first time;
- the failed-event store's writes (``retry.after_park``,
  ``retry.after_delete``): a parked event arrives exactly once after the
  restart;
- the exactly-once Kafka sink (``kafka.before_commit``,
  ``kafka.after_commit``): a ``read_committed`` consumer sees every change
  exactly once;
- the file sink (``file.after_fsync``): the file holds every change exactly
  once.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.support import WebhookReceiver, execute, read_jsonl, write_config_file
from walrelay import failpoints
from walrelay.model import format_lsn
from walrelay.testing.checker import Change, Delivery, check
from walrelay.testing.pgcluster import PgCluster
from walrelay.testing.servers import KafkaServer, NatsServer, RedisServer

SECRET = "whsec_" + base64.b64encode(b"failpoint-test-secret-0123456789").decode()
KEYS = 60
UPDATES = 3  # per key, so each key has versions 0..UPDATES

_targets = itertools.count(1)


@pytest.fixture
def target(pg: PgCluster) -> Iterator[str]:
    name = f"fptarget{next(_targets)}"
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"create database {name}")
    try:
        yield pg.dsn(name)
    finally:
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            conn.execute(f"drop database {name} with (force)")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with RedisServer() as server:
        yield server.url


def workload(db: str) -> int:
    """Versions 0..UPDATES of KEYS keys in small transactions, then a fence
    transaction; returns an LSN that is confirmed once all of it is delivered."""
    execute(
        db,
        "create table items (id int primary key, version int not null)",
        "create table fence (id int primary key)",
    )
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "select pg_create_logical_replication_slot('walrelay', 'pgoutput')"
        )  # so the workload is a backlog the first run starts reading
        conn.execute("create publication walrelay_pub for table items, fence")
        for start in range(1, KEYS + 1, 4):
            conn.execute(
                "insert into items select g, 0 from generate_series(%s::int, %s::int) g",
                (start, min(KEYS, start + 3)),
            )
        for v in range(1, UPDATES + 1):
            for start in range(1, KEYS + 1, 6):
                conn.execute(
                    "update items set version = %s where id between %s and %s",
                    (v, start, start + 5),
                )
        row = conn.execute("select pg_current_wal_insert_lsn()::text").fetchone()
        assert row is not None
        conn.execute("insert into fence values (1)")
    from walrelay.model import parse_lsn

    return parse_lsn(row[0])


def expected_changes() -> list[Change]:
    return [
        Change(uid=(k, v), key=k, order=v) for k in range(1, KEYS + 1) for v in range(UPDATES + 1)
    ]


async def run_walrelay(
    config: Path, log: Path, until: int, env: dict[str, str] | None = None, within: float = 90
) -> tuple[int, str]:
    with open(log, "wb") as out:  # noqa: ASYNC230 - handed to the child, written by it
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "walrelay",
            "run",
            "--config",
            str(config),
            "--until-lsn",
            format_lsn(until),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        try:
            code = await asyncio.wait_for(proc.wait(), within)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    return code, log.read_text(errors="replace")  # noqa: ASYNC240 - after the child exited


def config_for(db: str, dest: dict[str, Any]) -> dict[str, Any]:
    return {
        "source": {
            "dsn": db,
            "tables": ["public.items", "public.fence"],
            "status_interval": 1,
            "create_slot": True,
            "create_publication": True,
        },
        "destinations": [dest],
        "shutdown_timeout": 20,
        "log_level": "info",
        "http": {"enabled": False},
    }


def slow_down(point: str, seconds: float) -> str:
    """Stall every finished batch a little so the crash falls mid-stream."""
    return "" if point == "pipeline.after_finish" else f";pipeline.after_finish=sleep:{seconds}"


async def crash_then_recover(
    tmp_path: Path, conf: dict[str, Any], until: int, spec: str, point: str
) -> tuple[str, str]:
    cfg = write_config_file(tmp_path / "walrelay.yaml", conf)
    code, log1 = await run_walrelay(cfg, tmp_path / "run1.log", until, {failpoints.ENV_VAR: spec})
    assert code == failpoints.EXIT_CODE, f"exit {code}, expected a crash at {point}:\n{log1}"
    assert f"failpoint {point}: crash" in log1
    code, log2 = await run_walrelay(cfg, tmp_path / "run2.log", until)
    assert code == 0, log2
    return log1, log2


POSTGRES_CASES = [
    ("sink.after_send", 4),
    ("postgres.before_commit", 4),
    ("pipeline.after_finish", 4),
    ("lsn.after_confirm", 2),
]


@pytest.mark.parametrize(("point", "nth"), POSTGRES_CASES, ids=[p for p, _ in POSTGRES_CASES])
async def test_postgres_sink_crash(
    db: str, target: str, tmp_path: Path, point: str, nth: int
) -> None:
    execute(
        target,
        "create table items (id int primary key, version int not null)",
        "create table fence (id int primary key)",
        "create table audit (n bigserial primary key, id int, version int)",
        "create function audit_fn() returns trigger language plpgsql as $$ begin "
        "insert into audit (id, version) values (new.id, new.version); return null; end $$",
        "create trigger audit after insert or update on items "
        "for each row execute function audit_fn()",
    )
    until = workload(db)
    dest = {"name": "pg", "sink": {"type": "postgres", "dsn": target, "batch_size": 10}}
    spec = f"{point}=crash@{nth}" + slow_down(point, 0.1)
    _, log2 = await crash_then_recover(tmp_path, config_for(db, dest), until, spec, point)
    if point in ("sink.after_send", "pipeline.after_finish"):
        # The batch committed before the crash came again and was skipped.
        assert "replayed event(s) already applied" in log2, log2
    with psycopg.connect(target) as conn:
        audit = conn.execute("select id, version from audit order by n").fetchall()
        got = conn.execute("select id, version from items order by id").fetchall()
    with psycopg.connect(db) as conn:
        want = conn.execute("select id, version from items order by id").fetchall()
    assert got == want
    report = check(expected_changes(), [Delivery(uid=(k, v), key=k, order=v) for k, v in audit])
    assert report.ok(), report.summary()


WEBHOOK_CASES = [
    ("sink.before_send", "postgres", 20),
    ("sink.after_send", "redis", 20),
    ("ledger.after_record", "redis", 20),
    ("pipeline.after_finish", "postgres", 20),
    ("lsn.after_confirm", "postgres", 2),
]


@pytest.mark.parametrize(
    ("point", "ledger", "nth"), WEBHOOK_CASES, ids=[f"{p}-{lg}" for p, lg, _ in WEBHOOK_CASES]
)
async def test_webhook_crash(
    db: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    point: str,
    ledger: str,
    nth: int,
) -> None:
    monkeypatch.setenv("WALRELAY_TEST_SECRET", SECRET)
    until = workload(db)
    prefix = f"walrelay:ledger:{tmp_path.name}:"  # one module-wide Redis, a key per test
    async with WebhookReceiver(SECRET) as hook:
        dest = {
            "name": "hook",
            # One batch in flight, so that no other batch is between its send and
            # its record when the crash comes (with N in flight, a crash anywhere
            # can resend up to N events: see docs/delivery-guarantees.md).
            "max_in_flight": 1,
            "sink": {"type": "webhook", "url": hook.url, "secret_env": "WALRELAY_TEST_SECRET"},
            "ledger": (
                {"type": "redis", "url": redis_url, "key_prefix": prefix}
                if ledger == "redis"
                else {"type": "postgres"}
            ),
        }
        spec = f"{point}=crash@{nth}" + slow_down(point, 0.01)
        _, log2 = await crash_then_recover(tmp_path, config_for(db, dest), until, spec, point)
        if point in ("ledger.after_record", "pipeline.after_finish"):
            # Recorded before the crash, replayed after it: the ledger dropped it.
            assert "the ledger dropped" in log2, log2
        events = [e for e in hook.received if e["table"] == "public.items"]
    observed = [
        Delivery(
            uid=(e["record"]["id"], e["record"]["version"]),
            key=e["record"]["id"],
            order=e["record"]["version"],
            id=e["id"],
        )
        for e in events
    ]
    report = check(expected_changes(), observed)
    if point == "sink.after_send":
        # Sent, not recorded: that one event comes again, with the id it had.
        assert report.ok(allow_duplicates=True), report.summary(allow_duplicates=True)
        assert report.duplicates == 1, report.summary()
    else:
        assert report.ok(), report.summary()


async def wait_received(hook: WebhookReceiver, count: int, within: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while sum(1 for e in hook.received if e["table"] == "public.items") < count:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {count} events")
        await asyncio.sleep(0.05)  # polling the receiver


@pytest.mark.parametrize("point", ["retry.after_park", "retry.after_delete"])
async def test_failed_event_store_crash(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """The failed-event store's writes: a key's first event fails and is parked
    (then, for after_delete, delivered from the store); walrelay dies right
    after that write; after the restart every event arrives exactly once."""
    monkeypatch.setenv("WALRELAY_TEST_SECRET", SECRET)
    until = workload(db)
    async with WebhookReceiver(SECRET) as hook:
        failed_once: set[int] = set()

        def fail_first_of_key_7(event: dict[str, Any]) -> bool:
            record = event.get("record") or {}
            if record.get("id") != 7 or (point == "retry.after_delete" and 7 in failed_once):
                return False
            failed_once.add(7)
            return True

        hook.fail_when = fail_first_of_key_7
        dest = {
            "name": "hook",
            "max_in_flight": 1,  # as above: no other batch between send and record
            "sink": {"type": "webhook", "url": hook.url, "secret_env": "WALRELAY_TEST_SECRET"},
            "ledger": {"type": "postgres"},
            "parking": {"park_after": 1, "backoff": {"initial": 0.2, "max": 0.5}},
        }
        conf = config_for(db, dest)
        cfg = write_config_file(tmp_path / "walrelay.yaml", conf)
        code, log1 = await run_walrelay(
            cfg, tmp_path / "run1.log", until, {failpoints.ENV_VAR: f"{point}=crash"}
        )
        assert code == failpoints.EXIT_CODE, f"exit {code}:\n{log1}"
        assert f"failpoint {point}: crash" in log1
        hook.fail_when = None
        # Parked events count as finished for the LSN, so --until-lsn could stop
        # before the store retried them: run until everything arrived instead.
        with open(tmp_path / "run2.log", "wb") as out:  # noqa: ASYNC230 - for the child
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "walrelay", "run", "--config", str(cfg),
                stdout=out, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        try:
            await wait_received(hook, KEYS * (UPDATES + 1))
            await asyncio.sleep(1.0)  # anything extra would arrive now
        finally:
            proc.terminate()
            assert await asyncio.wait_for(proc.wait(), 60) == 0
        events = [e for e in hook.received if e["table"] == "public.items"]
    observed = [
        Delivery(
            uid=(e["record"]["id"], e["record"]["version"]),
            key=e["record"]["id"],
            order=e["record"]["version"],
            id=e["id"],
        )
        for e in events
    ]
    report = check(expected_changes(), observed)
    assert report.ok(), report.summary()


def observed_items(envelopes: list[dict[str, Any]]) -> list[Delivery]:
    return [
        Delivery(
            uid=(e["record"]["id"], e["record"]["version"]),
            key=e["record"]["id"],
            order=e["record"]["version"],
            id=e["id"],
        )
        for e in envelopes
        if e["table"] == "public.items"
    ]


@pytest.fixture(scope="module")
def kafka_server() -> Iterator[KafkaServer]:
    with KafkaServer() as server:
        yield server


@pytest.mark.servers
@pytest.mark.parametrize("point", [failpoints.KAFKA_BEFORE_COMMIT, failpoints.KAFKA_AFTER_COMMIT])
async def test_kafka_exactly_once_crash(
    db: str, tmp_path: Path, kafka_server: KafkaServer, point: str
) -> None:
    """A crash right before / after commit_transaction: the aborted (or
    committed, not yet reported) transaction is settled on restart and the
    checkpoint skips what is committed, so read_committed sees each change once."""
    from tests.integration.broker_workloads import unique_prefix
    from tests.integration.test_sink_kafka import Reader, kafka_dest

    until = workload(db)
    prefix = unique_prefix("fp")
    dest = kafka_dest(kafka_server, prefix, batch_size=10)
    spec = f"{point}=crash@3" + slow_down(point, 0.01)
    await crash_then_recover(tmp_path, config_for(db, dest), until, spec, point)
    reader = Reader(kafka_server.bootstrap, prefix)
    try:
        await reader.until(KEYS * (UPDATES + 1), within=90)
        await asyncio.to_thread(reader.read, 1.0, 5.0)  # nothing more arrives
        envelopes = [s.envelope for s in reader.in_partition_order()]
    finally:
        reader.close()
    report = check(expected_changes(), observed_items(envelopes))
    assert report.ok(), report.summary()


async def test_file_sink_crash_after_fsync(db: str, tmp_path: Path) -> None:
    """A crash after the fsync, before the batch is reported delivered: the
    replay is skipped by the file's own high-water mark (its last line)."""
    point = failpoints.FILE_AFTER_FSYNC
    until = workload(db)
    out = tmp_path / "events.jsonl"
    dest = {
        "name": "file",
        "sink": {"type": "file", "path": str(out), "fsync": "batch", "batch_size": 10},
    }
    spec = f"{point}=crash@4" + slow_down(point, 0.01)
    await crash_then_recover(tmp_path, config_for(db, dest), until, spec, point)
    report = check(expected_changes(), observed_items(read_jsonl(out)))
    assert report.ok(), report.summary()


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer]:
    with NatsServer() as server:
        yield server


@pytest.mark.servers
async def test_nats_crash_after_ack(db: str, tmp_path: Path, nats_server: NatsServer) -> None:
    """A crash after JetStream acked a batch: the replay is dropped by
    JetStream's duplicate window (Nats-Msg-Id is the event id)."""
    from tests.integration.broker_workloads import unique_prefix
    from tests.integration.test_sink_nats import StreamReader, nats_dest

    point = failpoints.NATS_AFTER_ACK
    until = workload(db)
    prefix = unique_prefix("fp")
    dest = nats_dest(nats_server, prefix, batch_size=10)
    spec = f"{point}=crash@4" + slow_down(point, 0.01)
    await crash_then_recover(tmp_path, config_for(db, dest), until, spec, point)
    reader = StreamReader(nats_server.url, prefix.upper())
    await reader.until(KEYS * (UPDATES + 1), within=60)
    await asyncio.sleep(0.3)
    await reader.read()
    report = check(expected_changes(), observed_items([s.envelope for s in reader.seen]))
    assert report.ok(), report.summary()


@pytest.mark.servers
async def test_redis_crash_after_xadd(db: str, tmp_path: Path, redis_url: str) -> None:
    """A crash after Redis replied to a batch's XADDs: the replay is refused
    by Redis (explicit entry ids at or below the stream's top)."""
    from tests.integration.broker_workloads import unique_prefix
    from tests.integration.test_sink_redis import StreamsReader

    point = failpoints.REDIS_AFTER_XADD
    until = workload(db)
    prefix = unique_prefix("fp")
    dest = {
        "name": f"redis-{prefix}",
        "sink": {"type": "redis", "url": redis_url, "prefix": prefix, "batch_size": 10},
    }
    spec = f"{point}=crash@4" + slow_down(point, 0.01)
    await crash_then_recover(tmp_path, config_for(db, dest), until, spec, point)
    reader = StreamsReader(redis_url, prefix)
    await reader.until(KEYS * (UPDATES + 1), within=60)
    await reader.read()
    report = check(expected_changes(), observed_items([s.envelope for s in reader.seen]))
    assert report.ok(), report.summary()
