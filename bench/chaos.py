"""Chaos: SIGKILL walrelay again and again under load, stop Redis once; judge the history.

One walrelay process streams a table to two destinations at once:

- ``pg``: the PostgreSQL sink into another database (exactly-once by
  construction), whose table carries an audit trigger recording every row
  write and delete it receives;
- ``hook``: the webhook sink to a receiver in this process, behind the Redis
  ledger (at-least-once, duplicates only from a crash between a send and its
  ledger write, always with the same ``webhook-id``);
- with ``--kafka``, also ``kafka``: the Kafka sink in ``exactly_once`` mode
  (transactional producer + checkpoint topic) to a one-node Kafka started for
  the run, topic ``chaos.public.items`` with several partitions.

A writer commits the workload while walrelay runs: transactions of 1-10
changes over ``--keys`` keys, each change carrying the key's next version
(insert version 1, updates +1, some deletes, re-inserts go on counting);
some transactions roll back (they write negative versions, which must never
appear downstream). Meanwhile walrelay is SIGKILLed at random moments
``--kills`` times and restarted each time, and Redis is stopped and restarted
once, half way. At the end walrelay runs until everything is confirmed
(``--until-lsn``) and the history checker (:mod:`walrelay.testing.checker`)
judges both destinations:

- PostgreSQL: target equals source, and the audit shows each (key, version)
  exactly once, in increasing order per key, nothing from aborted
  transactions;
- webhook: every change received at least once, every duplicate with the id
  it had the first time, duplicates counted;
- Kafka (``--kafka``): the topic read from the beginning with
  ``isolation.level=read_committed`` shows each (key, version) exactly once,
  in increasing order per key (each key in one partition, partition order =
  per-key order), nothing lost, no duplicates, nothing from aborted
  transactions; the records a ``read_uncommitted`` reader sees beyond those
  (written by transactions the crashes left open, then aborted) are counted;
- the slot's confirmed LSN, sampled all along, never went backwards.

    .venv/bin/python bench/chaos.py            # 100k changes, 1,000 keys, 20 kills
    .venv/bin/python bench/chaos.py --short    # 5k changes, 3 kills (the test suite's)
    .venv/bin/python bench/chaos.py --kafka    # the same, plus the Kafka destination

Prints the figures, writes JSON (default bench/results/chaos.json), exits 1
if any check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
import yaml
from aiohttp import web

from walrelay.model import format_lsn, parse_lsn
from walrelay.testing.checker import Change, Delivery, check
from walrelay.testing.kafka_reading import reading_consumer
from walrelay.testing.pgcluster import PgCluster, free_port, start_cluster
from walrelay.testing.servers import KafkaServer, RedisServer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chaos_sinks as sinks

KAFKA_PREFIX = "chaos"
KAFKA_TOPIC = f"{KAFKA_PREFIX}.public.items"
KAFKA_PARTITIONS = 4

TARGET_DDL = """
create table items (id int primary key, version int not null, payload text not null);
create table fence (id int primary key);
create table audit (n bigserial primary key, id int not null, version int not null, op text);
create function audit_fn() returns trigger language plpgsql as $$
begin
  if tg_op = 'DELETE' then
    insert into audit (id, version, op) values (old.id, old.version, 'D');
  else
    insert into audit (id, version, op) values (new.id, new.version, 'W');
  end if;
  return null;
end $$;
create trigger audit after insert or update or delete on items
  for each row execute function audit_fn();
"""


@dataclass
class Plan:
    changes: int
    keys: int
    kills: int
    seconds: float  # how long the writer spreads the workload over
    kill_after: tuple[float, float]  # seconds a walrelay run lives before SIGKILL
    redis_down: float  # seconds Redis stays stopped
    seed: int


@dataclass
class Workload:
    """What the writer committed and rolled back."""

    committed: list[Change] = field(default_factory=list)
    aborted: set[tuple[int, int, str]] = field(default_factory=set)
    transactions: int = 0
    rolled_back: int = 0
    done: bool = False


def uid_order(key: int, version: int, op: str) -> tuple[tuple[int, int, str], int]:
    """A change's identity and its place in the key's history: a delete of
    version v comes after the write of v and before the write of v + 1."""
    return (key, version, op), 2 * version + (1 if op == "D" else 0)


@dataclass
class WriterControl:
    """--all: lets the harness pause the writer between transactions (for a
    source restart, a slot invalidation) and tells it which table is the
    side table (renamed mid-run) and when to reconnect."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    side_table: str = "side"
    reconnect: bool = False
    side_next: int = 0
    side_committed: list[int] = field(default_factory=list)
    side_aborted: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.gate.set()

    @contextlib.asynccontextmanager
    async def paused(self) -> Any:
        """No transaction of the writer is open inside this block."""
        self.gate.clear()
        async with self.lock:
            try:
                yield
            finally:
                self.gate.set()


async def writer(dsn: str, plan: Plan, wl: Workload, control: WriterControl | None = None) -> None:
    rng = random.Random(plan.seed)
    version = [0] * (plan.keys + 1)
    exists = [False] * (plan.keys + 1)
    per_second = plan.changes / plan.seconds
    started = time.monotonic()
    written = 0
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        while written < plan.changes:
            if control is not None:
                await control.gate.wait()
                await control.lock.acquire()
                if control.reconnect:
                    control.reconnect = False
                    with contextlib.suppress(psycopg.Error):
                        await conn.close()
                    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
            size = min(rng.randint(1, 10), plan.changes - written)
            abort = rng.random() < 0.03
            pending: list[tuple[int, int, str]] = []
            undo: list[tuple[int, int, bool]] = []
            side: int | None = None
            try:
                async with conn.transaction():
                    if control is not None and rng.random() < 0.2:
                        control.side_next += 1
                        side = control.side_next
                        await conn.execute(
                            f"insert into {control.side_table} values (%s)",  # type: ignore[arg-type]
                            (side,),
                        )
                    for _ in range(size):
                        k = rng.randint(1, plan.keys)
                        undo.append((k, version[k], exists[k]))
                        if exists[k] and rng.random() < 0.03:
                            if abort:
                                # Visible only if an aborted change leaked.
                                await conn.execute(
                                    "update items set version = %s where id = %s",
                                    (-version[k], k),
                                )
                                pending.append((k, -version[k], "W"))
                            await conn.execute("delete from items where id = %s", (k,))
                            pending.append((k, -version[k] if abort else version[k], "D"))
                            exists[k] = False
                            continue
                        version[k] += 1
                        v = -version[k] if abort else version[k]
                        payload = f"k{k}v{version[k]}" + "x" * rng.randint(0, 200)
                        if exists[k]:
                            await conn.execute(
                                "update items set version = %s, payload = %s where id = %s",
                                (v, payload, k),
                            )
                        else:
                            await conn.execute(
                                "insert into items values (%s, %s, %s)", (k, v, payload)
                            )
                            exists[k] = True
                        pending.append((k, v, "W"))
                    if abort:
                        raise _Rollback
            except _Rollback:
                wl.rolled_back += 1
                for k, v, e in reversed(undo):
                    version[k], exists[k] = v, e
                wl.aborted.update(pending)
                if control is not None:
                    if side is not None:
                        control.side_aborted.add(side)
                    control.lock.release()
                continue
            except BaseException:
                if control is not None and control.lock.locked():
                    control.lock.release()
                raise
            if control is not None:
                if side is not None:
                    control.side_committed.append(side)
                control.lock.release()
            wl.transactions += 1
            for k, v, op in pending:
                uid, order = uid_order(k, v, op)
                wl.committed.append(Change(uid=uid, key=k, order=order))
            written += size
            # Pace the workload over plan.seconds.
            ahead = written / per_second - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
    finally:
        with contextlib.suppress(psycopg.Error):
            await conn.close()
    wl.done = True


class _Rollback(Exception):
    pass


class Receiver:
    """The webhook peer: records (webhook-id, body) in arrival order."""

    def __init__(self) -> None:
        self.port = free_port()
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.seen.append((request.headers["webhook-id"], body))
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class Walrelay:
    """walrelay as a child process we start, SIGKILL by its own pid, and restart."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.standby_starts = 0

    async def start(self, *extra: str) -> None:
        with open(self.log, "ab") as out:  # noqa: ASYNC230 - handed to the child
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "walrelay",
                "run",
                "--config",
                str(self.config),
                *extra,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        self.starts += 1
        if "--standby" in extra:
            self.standby_starts += 1

    async def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()

    async def wait(self, within: float) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), within)


async def slot_walsender(dsn: str) -> int | None:
    """The PID of the walsender streaming the slot (None: nobody streams it)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "select active_pid from pg_replication_slots where slot_name = 'walrelay'"
        )
        row = await cur.fetchone()
    return None if row is None or row[0] is None else int(row[0])


async def standby_ready(relay: Walrelay, within: float = 60) -> None:
    """Wait until ``relay`` (started with --standby) says it waits for the slot."""
    deadline = time.monotonic() + within
    while True:
        text = relay.log.read_text(errors="replace") if relay.log.exists() else ""
        if text.count("waiting to take over") >= relay.standby_starts:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the standby did not come up within {within:g}s; see {relay.log}")
        await asyncio.sleep(0.1)  # polling its log


async def time_takeover(dsn: str, old_walsender: int | None, killed_at: float) -> float:
    """Seconds from ``killed_at`` until another walsender streams the slot."""
    while True:
        pid = await slot_walsender(dsn)
        if pid is not None and pid != old_walsender:
            return time.monotonic() - killed_at
        if time.monotonic() - killed_at > 60:
            raise RuntimeError("no standby took the slot over within 60s")
        await asyncio.sleep(0.05)  # polling the slot


async def sample_slot(dsn: str, samples: list[int], stop: asyncio.Event) -> None:
    """Sample the slot's confirmed LSN until ``stop``; through source restarts."""
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                while not stop.is_set():
                    cur = await conn.execute(
                        "select confirmed_flush_lsn::text from pg_replication_slots "
                        "where slot_name = 'walrelay'"
                    )
                    row = await cur.fetchone()
                    if row is not None and row[0]:
                        samples.append(parse_lsn(row[0]))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.2)  # the sampling period
        except psycopg.OperationalError:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)  # the source is restarting


async def initial_snapshot_done(dsn: str, within: float) -> None:
    """Wait until the slot's initial snapshot is recorded ``done`` (state schema
    ``walrelay``, in the source database by default)."""
    deadline = time.monotonic() + within
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            status = None
            try:
                cur = await conn.execute(
                    "select status from walrelay.snapshots where slot = 'walrelay'"
                )
                row = await cur.fetchone()
                status = row[0] if row is not None else None
            except psycopg.errors.UndefinedTable:
                pass  # the state schema is not migrated yet
            if status == "done":
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"walrelay's initial snapshot not done within {within:g}s (status {status})"
                )
            await asyncio.sleep(0.1)  # polling the state table


def setup_databases(cluster: PgCluster) -> tuple[str, str]:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("create database source")
        conn.execute("create database target")
    source, target = cluster.dsn("source"), cluster.dsn("target")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(
            "create table items (id int primary key, version int not null, payload text not null)"
        )
        conn.execute("alter table items replica identity full")  # deletes carry the version
        conn.execute("create table fence (id int primary key)")
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(TARGET_DDL)
    return source, target


def write_config(
    path: Path,
    source: str,
    target: str,
    hook_url: str,
    redis_url: str,
    kafka_bootstrap: str | None = None,
) -> None:
    destinations: list[dict[str, Any]] = [
        {"name": "pg", "sink": {"type": "postgres", "dsn": target, "batch_size": 500}},
        {
            "name": "hook",
            "max_in_flight": 32,
            "sink": {"type": "webhook", "url": hook_url, "timeout": "5s"},
            "ledger": {"type": "redis", "url": redis_url, "timeout": "1s"},
            "retry": {"initial": 0.1, "max": 1.0},
        },
    ]
    if kafka_bootstrap is not None:
        destinations.append(
            {
                "name": "kafka",
                "tables": ["public.items"],
                "retry": {"initial": 0.1, "max": 1.0},
                "sink": {
                    "type": "kafka",
                    "mode": "exactly_once",
                    "bootstrap_servers": kafka_bootstrap,
                    "prefix": KAFKA_PREFIX,
                    "checkpoint_topic": f"{KAFKA_PREFIX}.checkpoints",
                    "partitions": KAFKA_PARTITIONS,
                    "delivery_timeout": 10,
                },
            }
        )
    config = {
        "source": {
            "dsn": source,
            "tables": ["public.items", "public.fence"],
            "status_interval": 1,
        },
        "destinations": destinations,
        "shutdown_timeout": 30,
        "log_level": "info",
        "http": {"enabled": False},
    }
    path.write_text(yaml.safe_dump(config))


@dataclass
class KafkaRecord:
    partition: int
    offset: int
    key: bytes | None
    id: str  # the ``id`` header
    envelope: dict[str, Any]


def read_topic(
    bootstrap: str, topic: str, isolation: str, within: float = 120.0
) -> list[KafkaRecord]:
    """Every record of ``topic`` from the beginning, partition after partition
    (each in offset order), read with ``isolation.level`` = ``isolation``.

    Called once nothing writes any more: reads each partition up to its high
    watermark (for read_committed: up to the last stable offset, which is the
    high watermark once every transaction is committed or aborted).
    """
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    consumer = reading_consumer(
        bootstrap, f"chaos-judge-{isolation}-{os.getpid()}", isolation=isolation, eof=True
    )
    try:
        metadata = consumer.list_topics(topic, timeout=30)
        partitions = sorted(metadata.topics[topic].partitions)
        high = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30, cached=False)[1]
            for p in partitions
        }
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        by_partition: dict[int, list[KafkaRecord]] = {p: [] for p in partitions}
        pending = {p for p in partitions if high[p] > 0}
        deadline = time.monotonic() + within
        while pending:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"kafka: partitions {sorted(pending)} of {topic} not read to their end "
                    f"within {within:g}s ({isolation})"
                )
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(f"kafka consumer error: {err}")
                p = msg.partition()
                assert p is not None
                position = consumer.position([TopicPartition(topic, p)])[0].offset
                if position >= high[p]:
                    pending.discard(p)
                continue
            p, offset, value = msg.partition(), msg.offset(), msg.value()
            assert p is not None and offset is not None and value is not None
            header = dict(msg.headers() or []).get("id")
            assert isinstance(header, bytes), f"record {p}@{offset} without an id header"
            key = msg.key()
            assert not isinstance(key, str)
            by_partition[p].append(
                KafkaRecord(p, offset, key, header.decode(), orjson.loads(value))
            )
        return [r for p in partitions for r in by_partition[p]]
    finally:
        consumer.close()


def change_of(envelope: dict[str, Any]) -> tuple[int, int, str]:
    """(key, version, op) of an envelope of the items table."""
    if envelope["op"] == "delete":
        return envelope["old"]["id"], envelope["old"]["version"], "D"
    return envelope["record"]["id"], envelope["record"]["version"], "W"


def judge_kafka(wl: Workload, bootstrap: str, log: Path) -> dict[str, Any]:
    committed = read_topic(bootstrap, KAFKA_TOPIC, "read_committed")
    uncommitted = read_topic(bootstrap, KAFKA_TOPIC, "read_uncommitted")
    obs = []
    partitions_of_key: dict[int, set[int]] = {}
    for r in committed:
        if r.id != r.envelope["id"]:
            raise AssertionError(f"kafka id header {r.id} differs from the body's id")
        k, v, op = change_of(r.envelope)
        if r.key != orjson.dumps({"id": k}):
            raise AssertionError(f"kafka record key {r.key!r} for key {k}")
        partitions_of_key.setdefault(k, set()).add(r.partition)
        uid, order = uid_order(k, v, op)
        obs.append(Delivery(uid=uid, key=k, order=order, id=r.id))
    # Partition after partition, each in offset order: with every key in one
    # partition, the checker's per-key order is the partition order.
    report = check(wl.committed, obs, aborted=wl.aborted)
    # The control: what a reader that does not skip aborted transactions would see.
    dirty = check(
        wl.committed,
        [
            Delivery(uid=uid, key=uid[0], order=order)
            for uid, order in (uid_order(*change_of(r.envelope)) for r in uncommitted)
        ],
        aborted=wl.aborted,
    )
    split = sum(1 for ps in partitions_of_key.values() if len(ps) > 1)
    text = log.read_text(errors="replace") if log.exists() else ""
    skipped = sum(int(n) for n in re.findall(r"skipped (\d+) replayed event", text))
    return {
        **report.to_json(),
        "messages": len(committed),
        "partitions": len({r.partition for r in committed}),
        "keys_in_several_partitions": split,
        "records_read_uncommitted": len(uncommitted),
        "records_in_aborted_transactions": len(uncommitted) - len(committed),
        "read_uncommitted_duplicates": dirty.duplicates,
        "replayed_events_skipped_by_checkpoint": skipped,
        "ok": report.ok() and split == 0,
        "summary": report.summary()
        + ("" if split == 0 else f"; {split} keys in several partitions"),
    }


def judge(
    wl: Workload,
    source: str,
    target: str,
    receiver: Receiver,
    samples: list[int],
) -> dict[str, Any]:
    with psycopg.connect(source) as conn:
        want = conn.execute("select id, version, md5(payload) from items order by id").fetchall()
    with psycopg.connect(target) as conn:
        got = conn.execute("select id, version, md5(payload) from items order by id").fetchall()
        audit = conn.execute("select id, version, op from audit order by n").fetchall()
        applied = conn.execute("select count(*) from walrelay.applied_events").fetchone()
    pg_obs = []
    for k, v, op in audit:
        uid, order = uid_order(k, v, op)
        pg_obs.append(Delivery(uid=uid, key=k, order=order))
    pg = check(wl.committed, pg_obs, aborted=wl.aborted, confirmed_lsns=samples)
    hook_obs = []
    for hook_id, body in receiver.seen:
        if body.get("table") != "public.items":
            continue
        if body["op"] == "delete":
            k, v, op = body["old"]["id"], body["old"]["version"], "D"
        else:
            k, v, op = body["record"]["id"], body["record"]["version"], "W"
        if hook_id != body["id"]:
            raise AssertionError(f"webhook-id {hook_id} differs from the body's id {body['id']}")
        uid, order = uid_order(k, v, op)
        hook_obs.append(Delivery(uid=uid, key=k, order=order, id=hook_id))
    # Duplicates are allowed (counted); per-key order is judged on first deliveries.
    hook = check(wl.committed, hook_obs, aborted=wl.aborted)
    return {
        "postgres": {
            **pg.to_json(),
            "target_equals_source": got == want,
            "rows": len(want),
            "audit_rows": len(audit),
            "applied_event_records_left": applied[0] if applied else None,
            "ok": pg.ok() and got == want,
            "summary": pg.summary(),
        },
        "webhook": {
            **hook.to_json(),
            "requests": len(receiver.seen),
            "ok": hook.ok(allow_duplicates=True),
            "summary": hook.summary(allow_duplicates=True),
        },
        "lsn_samples": len(samples),
        "lsn_backwards": len(pg.lsn_backwards),
    }


async def run(
    plan: Plan,
    workdir: Path,
    verbose: bool,
    with_kafka: bool = False,
    standby: bool = False,
) -> dict[str, Any]:
    rng = random.Random(plan.seed + 1)
    t0 = time.monotonic()

    def say(msg: str) -> None:
        if verbose:
            print(f"[{time.monotonic() - t0:7.1f}s] {msg}", flush=True)

    cluster = start_cluster({"wal_sender_timeout": "20s"})
    redis = RedisServer()
    receiver = Receiver()
    kafka = KafkaServer() if with_kafka else None
    relay: Walrelay | None = None
    # --standby: a second walrelay waits (run --standby) and takes over at each kill.
    spare: Walrelay | None = None
    takeovers: list[float] = []
    try:
        redis.start()
        if kafka is not None:
            await kafka.astart()
            say(f"Kafka up at {kafka.bootstrap} (pid {kafka.pid})")
        await receiver.start()
        source, target = setup_databases(cluster)
        config = workdir / "walrelay.yaml"
        write_config(
            config,
            source,
            target,
            receiver.url,
            redis.url,
            kafka.bootstrap if kafka is not None else None,
        )
        relay = Walrelay(config, workdir / "walrelay.log")
        wl = Workload()
        samples: list[int] = []
        stop_sampling = asyncio.Event()
        sampler = asyncio.create_task(sample_slot(source, samples, stop_sampling))
        await relay.start()
        # Let the first run create the slot and deliver its (empty) initial snapshot
        # before the workload starts: a crash before the snapshot is recorded done
        # makes the next run drop the slot and snapshot again (walrelay.engine),
        # turning the changes made meanwhile into `read` rows (their history gone).
        await initial_snapshot_done(source, within=60)
        say("walrelay streaming, initial snapshot done; workload starts")
        if standby:
            spare = Walrelay(config, workdir / "walrelay-standby.log")
            await spare.start("--standby")
        write_task = asyncio.create_task(writer(source, plan, wl))
        kills = 0
        redis_outage = 0.0
        run_lives: list[float] = []
        while kills < plan.kills:
            life = rng.uniform(*plan.kill_after)
            await asyncio.sleep(life)  # a random moment to crash at
            if spare is not None:
                await standby_ready(spare)  # a standby that is up, as in production
            walsender = await slot_walsender(source) if spare is not None else None
            await relay.kill()
            killed_at = time.monotonic()
            kills += 1
            run_lives.append(life)
            if spare is not None:
                # The standby takes over; the killed one comes back as the standby.
                takeovers.append(await time_takeover(source, walsender, killed_at))
                say(f"SIGKILL #{kills}: the standby took over in {takeovers[-1]:.2f}s")
                relay, spare = spare, relay
                await spare.start("--standby")
                continue
            say(
                f"SIGKILL #{kills} after {life:.2f}s; {len(wl.committed)} changes committed,"
                f" {len(receiver.seen)} webhooks received"
            )
            if kills == max(1, plan.kills // 2):
                await asyncio.to_thread(redis.stop, remove=False)
                await relay.start()
                say(f"Redis stopped for {plan.redis_down:.1f}s")
                down = time.monotonic()
                await asyncio.sleep(plan.redis_down)  # the outage
                await asyncio.to_thread(redis.restart)
                redis_outage = time.monotonic() - down
                say("Redis restarted")
                continue
            await relay.start()
        await write_task
        with psycopg.connect(source, autocommit=True) as conn:
            row = conn.execute("select pg_current_wal_insert_lsn()::text").fetchone()
            assert row is not None
            until = parse_lsn(row[0])
            conn.execute("insert into fence values (1)")  # commits after `until`
        say(f"workload done ({len(wl.committed)} changes); final run until {format_lsn(until)}")
        await relay.kill()
        if spare is not None:
            await spare.kill()
        await relay.start("--until-lsn", format_lsn(until))
        code = await relay.wait(within=900)
        if code != 0:
            raise RuntimeError(f"the final walrelay run exited {code}; see {relay.log}")
        await asyncio.sleep(0.5)  # one more LSN sample after the final confirm
        stop_sampling.set()
        await sampler
        elapsed = time.monotonic() - t0
        say("judging")
        verdict = judge(wl, source, target, receiver, samples)
        if kafka is not None:
            verdict["kafka"] = await asyncio.to_thread(judge_kafka, wl, kafka.bootstrap, relay.log)
        return {
            "plan": {
                "changes": plan.changes,
                "keys": plan.keys,
                "kills": plan.kills,
                "seed": plan.seed,
            },
            "workload": {
                "changes_committed": len(wl.committed),
                "transactions": wl.transactions,
                "transactions_rolled_back": wl.rolled_back,
                "aborted_changes": len(wl.aborted),
                "deletes": sum(1 for c in wl.committed if c.uid[2] == "D"),  # type: ignore[index]
            },
            "chaos": {
                "sigkills": kills,
                "walrelay_starts": relay.starts,
                "mean_run_seconds_before_kill": round(sum(run_lives) / max(1, len(run_lives)), 2),
                "redis_outage_seconds": round(redis_outage, 2),
                **(
                    {
                        "standby_takeovers": len(takeovers),
                        "takeover_seconds_max": round(max(takeovers, default=0.0), 2),
                        "takeover_seconds_mean": round(sum(takeovers) / max(1, len(takeovers)), 2),
                    }
                    if standby
                    else {}
                ),
            },
            **verdict,
            "seconds": round(elapsed, 1),
            "ok": verdict["postgres"]["ok"]
            and verdict["webhook"]["ok"]
            and verdict.get("kafka", {"ok": True})["ok"]
            and verdict["lsn_backwards"] == 0,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        }
    finally:
        if relay is not None:
            await relay.kill()
        if spare is not None:
            await spare.kill()
        await receiver.stop()
        try:
            redis.stop()
        finally:
            try:
                if kafka is not None:
                    kafka.stop()  # by its own pid
            finally:
                cluster.stop()


# -- --all: every sink at once, with database, broker and link faults ------------------

# Commits must survive `pg_ctl -m immediate` (the test clusters' default is off):
# a change the writer saw committed, or the target acknowledged, is durable.
DURABLE = {"synchronous_commit": "on"}
ALL_SOURCE_SETTINGS = {
    **DURABLE,
    "wal_sender_timeout": "10s",
    # Small enough that the harness can invalidate the slot on purpose (once),
    # large enough that an outage of a few seconds never does.
    "max_slot_wal_keep_size": "48MB",
    "wal_keep_size": "0",
    "max_wal_size": "64MB",
}

# The faults of one --all run, spread over the walrelay SIGKILLs in this order.
ALL_FAULTS = (
    "kill_kafka",
    "source_restart",
    "kill_nats",
    "cut_source",
    "kill_rabbitmq",
    "rename",
    "source_restart",
    "kill_redis_streams",
    "cut_webhook",
    "ledger_lost",
    "target_restart",
    "cut_target",
    "invalidate_slot",
    "source_restart",
)


@dataclass
class AllRun:
    """What happened during an --all run, for the report."""

    faults: list[dict[str, Any]] = field(default_factory=list)
    resnapshot_audit: tuple[int, int] | None = None  # audit rows written by the re-snapshot
    resnapshot_rows: int = 0


def setup_all_databases(source_cluster: PgCluster, target_cluster: PgCluster) -> tuple[str, str]:
    with psycopg.connect(source_cluster.dsn(), autocommit=True) as conn:
        conn.execute("create database source")
    with psycopg.connect(target_cluster.dsn(), autocommit=True) as conn:
        conn.execute("create database target")
    source, target = source_cluster.dsn("source"), target_cluster.dsn("target")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(
            "create table items (id int primary key, version int not null, payload text not null)"
        )
        conn.execute("alter table items replica identity full")
        conn.execute("create table fence (id int primary key)")
        conn.execute("create table side (id int primary key)")
        conn.execute("create table filler (id int, pad text)")  # never published
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(TARGET_DDL)
    return source, target


def via(dsn: str, port: int) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(dsn, host="127.0.0.1", port=port)


async def wait_confirmed(dsn: str, lsn: int, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(psycopg.OperationalError):
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                cur = await conn.execute(
                    "select confirmed_flush_lsn::text from pg_replication_slots "
                    "where slot_name = 'walrelay'"
                )
                row = await cur.fetchone()
                if row is not None and row[0] and parse_lsn(row[0]) >= lsn:
                    return
        if time.monotonic() > deadline:
            raise RuntimeError(f"slot not confirmed past {format_lsn(lsn)} within {within:g}s")
        await asyncio.sleep(0.2)  # polling the slot


def invalidate_slot(dsn: str) -> int:
    """Write unpublished WAL until the stopped slot is invalidated; returns rounds."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n in range(1, 40):
            conn.execute(
                "insert into filler select g, repeat('x', 500) from generate_series(1, 20000) g"
            )
            conn.execute("truncate filler")
            conn.execute("select pg_switch_wal()")
            conn.execute("checkpoint")
            row = conn.execute(
                "select wal_status from pg_replication_slots where slot_name = 'walrelay'"
            ).fetchone()
            if row is None or row[0] == "lost":
                return n
    raise RuntimeError("the slot was not invalidated")


def snapshot_point(dsn: str) -> tuple[str | None, str | None]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "select consistent_point::text, status from walrelay.snapshots where slot = 'walrelay'"
        ).fetchone()
    return (None, None) if row is None else (row[0], row[1])


def backfills_done(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "select count(*) from walrelay.backfills where status in ('pending', 'running')"
        ).fetchone()
    return row is not None and row[0] == 0


def audit_high(target: str) -> int:
    with psycopg.connect(target, autocommit=True) as conn:
        row = conn.execute("select coalesce(max(n), 0) from audit").fetchone()
    return int(row[0]) if row else 0


def deliveries_of(seen: list[tuple[dict[str, Any], str | None]]) -> tuple[list[Delivery], int]:
    """The items changes among ``seen`` (re-snapshot reads and truncates apart)."""
    out: list[Delivery] = []
    snapshot_events = 0
    for envelope, _broker_id in seen:
        if envelope.get("table") not in (None, "public.items") or envelope["op"] == "message":
            continue
        if envelope["op"] in ("read", "truncate"):
            snapshot_events += 1
            continue
        uid, order = uid_order(*change_of(envelope))
        out.append(Delivery(uid=uid, key=uid[0], order=order, id=envelope["id"]))
    return out, snapshot_events


async def run_all(plan: Plan, workdir: Path, verbose: bool) -> dict[str, Any]:
    from walrelay.testing.proxy import TcpProxy
    from walrelay.testing.servers import NatsServer, RabbitMQServer

    rng = random.Random(plan.seed + 1)
    t0 = time.monotonic()

    def say(msg: str) -> None:
        if verbose:
            print(f"[{time.monotonic() - t0:7.1f}s] {msg}", flush=True)

    ledger_redis = RedisServer(appendfsync="always")
    streams_redis = RedisServer(appendfsync="always")
    # A loaded machine can take minutes to bring Kafka or RabbitMQ back.
    nats_server = NatsServer(startup_timeout=240)
    rabbit, kafka = RabbitMQServer(startup_timeout=240), KafkaServer(startup_timeout=240)
    brokers = [ledger_redis, streams_redis, nats_server, rabbit, kafka]
    clusters: list[PgCluster] = []
    receiver = Receiver()
    relay: Walrelay | None = None
    proxies: list[TcpProxy] = []
    run_info = AllRun()
    try:
        source_cluster, target_cluster, *_ = await asyncio.gather(
            asyncio.to_thread(start_cluster, ALL_SOURCE_SETTINGS),
            asyncio.to_thread(start_cluster, DURABLE),
            *(b.astart() for b in brokers),
        )
        clusters = [source_cluster, target_cluster]
        say("servers up: 2 PostgreSQL clusters, Kafka, NATS, RabbitMQ, 2 Redis")
        await receiver.start()
        source, target = setup_all_databases(source_cluster, target_cluster)
        source_proxy = await TcpProxy(source_cluster.port).start()
        target_proxy = await TcpProxy(target_cluster.port).start()
        hook_proxy = await TcpProxy(receiver.port).start()
        proxies = [source_proxy, target_proxy, hook_proxy]
        await sinks.bind_rabbitmq(rabbit.url)
        await asyncio.to_thread(rabbit.sync_metadata)  # the queue survives a kill at once
        out_file = workdir / "events.jsonl"
        config = workdir / "walrelay.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "source": {
                        "dsn": via(source, source_proxy.port),
                        "tables": ["public.items", "public.fence", "public.side"],
                        "status_interval": 1,
                        "on_slot_lost": "resnapshot",
                        "watch_interval": 1,
                    },
                    "destinations": sinks.destinations(
                        file=out_file,
                        target=via(target, target_proxy.port),
                        hook_url=f"http://127.0.0.1:{hook_proxy.port}/hook",
                        ledger_url=ledger_redis.url,
                        kafka=kafka.bootstrap,
                        nats=nats_server.url,
                        redis=streams_redis.url,
                        rabbitmq=rabbit.url,
                    ),
                    "shutdown_timeout": 30,
                    "log_level": "info",
                    "http": {"enabled": False},
                }
            )
        )
        relay = Walrelay(config, workdir / "walrelay.log")
        wl = Workload()
        control = WriterControl()
        samples: list[int] = []
        restarts_at: list[int] = []
        stop_sampling = asyncio.Event()
        sampler = asyncio.create_task(sample_slot(source, samples, stop_sampling))
        await relay.start()
        await initial_snapshot_done(source, within=120)
        say("walrelay streaming to 7 sinks; workload starts")
        write_task = asyncio.create_task(writer(source, plan, wl, control))
        background: list[asyncio.Task[Any]] = []

        def fault(name: str, **info: Any) -> None:
            run_info.faults.append({"fault": name, "at": round(time.monotonic() - t0, 1), **info})
            say(f"fault: {name} {info if info else ''}")

        async def kill_broker(name: str, server: Any, empty: bool = False) -> None:
            started = time.monotonic()
            await asyncio.to_thread(server.kill)
            if empty:  # the ledger lost: restarted without its data
                data = server.root / "data"
                shutil.rmtree(data)
                data.mkdir()
            await asyncio.sleep(1.0)  # the outage
            await server.arestart()
            fault(name, down_seconds=round(time.monotonic() - started, 1))

        async def cut(name: str, proxy: TcpProxy) -> None:
            proxy.cut()
            await asyncio.sleep(0.5)  # connections reset, new ones refused
            proxy.blackhole()
            await asyncio.sleep(plan.redis_down)  # black-holed
            proxy.restore()
            fault(name, blackhole_seconds=plan.redis_down)

        async def do(name: str) -> None:
            assert relay is not None
            if name == "kill_kafka":
                background.append(asyncio.create_task(kill_broker(name, kafka)))
            elif name == "kill_nats":
                background.append(asyncio.create_task(kill_broker(name, nats_server)))
            elif name == "kill_rabbitmq":
                background.append(asyncio.create_task(kill_broker(name, rabbit)))
            elif name == "kill_redis_streams":
                background.append(asyncio.create_task(kill_broker(name, streams_redis)))
            elif name == "ledger_lost":
                background.append(asyncio.create_task(kill_broker(name, ledger_redis, empty=True)))
            elif name == "cut_source":
                background.append(asyncio.create_task(cut(name, source_proxy)))
            elif name == "cut_webhook":
                background.append(asyncio.create_task(cut(name, hook_proxy)))
            elif name == "cut_target":
                background.append(asyncio.create_task(cut(name, target_proxy)))
            elif name == "source_restart":
                async with control.paused():
                    await asyncio.to_thread(source_cluster.restart, mode="immediate")
                    control.reconnect = True
                    # A crash restart may take the slot back to the position
                    # saved at the last checkpoint (PostgreSQL's own doing):
                    # LSN samples are compared within each server lifetime.
                    restarts_at.append(len(samples))
                fault(name)
            elif name == "target_restart":
                await asyncio.to_thread(target_cluster.restart, mode="immediate")
                fault(name)
            elif name == "rename":
                async with control.paused():
                    with psycopg.connect(source, autocommit=True) as conn:
                        conn.execute("alter table side rename to side_renamed")
                    control.side_table = "side_renamed"
                fault(name)
            elif name == "invalidate_slot":
                for task in background:
                    await task  # every broker back, every link restored
                async with control.paused():
                    with psycopg.connect(source, autocommit=True) as conn:
                        row = conn.execute("select pg_current_wal_lsn()::text").fetchone()
                    assert row is not None
                    await wait_confirmed(source, parse_lsn(row[0]), within=300)
                    await relay.kill()
                    old_point, _ = snapshot_point(source)
                    before = audit_high(target)
                    rounds = await asyncio.to_thread(invalidate_slot, source)
                    await relay.start()
                    deadline = time.monotonic() + 180
                    while True:
                        # Done, or (killed meanwhile) resumed as backfills, all finished.
                        point, status = snapshot_point(source)
                        if point != old_point and (
                            status == "done" or (status == "resumed" and backfills_done(source))
                        ):
                            break
                        if time.monotonic() > deadline:
                            raise RuntimeError("the re-snapshot did not finish within 180s")
                        await asyncio.sleep(0.2)  # polling the state table
                    run_info.resnapshot_audit = (before, audit_high(target))
                    with psycopg.connect(source) as conn:
                        count = conn.execute("select count(*) from items").fetchone()
                    run_info.resnapshot_rows = int(count[0]) if count else 0
                fault(name, wal_rounds=rounds, rows_resnapshotted=run_info.resnapshot_rows)

        # The faults spread evenly over the kills, each right after a restart.
        at_kill: dict[int, list[str]] = {}
        for i, name in enumerate(ALL_FAULTS):
            at = max(1, round((i + 1) * plan.kills / (len(ALL_FAULTS) + 1)))
            at_kill.setdefault(at, []).append(name)
        kills = 0
        exits: list[int] = []

        async def supervise() -> None:
            """Restart=always: a supervisor starts walrelay again whenever it stops
            by itself (a sink unreachable at start no longer stops it: the
            destination waits, walrelay.engine.waiting_sink)."""
            assert relay is not None
            while True:
                await asyncio.sleep(1.0)  # the supervisor's restart delay
                proc = relay.proc
                if proc is not None and proc.returncode is not None:
                    exits.append(proc.returncode)
                    await relay.start()

        supervisor = asyncio.create_task(supervise())
        while kills < plan.kills:
            await asyncio.sleep(rng.uniform(*plan.kill_after))  # a random moment to crash at
            await relay.kill()
            kills += 1
            await relay.start()
            for name in at_kill.get(kills, []):
                await do(name)
            if kills % 10 == 0:
                say(f"{kills} SIGKILLs; {len(wl.committed)} changes committed")
        await write_task
        for task in background:
            await task
        supervisor.cancel()
        with psycopg.connect(source, autocommit=True) as conn:
            row = conn.execute("select pg_current_wal_insert_lsn()::text").fetchone()
            assert row is not None
            until = parse_lsn(row[0])
            conn.execute("insert into fence values (1)")
        say(f"workload done ({len(wl.committed)} changes); final run until {format_lsn(until)}")
        await relay.kill()
        await relay.start("--until-lsn", format_lsn(until))
        code = await relay.wait(within=900)
        if code != 0:
            raise RuntimeError(f"the final walrelay run exited {code}; see {relay.log}")
        await asyncio.sleep(0.5)  # one more LSN sample after the final confirm
        stop_sampling.set()
        await sampler
        say("judging")
        verdict = await judge_all(
            wl,
            control,
            run_info,
            (source, target),
            receiver,
            (samples, restarts_at),
            out_file,
            (kafka.bootstrap, nats_server.url, streams_redis.url, rabbit.url),
        )
        return {
            "mode": "all",
            "plan": {"changes": plan.changes, "keys": plan.keys, "kills": plan.kills},
            "workload": {
                "changes_committed": len(wl.committed),
                "transactions": wl.transactions,
                "transactions_rolled_back": wl.rolled_back,
                "side_rows": len(control.side_committed),
            },
            "chaos": {
                "sigkills": kills,
                "walrelay_starts": relay.starts,
                "walrelay_exits_by_itself": len(exits),
                "faults": run_info.faults,
            },
            **verdict,
            "seconds": round(time.monotonic() - t0, 1),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        }
    finally:
        if relay is not None:
            await relay.kill()
        for proxy in proxies:
            await proxy.stop()
        await receiver.stop()
        for server in brokers:
            with contextlib.suppress(Exception):
                server.stop()  # by its own pid
        for cluster in clusters:
            cluster.stop()


async def judge_all(
    wl: Workload,
    control: WriterControl,
    run_info: AllRun,
    databases: tuple[str, str],
    receiver: Receiver,
    lsns: tuple[list[int], list[int]],
    out_file: Path,
    brokers: tuple[str, str, str, str],
) -> dict[str, Any]:
    """Per sink, what its reader sees, judged by the checker (module docstring)."""

    source, target = databases
    kafka_bootstrap, nats_url, redis_url, rabbit_url = brokers
    with psycopg.connect(source) as conn:
        want = conn.execute("select id, version, md5(payload) from items order by id").fetchall()
    with psycopg.connect(target) as conn:
        got = conn.execute("select id, version, md5(payload) from items order by id").fetchall()
        audit = conn.execute("select n, id, version, op from audit order by n").fetchall()
    low, high = run_info.resnapshot_audit or (0, 0)
    pg_obs = []
    for n, k, v, op in audit:
        if low < n <= high:
            continue  # written by the re-snapshot after the slot was invalidated
        uid, order = uid_order(k, v, op)
        pg_obs.append(Delivery(uid=uid, key=k, order=order))
    file_seen = sinks.read_file(out_file)
    kafka_seen = [
        (r.envelope, r.id)
        for r in await asyncio.to_thread(read_topic, kafka_bootstrap, KAFKA_TOPIC, "read_committed")
    ]
    observed: dict[str, tuple[list[Delivery], int]] = {
        "file": deliveries_of(file_seen),
        "pg": (pg_obs, high - low),
        "webhook": deliveries_of([(b, h) for h, b in receiver.seen]),
        "kafka": deliveries_of(kafka_seen),
        "nats": deliveries_of(await sinks.read_nats(nats_url)),
        "redis": deliveries_of(await sinks.read_redis(redis_url)),
        "rabbitmq": deliveries_of(await sinks.read_rabbitmq(rabbit_url)),
    }
    table: dict[str, dict[str, Any]] = {}
    for name, (obs, snapshot_events) in observed.items():
        report = check(wl.committed, obs, aborted=wl.aborted)
        transactional = sinks.TRANSACTIONAL[name]
        ok = report.ok(allow_duplicates=not transactional)
        table[name] = {
            "transactional": transactional,
            "delivered": report.observed,
            "lost": len(report.lost),
            "duplicates": report.duplicates,
            "duplicates_with_another_id": len(report.id_changed),
            "reordered": len(report.reordered),
            "aborted": len(report.aborted),
            "resnapshot_events": snapshot_events,
            "ok": ok,
            "summary": report.summary(allow_duplicates=not transactional),
        }
    # The side table, renamed mid-run: every committed row once in the file.
    side_obs = [
        Delivery(uid=e["record"]["id"], key=e["record"]["id"], order=0, id=e["id"])
        for e, _ in file_seen
        if e.get("table") in ("public.side", "public.side_renamed") and e["op"] == "insert"
    ]
    side = check(
        [Change(uid=i, key=i, order=0) for i in control.side_committed],
        side_obs,
        aborted=[Change(uid=i, key=i, order=0) for i in control.side_aborted],
    )
    renamed_events = sum(1 for e, _ in file_seen if e.get("table") == "public.side_renamed")
    samples, restarts_at = lsns
    bounds = [0, *restarts_at, len(samples)]
    backwards = [
        pair
        for lo, hi in itertools.pairwise(bounds)
        for pair in check([], [], confirmed_lsns=samples[lo:hi]).lsn_backwards
    ]
    rewinds = sum(
        1 for at in restarts_at if 0 < at < len(samples) and samples[at] < samples[at - 1]
    )
    ok = (
        all(row["ok"] for row in table.values())
        and got == want
        and side.ok()
        and renamed_events > 0
        and not backwards
    )
    return {
        "sinks": table,
        "postgres_target_equals_source": got == want,
        "renamed_table": {
            "rows": len(control.side_committed),
            "events_after_rename": renamed_events,
            "ok": side.ok(),
            "summary": side.summary(),
        },
        "lsn_samples": len(samples),
        "lsn_backwards": len(backwards),
        "lsn_backwards_pairs": [(format_lsn(a), format_lsn(b)) for a, b in backwards[:10]],
        "slot_rewound_by_source_crash_restarts": rewinds,
        "ok": ok,
    }


def print_all(result: dict[str, Any]) -> None:
    wl = result["workload"]
    print(
        f"chaos --all: {wl['changes_committed']} changes ({wl['transactions']} transactions, "
        f"{wl['transactions_rolled_back']} rolled back), {result['chaos']['sigkills']} SIGKILLs "
        f"of walrelay, {len(result['chaos']['faults'])} other faults; {result['seconds']}s"
    )
    print(
        f"  {'sink':10} {'delivered':>9} {'lost':>5} {'dup':>5} {'dup/other id':>12} "
        f"{'reordered':>9} {'aborted':>7} {'resnap':>6}  ok"
    )
    for name, row in result["sinks"].items():
        print(
            f"  {name:10} {row['delivered']:>9} {row['lost']:>5} {row['duplicates']:>5} "
            f"{row['duplicates_with_another_id']:>12} {row['reordered']:>9} {row['aborted']:>7} "
            f"{row['resnapshot_events']:>6}  {'OK' if row['ok'] else 'FAILED: ' + row['summary']}"
        )
    side = result["renamed_table"]
    print(
        f"  renamed table: {side['events_after_rename']} events after the rename; {side['summary']}"
    )
    print(
        f"  PostgreSQL target equals source: {result['postgres_target_equals_source']}; "
        f"confirmed LSN: {result['lsn_samples']} samples, {result['lsn_backwards']} backwards "
        "(compared within each source server lifetime; "
        f"{result['slot_rewound_by_source_crash_restarts']} rewound by a crash restart)"
    )
    print("  verdict: " + ("OK" if result["ok"] else "FAILED"))


def main() -> int:
    ap = argparse.ArgumentParser(
        description="SIGKILL walrelay under load; check exactly-once (PostgreSQL) and "
        "at-least-once with stable ids (webhook + Redis ledger)."
    )
    ap.add_argument("--short", action="store_true", help="5k changes, 3 kills (the test suite)")
    ap.add_argument("--changes", type=int)
    ap.add_argument("--keys", type=int)
    ap.add_argument("--kills", type=int)
    ap.add_argument("--seconds", type=float, help="spread the workload over this long")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--kafka",
        action="store_true",
        help="also stream to a Kafka started for the run (exactly_once mode) and judge it",
    )
    ap.add_argument(
        "--all",
        action="store_true",
        help="every sink at once, with database, broker and link faults (see ALL_FAULTS)",
    )
    ap.add_argument(
        "--standby",
        action="store_true",
        help="a second walrelay runs --standby and takes over at each kill (timed)",
    )
    ap.add_argument("--json", help="default: bench/results/chaos.json (long mode)")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--keep", help="run in this directory and keep it (logs, config)")
    args = ap.parse_args()
    if args.all:
        # redis_down: how long each link cut stays black-holed (> wal_sender_timeout
        # in the full run).
        if args.short:
            plan = Plan(3_000, 200, 15, 25.0, (0.5, 1.5), 2.0, args.seed)
        else:
            plan = Plan(100_000, 1_000, 100, 240.0, (1.0, 3.0), 12.0, args.seed)
    elif args.short:
        plan = Plan(5_000, 250, 3, 8.0, (0.8, 2.5), 1.5, args.seed)
    else:
        plan = Plan(100_000, 1_000, 20, 75.0, (1.0, 5.0), 4.0, args.seed)
    if args.changes:
        plan.changes = args.changes
    if args.keys:
        plan.keys = args.keys
    if args.kills is not None:
        plan.kills = args.kills
    if args.seconds:
        plan.seconds = args.seconds
    with (
        contextlib.nullcontext(args.keep)
        if args.keep
        else tempfile.TemporaryDirectory(prefix="walrelay-chaos-")
    ) as tmp:
        Path(tmp).mkdir(parents=True, exist_ok=True)
        try:
            if args.all:
                result = asyncio.run(run_all(plan, Path(tmp), verbose=not args.quiet))
            else:
                result = asyncio.run(
                    run(
                        plan,
                        Path(tmp),
                        verbose=not args.quiet,
                        with_kafka=args.kafka,
                        standby=args.standby,
                    )
                )
        except BaseException:
            log = Path(tmp) / "walrelay.log"
            if log.exists():
                sys.stderr.write(log.read_text(errors="replace")[-4000:])
            raise
    default_json = "bench/results/chaos-all.json" if args.all else "bench/results/chaos.json"
    out = Path(args.json or (default_json if not args.short else ""))
    if args.all:
        print_all(result)
        if str(out) not in ("", "."):
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
            print(f"wrote {out}")
        return 0 if result["ok"] else 1
    pg, hook = result["postgres"], result["webhook"]
    print(
        f"chaos: {result['workload']['changes_committed']} changes "
        f"({result['workload']['transactions']} transactions, "
        f"{result['workload']['transactions_rolled_back']} rolled back) over {plan.keys} keys; "
        f"{result['chaos']['sigkills']} SIGKILLs, Redis down "
        f"{result['chaos']['redis_outage_seconds']}s; {result['seconds']}s"
    )
    print(
        f"  postgres: target equals source: {pg['target_equals_source']}; "
        f"audit {pg['audit_rows']} rows: {pg['summary']}"
    )
    print(
        f"  webhook:  {hook['requests']} requests: {hook['summary']}; "
        f"duplicates {hook['duplicates']}"
    )
    if "kafka" in result:
        kafka = result["kafka"]
        print(
            f"  kafka:    {kafka['messages']} messages (read_committed, "
            f"{kafka['partitions']} partitions): {kafka['summary']}; "
            f"duplicates {kafka['duplicates']}, reordered {kafka['reordered']}, "
            f"lost {kafka['lost']}; {kafka['records_in_aborted_transactions']} records "
            f"in aborted transactions ({kafka['read_uncommitted_duplicates']} duplicates "
            f"for a read_uncommitted reader), {kafka['replayed_events_skipped_by_checkpoint']} "
            "replayed events skipped by the checkpoint"
        )
    if "standby_takeovers" in result["chaos"]:
        c = result["chaos"]
        print(
            f"  standby:  {c['standby_takeovers']} takeovers, {c['takeover_seconds_mean']}s mean, "
            f"{c['takeover_seconds_max']}s max"
        )
    print(f"  confirmed LSN: {result['lsn_samples']} samples, {result['lsn_backwards']} backwards")
    print("  verdict: " + ("OK" if result["ok"] else "FAILED"))
    if str(out) not in ("", "."):
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
