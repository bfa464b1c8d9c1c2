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
  once;
- walrelay's own progress rows (``snapshot.after_record``,
  ``backfill.after_cursor``, ``outbox.after_partition_drop``): the restart
  picks up from what was recorded -- a new snapshot after an unfinished one
  and none after a finished one, a backfill from its cursor, the remaining
  detached outbox partitions -- and the file holds every change once.

Runs that have no LSN to stop at are stopped with SIGTERM once what they
must do is observed (:func:`run_walrelay_until_done`).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.support import (
    WebhookReceiver,
    execute,
    read_jsonl,
    wait_for,
    write_config_file,
)
from walrelay import failpoints
from walrelay.model import format_lsn
from walrelay.testing.checker import Change, Delivery, check
from walrelay.testing.pgcluster import PgCluster, scratch_database
from walrelay.testing.servers import KafkaServer, NatsServer, RedisServer

SECRET = "whsec_" + base64.b64encode(b"failpoint-test-secret-0123456789").decode()
KEYS = 60
UPDATES = 3  # per key, so each key has versions 0..UPDATES

_targets = itertools.count(1)


@pytest.fixture
def target(pg: PgCluster) -> Iterator[str]:
    with scratch_database(pg, f"fptarget{next(_targets)}") as dsn:
        yield dsn


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
    config: Path,
    log: Path,
    until: int | None = None,
    env: dict[str, str] | None = None,
    within: float = 90,
) -> tuple[int, str]:
    """``walrelay run`` as a child until it exits by itself: at ``--until-lsn``
    (``until``), or at a crash failpoint set in ``env``."""
    args = ["--until-lsn", format_lsn(until)] if until is not None else []
    with open(log, "wb") as out:  # noqa: ASYNC230 - handed to the child, written by it
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "walrelay", "run", "--config", str(config), *args,
            stdout=out, stderr=asyncio.subprocess.STDOUT, env={**os.environ, **(env or {})},
        )  # fmt: skip
        try:
            code: int | None = await asyncio.wait_for(proc.wait(), within)
        except TimeoutError:
            code = None
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = log.read_text(errors="replace")  # noqa: ASYNC240 - after the child exited
    assert code is not None, f"walrelay did not exit within {within}s:\n{text}"
    return code, text


async def run_walrelay_until_done(
    config: Path,
    log: Path,
    done: Callable[[], bool],
    *,
    what: str,
    within: float = 90,
    quiet: float = 0.0,
) -> str:
    """``walrelay run`` as a child until ``done()`` holds, then a graceful stop
    (SIGTERM: in-flight deliveries finish) that must exit 0; returns its log.

    For runs with no LSN to stop at: a parked event's retry, a backfill, a
    re-taken snapshot, outbox upkeep. ``quiet``: seconds it keeps running after
    that, so that anything extra (a duplicate) would arrive before the stop."""
    with open(log, "wb") as out:  # noqa: ASYNC230 - handed to the child, written by it
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "walrelay", "run", "--config", str(config),
            stdout=out, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    try:
        await wait_for(lambda: done() or proc.returncode is not None, within=within, what=what)
        assert proc.returncode is None, f"walrelay exited early ({proc.returncode})"
        if quiet:
            await asyncio.sleep(quiet)  # an observation window, not a wait for a condition
        proc.terminate()
        code = await asyncio.wait_for(proc.wait(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = log.read_text(errors="replace")  # noqa: ASYNC240 - after the child exited
    assert code == 0, f"exit {code} after SIGTERM:\n{text}"
    return text


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
        observed = observed_items(hook.received)
    report = check(expected_changes(), observed)
    if point == "sink.after_send":
        # Sent, not recorded: that one event comes again, with the id it had.
        assert report.ok(allow_duplicates=True), report.summary(allow_duplicates=True)
        assert report.duplicates == 1, report.summary()
    elif point == "lsn.after_confirm":
        # The status update is sent by its own task, which runs while the delivery
        # task awaits the receiver's answer or the ledger write: the one event in
        # flight (max_in_flight: 1) may be between its 2xx and its record, and
        # then comes again with its id. Nothing confirmed may be missing.
        assert report.ok(allow_duplicates=True), report.summary(allow_duplicates=True)
        assert report.duplicates <= 1, report.summary()
    else:
        assert report.ok(), report.summary()


def items_received(hook: WebhookReceiver) -> int:
    return sum(1 for e in hook.received if e["table"] == "public.items")


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
        await run_walrelay_until_done(
            cfg,
            tmp_path / "run2.log",
            lambda: items_received(hook) >= KEYS * (UPDATES + 1),
            what="every event at the receiver",
            within=60,
            quiet=1.0,
        )
        observed = observed_items(hook.received)
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
    await asyncio.sleep(0.3)  # an observation window: a duplicate would be stored by now
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


# -- snapshots, backfills and outbox upkeep: progress kept in walrelay's own tables --


def item_rows(envelopes: list[dict[str, Any]]) -> list[Delivery]:
    """The item changes a file holds, identified by (id, version, op)."""
    return [
        Delivery(
            uid=(e["record"]["id"], e["record"]["version"], e["op"]),
            key=e["record"]["id"],
            order=e["record"]["version"],
            id=e["id"],
        )
        for e in envelopes
        if e["table"] == "public.items"
    ]


def file_dest(out: Path, **extra: Any) -> dict[str, Any]:
    # fsync per batch: a crash (os._exit) must not lose what the sink reported written.
    sink = {"type": "file", "path": str(out), "fsync": "batch", "batch_size": 10}
    return {"name": "file", "sink": sink, **extra}


def one_value(dsn: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def snapshot_status(dsn: str) -> str | None:
    return one_value(
        dsn, "select status from walrelay.snapshots where slot = %s", ("walrelay",)
    )  # the engine's own record of its initial snapshot


@pytest.mark.parametrize(("nth", "recorded"), [(1, "running"), (2, "done")])
async def test_snapshot_crash_after_record(
    db: str, tmp_path: Path, nth: int, recorded: str
) -> None:
    """The snapshot's state row is written twice: ``running`` once the slot
    and its exported snapshot exist, ``done`` once every row is delivered and
    confirmed. A crash right after ``running``: the restart must resume the
    snapshot on that slot (as backfills: else the rows are never sent), and
    stream what changed meanwhile from the slot (no history lost). A crash right
    after ``done``: the restart must stream on from the slot and not take the
    snapshot again (else every row comes twice)."""
    point = failpoints.SNAPSHOT_AFTER_RECORD
    execute(
        db,
        "create table items (id int primary key, version int not null)",
        "create table fence (id int primary key)",
        f"insert into items select g, 0 from generate_series(1, {KEYS}) g",
    )
    out = tmp_path / "events.jsonl"
    cfg = write_config_file(tmp_path / "walrelay.yaml", config_for(db, file_dest(out)))
    code, log1 = await run_walrelay(
        cfg, tmp_path / "run1.log", env={failpoints.ENV_VAR: f"{point}=crash@{nth}"}
    )
    assert code == failpoints.EXIT_CODE, f"exit {code}, expected a crash at {point}:\n{log1}"
    assert f"failpoint {point}: crash" in log1
    assert snapshot_status(db) == recorded
    delivered_before = len(item_rows(read_jsonl(out)))
    assert delivered_before == (0 if recorded == "running" else KEYS)

    # Written while walrelay is down: streamed from the slot either way (after
    # an unfinished snapshot, the resumed one reads the rows as they are now).
    with psycopg.connect(db, autocommit=True) as conn:
        for v in range(1, UPDATES + 1):
            conn.execute("update items set version = %s", (v,))
        conn.execute("insert into fence values (1)")

    want = KEYS * (UPDATES + 1)

    def caught_up() -> bool:
        envelopes = read_jsonl(out)
        fenced = any(e["table"] == "public.fence" for e in envelopes)
        return fenced and len(item_rows(envelopes)) >= want

    log2 = await run_walrelay_until_done(
        cfg, tmp_path / "run2.log", caught_up, what=f"the fence row and {want} item rows"
    )
    expected = [
        Change(uid=(k, v, "update"), key=k, order=v)
        for k in range(1, KEYS + 1)
        for v in range(1, UPDATES + 1)
    ]
    if recorded == "running":
        # Every update from the slot, then the resumed snapshot reads the rows as they are now.
        expected += [
            Change(uid=(k, UPDATES, "read"), key=k, order=UPDATES) for k in range(1, KEYS + 1)
        ]
    else:
        expected += [Change(uid=(k, 0, "read"), key=k, order=0) for k in range(1, KEYS + 1)]
    report = check(expected, item_rows(read_jsonl(out)))
    assert report.ok(), report.summary()
    if recorded == "running":
        assert "did not finish: resuming it on the same slot" in log2, log2


async def test_backfill_crash_after_cursor(db: str, tmp_path: Path) -> None:
    """A crash right after a backfill chunk's cursor is stored (its rows were
    delivered and confirmed before): the restart resumes after that cursor, so
    every row arrives exactly once -- not from the start (duplicates), not
    past the next chunk (lost rows)."""
    from walrelay.state.backfills import submit_backfill

    point = failpoints.BACKFILL_AFTER_CURSOR
    rows, chunk, nth = 100, 10, 4
    execute(
        db,
        "create table items (id int primary key, version int not null)",
        "create table fence (id int primary key)",
        f"insert into items select g, 0 from generate_series(1, {rows}) g",
    )
    out = tmp_path / "events.jsonl"
    conf = config_for(db, file_dest(out, snapshot="never"))
    conf["source"]["backfill_poll_interval"] = 0.1
    cfg = write_config_file(tmp_path / "walrelay.yaml", conf)
    request = await submit_backfill(
        db,
        "walrelay",
        slot="walrelay",
        destination="file",
        table="public.items",
        where=None,
        rate=None,
        chunk_size=chunk,
    )
    code, log1 = await run_walrelay(
        cfg, tmp_path / "run1.log", env={failpoints.ENV_VAR: f"{point}=crash@{nth}"}
    )
    assert code == failpoints.EXIT_CODE, f"exit {code}, expected a crash at {point}:\n{log1}"
    assert f"failpoint {point}: crash" in log1

    def backfill() -> tuple[str, int, Any]:
        with psycopg.connect(db, autocommit=True) as conn:
            row = conn.execute(
                "select status, rows_done, cursor from walrelay.backfills where id = %s",
                (request,),
            ).fetchone()
        assert row is not None
        return row[0], row[1], row[2]

    status, rows_done, cursor = backfill()
    assert (status, rows_done) == ("running", nth * chunk) and cursor is not None
    assert len(item_rows(read_jsonl(out))) == nth * chunk

    await run_walrelay_until_done(
        cfg, tmp_path / "run2.log", lambda: backfill()[0] == "done", what="the backfill done"
    )
    expected = [Change(uid=(k, 0, "read"), key=k, order=0) for k in range(1, rows + 1)]
    report = check(expected, item_rows(read_jsonl(out)))
    assert report.ok(), report.summary()
    assert backfill()[1] == rows


async def test_outbox_crash_after_partition_drop(db: str, tmp_path: Path) -> None:
    """Upkeep detached three expired outbox partitions, waited until the slot
    confirmed their events, dropped the first and crashed. The restart must
    find the other two by their detach comment and drop them (once confirmed),
    and the stream must hold every outbox event exactly once."""
    from datetime import UTC, datetime, timedelta

    from tests.integration.test_outbox import OUTBOX, PUB, add_partition, init, partitions
    from walrelay.outbox.partitions import utc_today

    point = failpoints.OUTBOX_AFTER_PARTITION_DROP
    await init(db, days_ahead=1)
    today = utc_today()
    expired = [today - timedelta(days=d) for d in (12, 11, 10)]
    for day in expired:
        add_partition(db, day)
    names = [OUTBOX.partition_name(day) for day in expired]
    execute(db, "select pg_create_logical_replication_slot('walrelay', 'pgoutput')")

    def publish(aggregate: int, version: int, day: Any) -> None:
        at = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
        execute(
            db,
            "insert into outbox (aggregate_type, aggregate_id, event_type, payload, created_at)"
            " values ('order', %s, 'Changed', jsonb_build_object('version', %s::int), %s)",
            params=(str(aggregate), version, at),
        )

    aggregates = 6
    for version, day in enumerate(expired):  # versions 0..2 in the expired days
        for a in range(aggregates):
            publish(a, version, day)
    out = tmp_path / "events.jsonl"
    conf = config_for(db, file_dest(out))
    conf["source"].update(tables=["public.outbox"], publication=PUB)
    conf["outbox"] = {"interval": 0.5, "days_ahead": 1, "retention_days": 7, "confirm_wait": 10}
    cfg = write_config_file(tmp_path / "walrelay.yaml", conf)

    def left() -> list[str]:
        return [n for n in names if one_value(db, "select to_regclass(%s)", ("public." + n,))]

    code, log1 = await run_walrelay(
        cfg, tmp_path / "run1.log", env={failpoints.ENV_VAR: f"{point}=crash"}
    )
    assert code == failpoints.EXIT_CODE, f"exit {code}, expected a crash at {point}:\n{log1}"
    assert f"failpoint {point}: crash" in log1
    # One dropped; the other two detached (out of the outbox), kept with their rows.
    assert len(left()) == 2 and not set(names) & partitions(db), (left(), partitions(db))

    for a in range(aggregates):  # version 3, today: streamed after the restart
        publish(a, len(expired), today)

    def observed() -> list[Delivery]:
        return [
            Delivery(
                uid=(e["record"]["aggregate_id"], e["record"]["payload"]["version"]),
                key=e["record"]["aggregate_id"],
                order=e["record"]["payload"]["version"],
                id=e["id"],
            )
            for e in read_jsonl(out)
            if e["table"] == "public.outbox"
        ]

    log2 = await run_walrelay_until_done(
        cfg,
        tmp_path / "run2.log",
        lambda: not left() and len(observed()) >= aggregates * (len(expired) + 1),
        what="the detached partitions dropped and every event delivered",
    )
    assert "dropped" in log2, log2
    expected = [
        Change(uid=(str(a), v), key=str(a), order=v)
        for a in range(aggregates)
        for v in range(len(expired) + 1)
    ]
    report = check(expected, observed())
    assert report.ok(), report.summary()
    assert not any(e["op"] == "delete" for e in read_jsonl(out))  # DDL only, no DELETEs
