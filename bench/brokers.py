"""Throughput to each message broker, beside the file sink, in one run.

One PostgreSQL cluster, one fixed workload (``--changes``, default 200k: half
single-row transactions, half 100-row ones, the workload of
``bench/throughput.py``), and one slot per sink created *before* the
workload, so every sink streams exactly the same backlog from a fresh slot.
The sinks run one after the other, each with the machine to itself: its
broker is started (not timed), then ``walrelay run --until-lsn <end>`` is
timed from start to exit (it exits once everything is delivered and
confirmed, like ``pg_recvlogical --endpos``), then the broker's content is
counted and the broker stopped.

Sinks: file (fsync per batch), Kafka exactly_once (transactions + checkpoint)
and at_least_once (idempotent producer, dedup ledger in front), NATS
JetStream, Redis Streams, RabbitMQ (publisher confirms, dedup ledger in
front), webhook (signed POSTs to a receiver process, dedup ledger in front:
bench/webhook_reference.py) and the PostgreSQL sink, ordered and unordered,
into a second cluster (bench/postgres_reference.py). Brokers run with their
test defaults from walrelay.testing.servers (Redis: ``appendfsync
everysec``), the target cluster with those of walrelay.testing.pgcluster.

    .venv/bin/python bench/brokers.py [--changes 200000] [--only kafka,redis]
        [--json bench/results/brokers.json]
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import yaml

import walrelay
from walrelay.model import format_lsn
from walrelay.testing.kafka_reading import reading_consumer
from walrelay.testing.pgcluster import PgCluster, start_cluster
from walrelay.testing.servers import KafkaServer, NatsServer, RabbitMQServer, RedisServer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import broker_references as refs
import postgres_reference as pg_ref
import webhook_reference as webhook_ref
from throughput import confirmed, end_lsn, setup, workload

PREFIX = "bench"


@dataclass
class Case:
    name: str
    slot: str
    server: Callable[[], Any] | None  # a walrelay.testing.servers class, or None
    sink: Callable[[Any, Path], dict[str, Any]]
    count: Callable[[Any, Path], int]
    prepare: Callable[[Any], None] = lambda server: None
    notes: str = ""
    # A bare client of the same library on the same broker (bench/broker_references.py).
    reference: refs.Reference | None = None
    reference_notes: str = ""
    # More keys of the destination's config (e.g. its ledger).
    destination: dict[str, Any] = field(default_factory=dict)
    # More references beside the main one: (label, reference).
    more_references: tuple[tuple[str, refs.Reference], ...] = ()
    result: dict[str, Any] = field(default_factory=dict)


# -- counting what arrived ------------------------------------------------------------


def count_file(_: Any, workdir: Path) -> int:
    with open(workdir / "events.jsonl", "rb") as f:
        return sum(1 for _ in f)


def count_kafka(server: KafkaServer, _: Path) -> int:
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    consumer = reading_consumer(server.bootstrap, "bench-count", eof=True)
    try:
        topic = f"{PREFIX}.public.bench"
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        left, n = set(partitions), 0
        deadline = time.monotonic() + 120
        while left and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, 1.0):
                err = msg.error()
                if err is None:
                    n += 1
                elif err.code() == KafkaError._PARTITION_EOF:
                    left.discard(msg.partition())
                else:
                    raise RuntimeError(f"kafka consumer: {err}")
        return n
    finally:
        consumer.close()


def count_nats(server: NatsServer, _: Path) -> int:
    import nats

    async def go() -> int:
        nc = await nats.connect(server.url)
        try:
            info = await nc.jetstream().stream_info(PREFIX.upper())
            return int(info.state.messages)
        finally:
            await nc.close()

    return asyncio.run(go())


def count_redis(server: RedisServer, _: Path) -> int:
    import redis

    client = redis.Redis.from_url(server.url)
    try:
        return int(client.xlen(f"{PREFIX}:public.bench"))
    finally:
        client.close()


def prepare_rabbitmq(server: RabbitMQServer) -> None:
    import aio_pika

    async def go() -> None:
        conn = await aio_pika.connect(server.url)
        try:
            channel = await conn.channel()
            exchange = await channel.declare_exchange(PREFIX, "topic", durable=True)
            queue = await channel.declare_queue(f"{PREFIX}.all", durable=True)
            await queue.bind(exchange, "#")
        finally:
            await conn.close()

    asyncio.run(go())


def count_rabbitmq(server: RabbitMQServer, _: Path) -> int:
    import aio_pika

    async def go() -> int:
        conn = await aio_pika.connect(server.url)
        try:
            channel = await conn.channel()
            queue = await channel.declare_queue(f"{PREFIX}.all", durable=True, passive=True)
            count = queue.declaration_result.message_count
            return int(count or 0)
        finally:
            await conn.close()

    return asyncio.run(go())


CASES = [
    Case(
        "file",
        "b_file",
        None,
        lambda s, w: {"type": "file", "path": str(w / "events.jsonl"), "fsync": "batch"},
        count_file,
        notes="fsync per batch",
    ),
    Case(
        "kafka exactly_once",
        "b_kafka_eo",
        KafkaServer,
        lambda s, w: {"type": "kafka", "bootstrap_servers": s.bootstrap, "prefix": PREFIX},
        count_kafka,
        prepare=refs.kafka_warm_up,
        notes="transaction + checkpoint per 100 ms / 4 MiB, ordered",
        reference=lambda s, p: refs.kafka_transactional(s, p, 0.1, 4 * 2**20),
        reference_notes="transactional producer, a transaction per 100 ms / 4 MiB",
    ),
    Case(
        "kafka at_least_once",
        "b_kafka_alo",
        KafkaServer,
        lambda s, w: {
            "type": "kafka",
            "bootstrap_servers": s.bootstrap,
            "prefix": PREFIX,
            "mode": "at_least_once",
        },
        count_kafka,
        prepare=refs.kafka_warm_up,
        notes="idempotent producer, acks=all; dedup ledger (postgres) in front",
        reference=refs.kafka_idempotent,
        reference_notes="idempotent producer, acks=all, produce all then flush",
    ),
    Case(
        "nats jetstream",
        "b_nats",
        NatsServer,
        lambda s, w: {"type": "nats", "servers": s.url, "prefix": PREFIX, "stream": "BENCH"},
        count_nats,
        notes="publish_async + acks, Nats-Msg-Id dedup",
        reference=lambda s, p: refs.nats_jetstream(s, p, 100),
        reference_notes="publish_async + Nats-Msg-Id, acks awaited per 100",
    ),
    Case(
        "redis streams",
        "b_redis",
        RedisServer,
        lambda s, w: {"type": "redis", "url": s.url, "prefix": PREFIX},
        count_redis,
        notes="XADD explicit ids, one pipeline per batch of 500, ordered",
        reference=lambda s, p: refs.redis_streams(s, p, 500),
        reference_notes="redis-py asyncio, XADD explicit ids, a pipeline per 500",
    ),
    Case(
        "rabbitmq",
        "b_rabbitmq",
        RabbitMQServer,
        lambda s, w: {"type": "rabbitmq", "url": s.url, "prefix": PREFIX},
        count_rabbitmq,
        prepare=prepare_rabbitmq,
        notes="publisher confirms, persistent; dedup ledger (postgres) in front",
        reference=lambda s, p: refs.rabbitmq_confirms(s, p, 100),
        reference_notes="aio-pika, persistent, confirms awaited per 100",
    ),
    Case(
        "webhook",
        "b_webhook",
        webhook_ref.WebhookReceiver,
        webhook_ref.sink,
        webhook_ref.count,
        notes="signed POST per event, 32 in flight; dedup ledger (postgres) in front",
        reference=webhook_ref.reference,
        reference_notes="aiohttp, the same signed POSTs, 32 in flight",
    ),
    Case(
        "webhook, no ledger",
        "b_webhook_nl",
        webhook_ref.WebhookReceiver,
        webhook_ref.sink,
        webhook_ref.count,
        notes="as webhook, ledger: {type: none} (what the ledger costs)",
        destination={"ledger": {"type": "none"}},
        reference=webhook_ref.reference,
        reference_notes="aiohttp, the same signed POSTs, 32 in flight",
    ),
    *(
        Case(
            f"postgres {mode}",
            f"b_pg_{mode}",
            pg_ref.Target,
            pg_ref.sink(mode == "ordered"),
            pg_ref.count,
            notes=f"{mode}, 500 per transaction{'' if mode == 'ordered' else ', 4 connections'}",
            reference=pg_ref.executemany(mode == "ordered"),
            reference_notes="psycopg executemany upserts, pipelined, 500 per transaction"
            + ("" if mode == "ordered" else ", 4 connections"),
            more_references=(("copy", pg_ref.copy(mode == "ordered")),),
        )
        for mode in ("ordered", "unordered")
    ),
]


# -- running ------------------------------------------------------------------------


def streaming_seconds(log_path: Path) -> float | None:
    """From the engine's "streaming slot" line to its "stopping" line: the run
    without process start, topic creation and producer initialisation."""
    marks: dict[str, datetime] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        for mark, text in (("start", "streaming slot"), ("stop", "stopping:")):
            if text in line and mark not in marks:
                with contextlib.suppress(ValueError):
                    marks[mark] = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    if len(marks) < 2:
        return None
    return (marks["stop"] - marks["start"]).total_seconds()


LEDGER_LINE = re.compile(
    r"sent behind the ledger \((?P<unchecked>\d+) unchecked\): (?P<trips>\d+) round "
    r"trip\(s\) \((?P<bare>\d+) without ids\), (?P<ids>[\d.]+) ids each"
)


def ledger_round_trips(log_path: Path) -> dict[str, float] | None:
    """The dedup ledger's round trips, from the line walrelay logs when it stops
    (None without a ledger)."""
    match = LEDGER_LINE.search(log_path.read_text(errors="replace"))
    if match is None:
        return None
    return {k: float(v) if k == "ids" else int(v) for k, v in match.groupdict().items()}


def broker_cpu(server: Any) -> float:
    """CPU seconds the broker process and its children (a PostgreSQL target's
    backends, running or ended) have used so far (0 without a broker)."""
    if server is None:
        return 0.0
    try:
        process = psutil.Process(server.pid)
        times = process.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
    except psutil.Error:
        return 0.0
    return float(total)


def machine_busy(before: Any) -> float:
    """The share of the machine's CPU time that was not idle since ``before``."""
    after = psutil.cpu_times()
    total = sum(after) - sum(before)
    idle = (after.idle + after.iowait) - (before.idle + before.iowait)
    return 1.0 - idle / total if total > 0 else 0.0


PROFILE = {"on": False}


def profiler(workdir: Path) -> list[str]:
    """``--py-spy``: walrelay runs under py-spy, its folded stacks in the workdir."""
    if not PROFILE["on"]:
        return []
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        sys.exit(f"--py-spy needs {spy}: pip install 'walrelay[bench]'")
    out = workdir / "profile.folded"
    # --gil: samples of the thread holding the GIL, i.e. where the CPU goes.
    args = ["record", "-r", "250", "--gil", "--threads", "-f", "raw", "-o", str(out), "--"]
    return [str(spy), *args]


@contextlib.contextmanager
def maybe_server(factory: Callable[[], Any] | None) -> Iterator[Any]:
    if factory is None:
        yield None
        return
    with factory() as server:
        yield server


def run_case(
    cluster: PgCluster,
    case: Case,
    target: int,
    workdir: Path,
    payloads: list[refs.Payload],
) -> None:
    with maybe_server(case.server) as server:
        case.prepare(server)
        cfg = {
            "source": {
                "dsn": cluster.dsn(),
                "slot": case.slot,
                "publication": "bench_pub",
                "tables": ["public.bench"],
                "status_interval": 1,
                "create_slot": False,
            },
            # One destination name per case: the dedup ledger (in front of the
            # non-transactional sinks) is keyed by destination name.
            "destinations": [
                {
                    "name": f"bench-{case.slot}",
                    "sink": case.sink(server, workdir),
                    **case.destination,
                }
            ],
            "http": {"enabled": False},
            "monitor": {"enabled": False},
            "log_level": "info",
        }
        cfg_path = workdir / "walrelay.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        log_path = workdir / "walrelay.log"
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        broker0, machine0 = broker_cpu(server), psutil.cpu_times()
        t0 = time.monotonic()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [
                    *profiler(workdir),
                    sys.executable,
                    "-m",
                    "walrelay",
                    "run",
                    "--config",
                    str(cfg_path),
                    "--until-lsn",
                    format_lsn(target),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        peak = 0
        try:
            ps = psutil.Process(proc.pid)
            while proc.poll() is None:
                with contextlib.suppress(psutil.Error):
                    peak = max(peak, ps.memory_info().rss)
                time.sleep(0.05)  # sampling memory while it runs
            elapsed = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        broker_s, busy = broker_cpu(server) - broker0, machine_busy(machine0)
        cpu = (children1.ru_utime - children0.ru_utime) + (children1.ru_stime - children0.ru_stime)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{case.name}: walrelay exited with {proc.returncode}: "
                + log_path.read_text(errors="replace")[-3000:]
            )
        deadline = time.monotonic() + 10
        while confirmed(cluster.dsn(), case.slot) < target:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{case.name}: the slot was not confirmed up to the target")
            time.sleep(0.05)  # the walsender applies the last status update after we exit
        delivered = case.count(server, workdir)
        if case.name == "file":
            payloads[:] = refs.load_payloads(workdir / "events.jsonl")
        ref_s = ref_cpu = ref_broker_s = ref_busy = None
        if case.reference is not None and payloads:
            print(f"running {case.name} reference ...", flush=True)
            cpu0, broker0, machine0 = time.process_time(), broker_cpu(server), psutil.cpu_times()
            ref_s = case.reference(server, payloads)
            ref_cpu = time.process_time() - cpu0
            ref_broker_s, ref_busy = broker_cpu(server) - broker0, machine_busy(machine0)
        more: dict[str, dict[str, Any]] = {}
        for label, reference in case.more_references if payloads else ():
            print(f"running {case.name} reference {label} ...", flush=True)
            cpu0 = time.process_time()
            seconds = reference(server, payloads)
            more[label] = {
                "seconds": round(seconds, 3),
                "cpu_s": round(time.process_time() - cpu0, 2),
            }
    case.result = {
        "seconds": round(elapsed, 3),
        "streaming_seconds": streaming_seconds(log_path),
        "ledger": ledger_round_trips(log_path),
        "delivered": delivered,
        "peak_rss_mb": round(peak / 2**20, 1),
        # CPU seconds of the whole walrelay process (start-up included) and of the
        # reference (in this process, its set-up included): less at the mercy
        # of other load on the machine than the wall clock.
        "cpu_s": round(cpu, 2),
        "reference_cpu_s": None if ref_cpu is None else round(ref_cpu, 2),
        # The broker's CPU seconds and how busy the machine's cores were (all of
        # them, other load included) during walrelay's run and the reference's.
        "broker_cpu_s": round(broker_s, 2),
        "machine_busy": round(busy, 2),
        "reference_broker_cpu_s": None if ref_broker_s is None else round(ref_broker_s, 2),
        "reference_machine_busy": None if ref_busy is None else round(ref_busy, 2),
        "notes": case.notes,
        "reference_seconds": None if ref_s is None else round(ref_s, 3),
        "reference_notes": case.reference_notes,
        "more_references": more,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--changes", type=int, default=200_000)
    ap.add_argument("--only", default="", help="comma-separated substrings of sink names")
    ap.add_argument("--json", default="bench/results/brokers.json")
    ap.add_argument("--keep", help="keep each run's config and log under this directory")
    ap.add_argument(
        "--py-spy",
        action="store_true",
        help="run walrelay under py-spy (pip install py-spy); folded stacks in each --keep dir",
    )
    args = ap.parse_args()
    PROFILE["on"] = args.py_spy
    # Time the runs, not compiling walrelay's modules (PYTHONDONTWRITEBYTECODE
    # would otherwise make every start compile them again), as bench/throughput.py.
    compileall.compile_dir(Path(walrelay.__file__).parent, quiet=1)
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    # The file case always runs first: its output is the payload of every reference.
    cases = [c for c in CASES if c.name == "file" or any(w in c.name for w in wanted or [""])]
    payloads: list[refs.Payload] = []

    cluster = start_cluster({"logical_decoding_work_mem": "64MB"})
    try:
        dsn = setup(cluster, [case.slot for case in cases])
        n, txs, gen_s = workload(dsn, args.changes)
        target = end_lsn(dsn)
        for case in cases:
            print(f"running {case.name} ...", flush=True)
            if args.keep:
                workdir = Path(args.keep) / case.slot
                workdir.mkdir(parents=True, exist_ok=True)
                run_case(cluster, case, target, workdir, payloads)
                continue
            with tempfile.TemporaryDirectory(prefix="walrelay-bench-") as tmp:
                run_case(cluster, case, target, Path(tmp), payloads)
    finally:
        cluster.stop()

    base = next((c for c in cases if c.name == "file"), None)
    base_rate = n / base.result["seconds"] if base else None
    print()
    print(f"{n:,} changes in {txs:,} transactions (half single-row, half 100-row)")
    print(
        f"{'sink':<22}{'seconds':>9}{'changes/s':>12}{'vs file':>9}{'delivered':>11}"
        f"{'reference/s':>13}{'ratio':>7}{'streaming/s':>13}{'ratio':>7}{'cpu s':>7}"
        f"{'ref cpu':>8}  notes"
    )
    ok = True
    for case in cases:
        r = case.result
        rate = n / r["seconds"]
        r["changes_per_s"] = round(rate)
        r["vs_file"] = round(rate / base_rate, 3) if base_rate else None
        ok = ok and r["delivered"] == n
        vs = f"{rate / base_rate:.2f}" if base_rate else "-"
        ref_rate = n / r["reference_seconds"] if r["reference_seconds"] else None
        r["reference_changes_per_s"] = round(ref_rate) if ref_rate else None
        r["ratio"] = round(rate / ref_rate, 3) if ref_rate else None
        ref_col = f"{ref_rate:,.0f}" if ref_rate else "-"
        ratio = f"{rate / ref_rate:.2f}" if ref_rate else "-"
        stream = r["streaming_seconds"]
        stream_rate = n / stream if stream else None
        r["streaming_changes_per_s"] = round(stream_rate) if stream_rate else None
        r["streaming_ratio"] = (
            round(stream_rate / ref_rate, 3) if stream_rate and ref_rate else None
        )
        stream_col = f"{stream_rate:,.0f}" if stream_rate else "-"
        stream_ratio = f"{r['streaming_ratio']:.2f}" if r["streaming_ratio"] else "-"
        print(
            f"{case.name:<22}{r['seconds']:>9.2f}{rate:>12,.0f}{vs:>9}{r['delivered']:>11,}"
            f"{ref_col:>13}{ratio:>7}{stream_col:>13}{stream_ratio:>7}{r['cpu_s']:>7.2f}"
            f"{r['reference_cpu_s'] or 0:>8.2f}  {case.notes}"
        )
        if ref_rate:
            print(f"{'':<22}reference: {case.reference_notes}")
        for label, more in r["more_references"].items():
            more_rate = n / more["seconds"]
            more["changes_per_s"] = round(more_rate)
            more["ratio"] = round(rate / more_rate, 3)
            more["streaming_ratio"] = round(stream_rate / more_rate, 3) if stream_rate else None
            print(
                f"{'':<22}reference {label}: {more_rate:,.0f}/s, ratio {rate / more_rate:.2f}"
                f" (streaming {more['streaming_ratio'] or 0:.2f}), cpu s {more['cpu_s']:.2f}"
            )
        if r["ledger"]:
            ledger = r["ledger"]
            print(
                f"{'':<22}ledger: {ledger['trips']:,} round trips ({ledger['bare']:,} without"
                f" ids), {ledger['ids']:.1f} ids each, {ledger['unchecked']:,} events unchecked"
            )
        if r["broker_cpu_s"] or ref_rate:
            print(
                f"{'':<22}broker cpu s {r['broker_cpu_s']:.2f} (reference "
                f"{r['reference_broker_cpu_s'] or 0:.2f}), cores busy {r['machine_busy']:.0%} "
                f"(reference {r['reference_machine_busy'] or 0:.0%})"
            )
    result = {
        "benchmark": "brokers",
        "changes": n,
        "transactions": txs,
        "workload": "half single-row transactions, half 100-row transactions",
        "workload_generation_s": round(gen_s, 2),
        "sinks": {c.name: c.result for c in cases},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    if not ok:
        print("ERROR: a sink delivered a different number of events", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
