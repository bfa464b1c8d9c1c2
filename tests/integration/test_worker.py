"""Scale-out against a real Kafka (KRaft) broker and PostgreSQL: the relay's
partitioner, and `walrelay worker` processes sharing a 12-partition topic
through a SIGKILL and a late join."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import psycopg
import pytest
from click.testing import CliRunner
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from tests.factories import make_event
from tests.integration.support import (
    WebhookReceiver,
    execute,
    make_config,
    running_engine,
    wait_for,
    write_config_file,
)
from tests.integration.worker_support import kafka, produce, running_worker, target_db
from walrelay.cli.main import main
from walrelay.config import HttpConfig, KafkaSinkConfig
from walrelay.errors import ConfigError
from walrelay.sinks.base import SinkContext
from walrelay.sinks.kafka import KafkaSink, message_key
from walrelay.testing.kafka_reading import reading_consumer
from walrelay.testing.pgcluster import free_port
from walrelay.testing.servers import KafkaServer
from walrelay.testing.worker_group import quick_group
from walrelay.worker.config import load_worker_config, parse_worker_config
from walrelay.worker.partitioner import partition_for
from walrelay.worker.runner import Worker
from walrelay.worker.status import fetch_worker_status

__all__ = ["kafka", "target_db"]  # the fixtures, used here

pytestmark = pytest.mark.servers

PARTITIONS = 12


PROCESS_START = 120.0
"""Seconds a test allows a `walrelay worker` process to start and join its group.
Each imports the whole engine first: measured 10-30 s per process (and over 40 s
for two at once) on this project's 2 shared cores under load (load average 10-15);
the CI machine is slower still. A deadline, not a pause: waits end when ready."""


def _read_all(bootstrap: str, topic: str, expected: int) -> list[Any]:
    consumer = reading_consumer(bootstrap)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    out: list[Any] = []
    try:
        for _ in range(200):
            out += [m for m in consumer.consume(500, timeout=0.2) if m.error() is None]
            if len(out) >= expected:
                break
    finally:
        consumer.close()
    return out


async def test_relay_partitions_keys_like_the_java_client(kafka: KafkaServer) -> None:
    """librdkafka's murmur2_random (the relay's setting) puts every key where
    Kafka's Java partitioner would: toPositive(murmur2(key)) % partitions."""
    prefix = f"p{uuid.uuid4().hex[:6]}"
    sink = KafkaSink(
        KafkaSinkConfig(
            bootstrap_servers=kafka.bootstrap,
            mode="at_least_once",
            prefix=prefix,
            partitions=PARTITIONS,
        ),
        SinkContext(slot="s", destination="d", tables=("public.t",)),
    )
    events = [
        make_event(100 + i, 0, keys=(f"k{i}",), body=b'{"key": {"id": %d}}' % i) for i in range(200)
    ]
    await sink.open()
    try:
        await sink.deliver(events)
    finally:
        await sink.close()
    records = _read_all(kafka.bootstrap, f"{prefix}.public.t", len(events))
    assert len(records) == len(events)
    used = set()
    for record in records:
        assert record.partition() == partition_for(record.key(), PARTITIONS), record.key()
        used.add(record.partition())
    assert used == set(range(PARTITIONS))
    assert message_key(events[7], "public.t") == b'{"id":7}'


# --------------------------------------------------------------------------- workers


@contextlib.contextmanager
def worker_process(
    config: Path, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "walrelay", "worker", "--config", str(config)],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    out.close()
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


async def test_three_workers_through_a_kill_and_a_late_join(
    kafka: KafkaServer,
    db: str,
    target_db: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """3 workers over a 12-partition topic; one is SIGKILLed mid-run, one starts
    late. The PostgreSQL target equals the source with every (key, version)
    applied exactly once and in order; the webhook gets every event, a
    duplicate only with an id it already had, each key's first deliveries in order."""
    keys, versions = 60, 12
    execute(db, "create table acct (id int primary key, v int not null)")
    execute(
        target_db,
        "create table acct (id int primary key, v int not null)",
        "create table acct_log (n bigserial, id int not null, v int not null)",
        "create function log_acct() returns trigger language plpgsql as $$"
        " begin insert into acct_log (id, v) values (new.id, new.v); return new; end $$",
        "create trigger acct_log after insert or update on acct"
        " for each row execute function log_acct()",
    )
    prefix = f"cdc{uuid.uuid4().hex[:6]}"
    topic = f"{prefix}.public.acct"
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    monkeypatch.setenv("WALRELAY_TEST_SECRET", secret)
    relay = make_config(
        db,
        ["public.acct"],
        [
            {
                "name": "log",
                "snapshot": "never",
                "sink": {
                    "type": "kafka",
                    "bootstrap_servers": kafka.bootstrap,
                    "mode": "exactly_once",
                    "prefix": prefix,
                    "partitions": PARTITIONS,
                    "transactional_id": f"relay-{prefix}",
                    "batch_size": 100,
                },
            }
        ],
    )
    async with WebhookReceiver(secret, delay=(0.0, 0.01)) as hook:
        worker_cfg = write_config_file(
            tmp_path / "worker.yaml",
            {
                "worker": {
                    "kafka": quick_group(
                        kafka.bootstrap,
                        f"g-{prefix}",
                        [topic],
                        commit_interval=0.2,
                        revoke_timeout=5,
                    ),
                    "slot": "walrelay",
                },
                "state": {"dsn": target_db},
                "shutdown_timeout": 10,
                "destinations": [
                    {
                        "name": "replica",
                        "max_in_flight": 16,
                        "sink": {
                            "type": "postgres",
                            "dsn": target_db,
                            "ordered": False,
                            "max_connections": 2,
                            "batch_size": 50,
                        },
                    },
                    {
                        "name": "hook",
                        "max_in_flight": 16,
                        "sink": {
                            "type": "webhook",
                            "url": hook.url,
                            "secret_env": "WALRELAY_TEST_SECRET",
                        },
                    },
                ],
            },
        )
        logs = [tmp_path / f"worker{i}.log" for i in range(3)]
        total = keys * versions

        def target_done() -> bool:
            with psycopg.connect(target_db) as c:
                row = c.execute("select count(*), coalesce(sum(v), 0) from acct").fetchone()
            return row == (keys, keys * versions)

        async with running_engine(relay):
            with contextlib.ExitStack() as stack:
                w0 = stack.enter_context(worker_process(worker_cfg, logs[0]))
                w1 = stack.enter_context(worker_process(worker_cfg, logs[1]))
                w2 = None
                with psycopg.connect(db, autocommit=True) as conn:
                    conn.execute(
                        "insert into acct select g, 1 from generate_series(1, %s) g", (keys,)
                    )
                    before = 0
                    for version in range(2, versions + 1):
                        if version == 5:
                            await wait_for(
                                lambda: f"assigned {prefix}" in logs[1].read_text(),
                                within=PROCESS_START,
                                what="the second worker to get partitions",
                            )
                            before = len(set(hook.ids))
                        if version == 6:
                            # Mid-run, once it has partitions and is delivering (the
                            # goal counts only events already written, so a group that
                            # has caught up meets it too), one member dies without a word.
                            goal = min(before + 50, keys * (version - 1))

                            def delivering(goal: int = goal) -> bool:
                                return len(set(hook.ids)) >= goal

                            await wait_for(delivering, within=30, what="the workers to deliver")
                            w1.send_signal(signal.SIGKILL)
                        if version == 8:
                            # A member joins late and takes partitions over.
                            w2 = stack.enter_context(worker_process(worker_cfg, logs[2]))
                            await wait_for(
                                lambda: f"assigned {prefix}" in logs[2].read_text(),
                                within=PROCESS_START,
                                what="the late worker to get partitions",
                            )
                        for start in range(1, keys + 1, 10):
                            conn.execute(
                                "update acct set v = %s where id between %s and %s",
                                (version, start, start + 9),
                            )
                await wait_for(
                    lambda: len(set(hook.ids)) >= total and target_done(),
                    within=45,
                    what="every event at both destinations",
                )
                assert w0.poll() is None and w2 is not None and w2.poll() is None
                assert w1.wait(timeout=10) == -signal.SIGKILL

    with psycopg.connect(db) as c:
        source = c.execute("select id, v from acct order by id").fetchall()
    with psycopg.connect(target_db) as c:
        target = c.execute("select id, v from acct order by id").fetchall()
        applied = c.execute("select id, v from acct_log order by id").fetchall()
    assert target == source
    # Every (key, version) applied exactly once, in order per key (the log is in
    # insertion order per key: a trigger row per applied change).
    with psycopg.connect(target_db) as c:
        per_key = c.execute(
            "select id, array_agg(v order by n) from acct_log group by id order by id"
        ).fetchall()
    assert len(applied) == keys * versions
    for key, seen in per_key:
        assert seen == list(range(1, versions + 1)), (key, seen)

    # Webhook: every event; a duplicate only with an id received before; per key,
    # first deliveries in version order.
    assert len(set(hook.ids)) == keys * versions
    first: dict[int, list[int]] = defaultdict(list)
    seen_ids: set[str] = set()
    for event in hook.received:
        if event["id"] in seen_ids:
            continue
        seen_ids.add(event["id"])
        first[event["key"]["id"]].append(event["record"]["v"])
    for key, vs in first.items():
        assert vs == list(range(1, versions + 1)), (key, vs)
    duplicates = len(hook.ids) - len(seen_ids)
    assert duplicates <= 2 * 16, duplicates  # at most the killed worker's in-flight windows


# --------------------------------------------------------------------------- poison events


def produce_envelopes(bootstrap: str, topic: str, rows: list[tuple[int, int]], lsn: int) -> int:
    """Relay-shaped records for ``(id, v)`` rows, one commit LSN each after
    ``lsn``; returns the last LSN used."""
    produce(bootstrap, topic, [(key, v, lsn + i) for i, (key, v) in enumerate(rows, 1)])
    return lsn + len(rows)


def worker_config(kafka: KafkaServer, group: str, topic: str, state: str, url: str) -> Any:
    return parse_worker_config(
        {
            "worker": {
                "kafka": quick_group(
                    kafka.bootstrap, group, [topic], commit_interval=0.1, revoke_timeout=2
                )
            },
            "state": {"dsn": state},
            "shutdown_timeout": 5,
            "destinations": [
                {
                    "name": "hook",
                    "max_in_flight": 8,
                    "retry": {"initial": 0.05, "max": 0.1},
                    "parking": {"park_after": 1, "backoff": {"initial": 0.1, "max": 0.2}},
                    "sink": {"type": "webhook", "url": url, "secret_env": "WALRELAY_TEST_SECRET"},
                }
            ],
        },
        "(test)",
    )


def worker_file(path: Path, config: Any, state: str, url: str, **extra: Any) -> Path:
    """``config`` (from :func:`worker_config`) as a file, secrets written out."""
    data = config.model_dump(mode="json", by_alias=True)
    data["state"]["dsn"] = state
    data["destinations"][0]["sink"]["url"] = url
    data.update(extra)
    return write_config_file(path, data)


async def test_a_poison_event_is_parked_under_its_key_and_its_key_moves_with_the_partition(
    kafka: KafkaServer, db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The webhook refuses key 3's events from v2 on: they are parked, every
    other key of the partition goes on, and offsets are committed past them.
    Then the member owning key 3's partition leaves: the other one, which
    started before anything was parked, takes the partition and its parked
    key over -- key 3's next event waits behind the parked ones -- and once
    the peer accepts, key 3 arrives complete and in order."""
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    monkeypatch.setenv("WALRELAY_TEST_SECRET", secret)
    topic = f"poison{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(30)
    key3 = (topic, partition_for(b'{"id":3}', 3))
    keys = range(1, 10)
    rows = [(k, v) for v in (1, 2, 3) for k in keys]

    async with WebhookReceiver(secret) as hook:
        hook.fail_when = lambda e: e["key"]["id"] == 3 and e["record"]["v"] >= 2

        def delivered(key: int) -> list[int]:
            return [e["record"]["v"] for e in hook.received if e["key"]["id"] == key]

        config = worker_config(kafka, f"g-{topic}", topic, db, hook.url)
        async with running_worker(config, "a") as a, running_worker(config, "b") as b:
            members = (a, b)
            await wait_for(
                lambda: (
                    all(m.tracker.partitions for m in members)
                    and sum(len(m.tracker.partitions) for m in members) == 3
                ),
                what="both workers to have partitions",
            )
            lsn = produce_envelopes(kafka.bootstrap, topic, rows, 0x100)
            await wait_for(
                lambda: all(delivered(k) == [1, 2, 3] for k in keys if k != 3),
                what="every other key delivered",
            )
            assert delivered(3) == [1]

            def committed_to_the_end() -> bool:
                parts = [p for m in members for p in m.partitions_status()]
                return len(parts) == 3 and all(
                    p["committed_offset"] == p["high_watermark"] == p["safe_offset"] for p in parts
                )

            # Parked events are finished: offsets are committed past them.
            await wait_for(committed_to_the_end, what="offsets committed past the parked events")
            # ... and `walrelay parking` reads a worker's file.
            path = worker_file(tmp_path / "worker.yaml", config, db, hook.url)
            listed = await asyncio.to_thread(
                CliRunner().invoke, main, ["parking", "list", "--config", str(path)]
            )
            assert listed.exit_code == 0, listed.output
            assert "000000000000010C/0" in listed.output  # key 3, v2
            owner = a if key3 in a.tracker.partitions else b
            other = b if owner is a else a
            owner.request_stop()
            await wait_for(
                lambda: key3 in other.tracker.partitions,
                what="the other worker to take key 3's partition over",
            )
            produce_envelopes(kafka.bootstrap, topic, [(3, 4), (5, 4)], lsn)
            await wait_for(lambda: delivered(5) == [1, 2, 3, 4], what="key 5's next event")
            assert delivered(3) == [1]  # v4 waits behind the parked v2 and v3
            hook.fail_when = None
            await wait_for(lambda: delivered(3)[-1:] == [4], what="key 3 delivered")
    firsts: list[int] = []
    for v in delivered(3):
        if v not in firsts:
            firsts.append(v)
    assert firsts == [1, 2, 3, 4]


# --------------------------------------------------------------------------- processes, status


async def test_processes_share_the_group_report_status_and_stop_together(
    kafka: KafkaServer, db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`walrelay worker --processes 2`: two members on one host; `walrelay status`
    shows each one's partitions, lag and safe offsets; /metrics has them per
    partition; one SIGTERM to the parent stops both."""
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    monkeypatch.setenv("WALRELAY_TEST_SECRET", secret)
    monkeypatch.setenv("WALRELAY_TEST_TOKEN", "t0ken-for-the-test")
    topic = f"procs{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])[topic].result(30)
    produce_envelopes(kafka.bootstrap, topic, [(k, 1) for k in range(1, 41)], 0x100)
    port = consecutive_free_ports(2)  # process i listens on port + i
    async with WebhookReceiver(secret) as hook:
        config = worker_config(kafka, f"g-{topic}", topic, db, hook.url)
        http = {"port": port, "token_env": "WALRELAY_TEST_TOKEN"}
        path = worker_file(tmp_path / "worker.yaml", config, db, hook.url, http=http)
        file_config = load_worker_config(path)
        parent = await asyncio.to_thread(
            start_cli, ["worker", "--config", str(path), "--processes", "2"], tmp_path / "w.log"
        )
        try:

            async def shared() -> list[dict[str, Any]] | None:
                """Both members' partitions once each owns some (the group's rebalance
                is done: one member with all four is the state before the other joins)."""
                docs, _ = await asyncio.to_thread(fetch_worker_status, file_config)
                parts = [p for d in docs for p in d["partitions"]]
                if len(docs) != 2 or not all(d["partitions"] for d in docs):
                    return None
                return parts if sorted(p["partition"] for p in parts) == [0, 1, 2, 3] else None

            async def caught_up() -> bool:
                parts = await shared()
                return (
                    parts is not None
                    and all(p["lag_records"] == 0 for p in parts)
                    and all(p["committed_offset"] == p["safe_offset"] for p in parts)
                )

            # Start-up is the slow part (PROCESS_START): the parent, then each child,
            # before a cooperative rebalance (two rounds, ~2 s) shares the partitions.
            async def in_group() -> bool:
                return await shared() is not None

            await wait_for(in_group, within=PROCESS_START, what="both processes in the group")
            await wait_for(lambda: len(set(hook.ids)) == 40, within=30, what="every event")
            await wait_for(caught_up, within=30, what="both processes' status, caught up")

            async def group_read() -> bool:
                """Every process has read the whole group's lag from the cluster: 0
                for all four partitions (each names itself the owner of its own)."""
                docs, _ = await asyncio.to_thread(fetch_worker_status, file_config)
                names = {d["name"] for d in docs}
                lags = [d["group_lag"] for d in docs]
                owners = {p["owner"] for lag in lags if lag for p in lag["partitions"]}
                return (
                    len(docs) == 2
                    and owners - {None} == names
                    and all(
                        lag is not None
                        and lag["error"] is None
                        and lag["lag_records"] == 0
                        and [p["partition"] for p in lag["partitions"]] == [0, 1, 2, 3]
                        for lag in lags
                    )
                )

            await wait_for(group_read, within=30, what="the group's lag in both statuses")
            as_json = await asyncio.to_thread(run_cli, "status", "--config", str(path), "--json")
            docs = orjson.loads(as_json)
            assert sum(p["safe_offset"] for d in docs for p in d["partitions"]) == 40
            text = await asyncio.to_thread(run_cli, "status", "--config", str(path))
            assert f"group g-{topic}" in text and f"{topic}[0]" in text
            assert f"group g-{topic}: lag 0 record(s) over 4 partition(s)" in text
            metrics = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics")
            assert f'walrelay_worker_partition_lag_records{{group="g-{topic}"' in metrics
            assert f'walrelay_worker_group_lag_records{{group="g-{topic}"' in metrics
            assert 'walrelay_events_out_total{destination="hook"}' in metrics
            pids = [int(d["name"].rsplit("-", 1)[1]) for d in docs]
        finally:
            parent.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(parent.wait, 30) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def consecutive_free_ports(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports. A free first port
    alone is not enough: the next one may be any socket's (a client's ephemeral
    port on a busy machine), and then the second process has no HTTP at all."""
    for _ in range(100):
        first = free_port()
        socks: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return first
    raise AssertionError(f"no {count} consecutive free ports on 127.0.0.1")


def start_cli(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "walrelay", *args], stdout=out, stderr=subprocess.STDOUT
        )


def run_cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "walrelay", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


async def test_a_missing_topic_is_one_clear_error(
    kafka: KafkaServer, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WALRELAY_TEST_SECRET", "whsec_" + base64.b64encode(b"k" * 32).decode())
    config = worker_config(kafka, "g-missing", "no.such.topic", db, "http://127.0.0.1:1/hook")
    with pytest.raises(ConfigError, match=r"topic\(s\) no\.such\.topic do not exist") as info:
        await Worker(config).run()
    assert "relay" in (info.value.fix or "")


# --------------------------------------------------------------------------- Kafka -> Kafka


class CommittedOutput:
    """What a read_committed consumer sees of a topic, read incrementally."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.consumer = reading_consumer(bootstrap)
        self.consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)]
        )
        self.records: list[tuple[int, int, int, int]] = []  # (partition, offset, key, v)

    def count(self) -> int:
        for msg in self.consumer.consume(1000, timeout=0.1):
            value, partition, offset = msg.value(), msg.partition(), msg.offset()
            if msg.error() is None:
                assert value is not None and partition is not None and offset is not None
                body = orjson.loads(value)
                self.records.append((partition, offset, body["key"]["id"], body["record"]["v"]))
        return len(self.records)

    def at_end(self) -> bool:
        """Everything is read, once no transaction is open (read_committed
        positions move past the transaction markers, up to the high watermarks)."""
        self.count()
        positions = self.consumer.position(self.consumer.assignment())
        for tp in positions:
            high = self.consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1]
            if tp.offset < high:
                return False
        return True

    def close(self) -> None:
        self.consumer.close()


def group_caught_up(bootstrap: str, group: str, topic: str, ends: dict[int, int]) -> bool:
    """The group's committed offsets (stable: no open transaction) are at the ends."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "isolation.level": "read_committed"}
    )
    try:
        done = consumer.committed([TopicPartition(topic, p) for p in ends], timeout=10)
    finally:
        consumer.close()
    return {c.partition: c.offset for c in done} == ends


async def test_kafka_to_kafka_exactly_once_through_a_crash_and_a_sigkill(
    kafka: KafkaServer, db: str, tmp_path: Path
) -> None:
    """A worker whose destination is a transactional Kafka sink commits the
    consumed offsets in its transactions. It crashes inside a transaction
    (records produced, offsets sent, not committed), is restarted, is SIGKILLed
    mid-run, is restarted again: the output, read with read_committed, holds
    every input (key, version) exactly once, each key's versions in order."""
    keys, versions, partitions = 24, 20, 6
    tag = uuid.uuid4().hex[:6]
    source, output, group = f"eosin{tag}", f"eosout{tag}", f"g-eos{tag}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    for name in (source, output):
        new = NewTopic(name, num_partitions=partitions, replication_factor=1)
        admin.create_topics([new])[name].result(30)
    rows = [(k, v) for v in range(1, versions + 1) for k in range(1, keys + 1)]
    produce_envelopes(kafka.bootstrap, source, rows, 0x100)
    total = len(rows)
    path = write_config_file(
        tmp_path / "worker.yaml",
        {
            "worker": {"kafka": quick_group(kafka.bootstrap, group, [source], commit_interval=0.2)},
            "state": {"dsn": db},
            "shutdown_timeout": 10,
            "destinations": [
                {
                    "name": "out",
                    "sink": {
                        "type": "kafka",
                        "bootstrap_servers": kafka.bootstrap,
                        "topic": output,
                        "batch_size": 20,
                    },
                }
            ],
        },
    )
    log = tmp_path / "worker.log"
    seen = CommittedOutput(kafka.bootstrap, output, partitions)
    try:
        # 1. A crash inside the fourth transaction: its offsets were sent, not committed.
        crash = {"WALRELAY_FAILPOINTS": "kafka.before_commit=crash@4"}
        with worker_process(path, log, crash) as proc:
            await wait_for(lambda: proc.poll() is not None, within=PROCESS_START, what="the crash")
            assert proc.returncode == 137, log.read_text()
        # (Its open transaction holds the last stable offset back until a restart.)
        await wait_for(lambda: seen.count() > 0, what="the transactions committed before it")
        assert seen.count() < total
        # 2. Restarted (slowed down), then SIGKILLed while it delivers.
        slow = {"WALRELAY_FAILPOINTS": "kafka.after_commit=sleep:0.1"}
        with worker_process(path, log, slow) as proc:
            before = seen.count()
            await wait_for(
                lambda: seen.count() >= before + 100 or proc.poll() is not None,
                within=PROCESS_START,
                what="the restarted worker to deliver",
            )
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=10) == -signal.SIGKILL
        assert seen.count() < total, "the worker finished before the kill"
        # 3. Restarted: it finishes, and commits the group's offsets to the end.
        ends = {p: 0 for p in range(partitions)}
        for p in ends:
            consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": "ends"})
            ends[p] = consumer.get_watermark_offsets(TopicPartition(source, p), timeout=10)[1]
            consumer.close()
        with worker_process(path, log) as proc:
            await wait_for(lambda: seen.count() >= total, within=PROCESS_START, what="every event")
            await wait_for(
                lambda: group_caught_up(kafka.bootstrap, group, source, ends),
                within=30,
                what="the group's offsets at the end",
            )
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log.read_text()
        await wait_for(seen.at_end, what="the whole output read")
    finally:
        seen.close()
    delivered = [(key, v) for _p, _o, key, v in seen.records]
    counts = Counter(delivered)
    assert len(delivered) == total and set(counts.values()) == {1}, counts.most_common(3)
    per_key: dict[int, list[int]] = defaultdict(list)
    for _p, _o, key, v in sorted(seen.records):
        per_key[key].append(v)
    assert all(vs == list(range(1, versions + 1)) for vs in per_key.values()), per_key


async def test_the_dashboard_of_a_worker_shows_the_groups_lag(
    kafka: KafkaServer, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's dashboard (real headless Chromium) renders its document -- no
    slots, no alerts -- without a page error, and shows the consumer group's
    partitions with their owner and lag."""
    from tests.integration.test_dashboard import CHROMIUM, CHROMIUM_ARGS, _need_browser

    _need_browser()
    from playwright.async_api import async_playwright

    token = "worker-dashboard-token"
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    monkeypatch.setenv("WALRELAY_TEST_SECRET", secret)
    monkeypatch.setenv("WALRELAY_TEST_TOKEN", token)
    topic = f"dash{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(30)
    produce_envelopes(kafka.bootstrap, topic, [(k, 1) for k in range(1, 31)], 0x100)
    async with WebhookReceiver(secret) as hook:
        config = worker_config(kafka, f"g-{topic}", topic, db, hook.url).model_copy(
            update={"http": HttpConfig(port=0, token_env="WALRELAY_TEST_TOKEN")}
        )
        async with running_worker(config, "dash") as worker, async_playwright() as pw:
            await wait_for(
                lambda: (
                    (lag := worker.group_lag_status()) is not None
                    and lag["lag_records"] == 0
                    and len(lag["partitions"]) == 3
                ),
                within=30,
                what="the group's lag read, 0",
            )
            assert worker.http is not None
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                problems: list[str] = []
                page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
                await page.goto(worker.http.url)
                await page.fill("#token", token)
                await page.click("#login")
                rows = page.locator("#group tbody tr")
                await rows.first.wait_for(timeout=20_000)
                assert await rows.count() == 3
                cells = await page.locator(f'#group tr[data-partition="{topic}[1]"] td').all()
                texts = [await c.inner_text() for c in cells]
                assert texts[1] == "dash" and texts[4] == "0", texts
                assert "Consumer group g-" in await page.locator("#group-title").inner_text()
                assert await page.locator("#state").inner_text() == "running"
                assert problems == []
            finally:
                await browser.close()


def lose_commit_answers(monkeypatch: pytest.MonkeyPatch, lose: Callable[[], bool]) -> None:
    """The Kafka sink's producers report a timeout after a commit that went
    through, whenever ``lose()`` says so (the broker's answer was lost)."""
    import confluent_kafka

    import walrelay.sinks.kafka as kafka_module

    class LostAnswer(confluent_kafka.Producer):
        def commit_transaction(self, *args: Any) -> None:
            super().commit_transaction(*args)
            if lose():
                error = confluent_kafka.KafkaError(
                    confluent_kafka.KafkaError._TIMED_OUT, "test: the answer was lost"
                )
                raise confluent_kafka.KafkaException(error)

    wrapped = SimpleNamespace(**{**vars(confluent_kafka), "Producer": LostAnswer})
    monkeypatch.setattr(kafka_module, "import_extra", lambda *_: wrapped)


async def test_a_commit_whose_answer_is_lost_is_settled_not_sent_twice(
    kafka: KafkaServer, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction commits, but the producer reports a timeout: the sink
    cannot know. Before the batch is retried, a new producer settles the
    transaction and the group's committed offsets say it went through: the
    batch is not produced again."""
    commits = 0

    def the_second_commit() -> bool:
        nonlocal commits
        commits += 1
        return commits == 2

    lose_commit_answers(monkeypatch, the_second_commit)
    tag = uuid.uuid4().hex[:6]
    source, output, group = f"doubtin{tag}", f"doubtout{tag}", f"g-doubt{tag}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    for name in (source, output):
        new = NewTopic(name, num_partitions=3, replication_factor=1)
        admin.create_topics([new])[name].result(30)
    rows = [(k, v) for v in range(1, 5) for k in range(1, 16)]
    produce_envelopes(kafka.bootstrap, source, rows, 0x100)
    config = parse_worker_config(
        {
            "worker": {"kafka": quick_group(kafka.bootstrap, group, [source])},
            "state": {"dsn": db},
            "destinations": [
                {
                    "name": "out",
                    "retry": {"initial": 0.05, "max": 0.1},
                    "sink": {
                        "type": "kafka",
                        "bootstrap_servers": kafka.bootstrap,
                        "topic": output,
                        "batch_size": 10,
                    },
                }
            ],
        },
        "(test)",
    )
    seen = CommittedOutput(kafka.bootstrap, output, 3)
    try:
        async with running_worker(config, "doubt") as worker:
            await wait_for(lambda: seen.count() >= len(rows), what="every event in the output")
            ends = {p: 0 for p in range(3)}
            for tp, part in worker.tracker.partitions.items():
                ends[tp[1]] = part.next or 0
            assert sum(ends.values()) == len(rows)
            await wait_for(
                lambda: group_caught_up(kafka.bootstrap, group, source, ends),
                what="the group's offsets at the end",
            )
        await wait_for(seen.at_end, what="the whole output read")
    finally:
        seen.close()
    assert commits >= 3  # the lost answer, and transactions after it
    counts = Counter((key, v) for _p, _o, key, v in seen.records)
    assert len(seen.records) == len(rows) and set(counts.values()) == {1}, counts.most_common(3)


async def test_an_offsets_commit_after_a_commit_in_doubt_never_takes_the_group_back(
    kafka: KafkaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction commits but its answer is lost; before its batch is retried,
    an offsets-only commit comes (a revoke's, from offsets that do not count the
    batch): the sink settles the doubt first, so the group's offset stays past
    the batch, and the retried batch is not produced again."""
    from walrelay.errors import SinkError
    from walrelay.sinks.kafka_offsets import KafkaOffsetsSink, Offsets

    losing = False

    def when_asked() -> bool:
        nonlocal losing
        lost, losing = losing, False
        return lost

    lose_commit_answers(monkeypatch, when_asked)
    tag = uuid.uuid4().hex[:6]
    source, output, group = f"settlein{tag}", f"settleout{tag}", f"g-settle{tag}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    for name in (source, output):
        admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])[name].result(
            30
        )
    consumer = reading_consumer(kafka.bootstrap, group)

    class Source:
        """The worker as the sink sees it: the offsets each batch commits."""

        offsets: Offsets = []

        def prepare(self, events: Any) -> tuple[Any, Offsets, Any]:
            return events, self.offsets, consumer.consumer_group_metadata()

        def committed(self, offsets: Offsets) -> None:
            pass

        def group_offsets(
            self, partitions: list[tuple[str, int]], timeout: float
        ) -> dict[tuple[str, int], int]:
            asked = [TopicPartition(t, p) for t, p in partitions]
            return {(c.topic, c.partition): c.offset for c in consumer.committed(asked, timeout)}

    def batch(ids: range) -> list[Any]:
        return [
            make_event(
                0x100,
                i,
                keys=(f"public.t\x1f{i}",),
                body=orjson.dumps({"key": {"id": i}, "record": {"v": 1}}),
            )
            for i in ids
        ]

    src = Source()
    sink = KafkaOffsetsSink(
        KafkaSinkConfig(
            bootstrap_servers=kafka.bootstrap,
            mode="exactly_once",
            topic=output,
            delivery_timeout=10,
        ),
        SinkContext(slot="s", destination="settle", tables=("public.t",)),
        source=src,
        member="m",
    )
    seen = CommittedOutput(kafka.bootstrap, output, 1)
    await sink.open()
    try:
        src.offsets = [(source, 0, 5)]
        await sink.deliver(batch(range(5)))
        losing = True
        src.offsets = [(source, 0, 10)]
        with pytest.raises(SinkError):
            await sink.deliver(batch(range(5, 10)))
        # A revoke's commit, from offsets that do not count the batch in doubt.
        metadata = consumer.consumer_group_metadata()
        assert await sink.commit_offsets([(source, 0, 7)], metadata) == []
        await sink.deliver(batch(range(5, 10)))  # the retry
        done = await asyncio.to_thread(consumer.committed, [TopicPartition(source, 0)], 10)
        assert done[0].offset == 10
        await wait_for(seen.at_end, what="the whole output read")
    finally:
        await sink.close()
        seen.close()
        consumer.close()
    assert sorted(key for _p, _o, key, _v in seen.records) == list(range(10))
