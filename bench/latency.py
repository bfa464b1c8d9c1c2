"""Latency: commit -> visible to a reader of the destination, on one clock.

One PostgreSQL cluster (``synchronous_commit = on``, ``fsync = on``). A writer
process offers a fixed rate of changes per second: every 10 ms one transaction
of ``rate / 100`` rows, each row carrying ``clock_timestamp()`` as epoch
seconds (taken as the row is inserted, so each figure includes the commit's
WAL flush). Readers in this process stamp each row with ``time.time()`` the
moment it becomes readable, and the latency is the difference: the same wall
clock on the same machine.

For each sink, one after the other, with its own fresh slot: ``walrelay run``
with that destination, and in the same run ``pg_recvlogical`` (plugin
``test_decoding``, to stdout; its own slot) as the floor -- what the
walsender itself takes to send a committed change. Each rate runs for
``--seconds`` after a warm-up row has been seen by both readers and
``--warmup`` seconds (default 3) at that rate, not measured, have passed
through both: a JVM broker reaches its steady state (JIT) before anything
counts, as it has in production; the Kafka floor is warmed the same way.

For Kafka, a second floor after walrelay's run, on the same broker:
``bench/kafka_floor.py``, a bare transactional producer offered the same rate,
committing continuously with the same ``transaction_spacing`` (what any
exactly-once Python producer pays here before reading a slot).

Readers: the file sink's file is tailed (polled every 1 ms: up to ~1 ms of the
figure is the reader's); Kafka exactly_once is read by a ``read_committed``
consumer (``fetch.wait.max.ms`` 5, so the consumer's fetch wait is not what is
measured), polled so that a record is stamped as soon as the client has it
(``consume(n, timeout)`` waits for all ``n`` or the timeout: until session 10
that put up to 50 ms of the reader's own wait into every Kafka figure).

    .venv/bin/python bench/latency.py [--rates 1000,10000,50000] [--seconds 10]
        [--sinks file,kafka,nats,webhook,postgres] [--json bench/results/latency.json]
        [--set kafka.transaction_spacing=0.005 ...]
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import multiprocessing as mp
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import yaml

import kafka_floor
import walrelay
from walrelay.testing.pgcluster import PgCluster, pg_bindir, start_cluster
from walrelay.testing.servers import KafkaServer, NatsServer, free_ports

PREFIX = "lat"
SINKS = ("file", "kafka", "nats", "webhook", "postgres")
TICK = 0.01  # one transaction every 10 ms
WARMUP_RATE = 0  # rows tagged with rate 0 are the warm-up, not measured

# The rate and commit time of a row, as each reader sees it.
JSON_ROW = re.compile(rb'"lat_rate":\s*(\d+).*?"lat_t":\s*([0-9.eE+-]+)')
JSON_ROW_REV = re.compile(rb'"lat_t":\s*([0-9.eE+-]+).*?"lat_rate":\s*(\d+)')
DECODING_ROW = re.compile(rb"lat_rate\[integer\]:(\d+) lat_t\[double precision\]:(\S+)")


class Samples:
    """Latencies (seconds) per offered rate, appended by reader threads."""

    def __init__(self) -> None:
        self.by_rate: dict[int, list[float]] = defaultdict(list)
        self.lock = threading.Lock()

    def add_json(self, raw: bytes, arrived: float) -> None:
        m = JSON_ROW.search(raw)
        if m is not None:
            rate, t = int(m.group(1)), float(m.group(2))
        else:
            m = JSON_ROW_REV.search(raw)
            if m is None:
                return
            rate, t = int(m.group(2)), float(m.group(1))
        with self.lock:
            self.by_rate[rate].append(arrived - t)

    def add_decoding(self, raw: bytes, arrived: float) -> None:
        m = DECODING_ROW.search(raw)
        if m is not None:
            with self.lock:
                self.by_rate[int(m.group(1))].append(arrived - float(m.group(2)))

    def count(self, rate: int) -> int:
        with self.lock:
            return len(self.by_rate.get(rate, ()))


# -- writer -----------------------------------------------------------------------------


def writer(dsn: str, rate: int, seconds: float, done: Any, tag: int) -> None:
    """Offers ``rate`` changes/s for ``seconds``, each row tagged ``tag`` (the
    rate, or WARMUP_RATE); puts (rows, elapsed) in ``done``."""
    per_tx = max(1, rate // 100)
    rows = 0
    with psycopg.connect(dsn) as conn:
        t0 = time.monotonic()
        next_tick = t0
        while True:
            now = time.monotonic()
            if now - t0 >= seconds:
                break
            if now < next_tick:
                time.sleep(next_tick - now)  # pacing the offered rate
            conn.execute(
                "insert into lat (lat_rate, lat_t) "
                "select %s, extract(epoch from clock_timestamp()) from generate_series(1, %s)",
                (tag, per_tx),
            )
            conn.commit()
            rows += per_tx
            next_tick += TICK
        done.put((rows, time.monotonic() - t0))


def offer(dsn: str, rate: int, seconds: float, tag: int | None = None) -> tuple[int, float]:
    ctx = mp.get_context("spawn")
    done = ctx.Queue()
    args = (dsn, rate, seconds, done, rate if tag is None else tag)
    proc = ctx.Process(target=writer, args=args)
    proc.start()
    rows, elapsed = done.get(timeout=seconds + 60)
    proc.join(timeout=30)
    return rows, elapsed


# -- readers ----------------------------------------------------------------------------


def tail_file(path: Path, samples: Samples, stop: threading.Event) -> None:
    while not path.exists() and not stop.is_set():
        time.sleep(0.001)  # the sink creates the file when it starts
    with open(path, "rb") as f:
        buf = b""
        while not stop.is_set():
            chunk = f.read(1 << 20)
            if not chunk:
                time.sleep(0.001)  # polling the file: no inotify in the stdlib
                continue
            arrived = time.time()
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                samples.add_json(line, arrived)


def read_kafka(bootstrap: str, samples: Samples, stop: threading.Event) -> None:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "lat-reader",
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 5,
            "topic.metadata.refresh.interval.ms": 1000,
        }
    )
    try:
        consumer.subscribe([f"{PREFIX}.public.lat"])
        while not stop.is_set():
            for msg, arrived in kafka_floor.kafka_arrivals(consumer):
                if msg.error() is None:
                    samples.add_json(msg.value() or b"", arrived)
    finally:
        consumer.close()


def read_nats(url: str, samples: Samples, stop: threading.Event) -> None:
    """A core subscription on the stream's subjects: JetStream delivers a
    message to it as the server stores it."""
    import asyncio

    import nats

    async def go() -> None:
        nc = await nats.connect(url)

        async def on_msg(msg: Any) -> None:
            samples.add_json(msg.data, time.time())

        await nc.subscribe(f"{PREFIX}.>", cb=on_msg)
        await asyncio.to_thread(stop.wait)
        await nc.close()

    asyncio.run(go())


def serve_webhook(port: int, samples: Samples, stop: threading.Event) -> None:
    """An aiohttp receiver answering 200 to every POST (one event per request)."""
    import asyncio

    from aiohttp import web

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        arrived = time.time()
        for line in body.split(b"\n"):  # one event, or JSON lines if batched
            samples.add_json(line, arrived)
        return web.Response(status=200)

    async def go() -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.to_thread(stop.wait)
        await runner.cleanup()

    asyncio.run(go())


def poll_target(dsn: str, samples: Samples, stop: threading.Event) -> None:
    last = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            rows = conn.execute(
                "select id, lat_rate, lat_t from lat where id > %s order by id", (last,)
            ).fetchall()
            arrived = time.time()
            if not rows:
                time.sleep(0.002)  # polling the target table
                continue
            with samples.lock:
                for _id, rate, t in rows:
                    samples.by_rate[rate].append(arrived - t)
            # Ids are committed in order per source transaction, and the sink
            # applies transactions in commit order (ordered mode).
            last = rows[-1][0]


def read_recvlogical(proc: subprocess.Popen[bytes], samples: Samples) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        samples.add_decoding(line, time.time())


# -- one sink's run -------------------------------------------------------------------


def walrelay_config(cluster: PgCluster, slot: str, sink: dict[str, Any]) -> dict[str, Any]:
    return {
        "source": {
            "dsn": cluster.dsn(),
            "slot": slot,
            "publication": "lat_pub",
            "tables": ["public.lat"],
            "status_interval": 1,
        },
        "destinations": [{"name": "dest", "sink": sink}],
        "http": {"enabled": False},
        "log_level": "warning",
    }


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)

    def at(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 2)

    return {"p50_ms": at(0.5), "p99_ms": at(0.99), "p99_9_ms": at(0.999), "max_ms": at(1.0)}


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)  # polling the readers' counts


def wait_progress(seen: Callable[[], int], rows: int, stall: float = 30) -> bool:
    """Waits until ``rows`` are seen; False once nothing new arrives for ``stall`` s."""
    last, since = -1, time.monotonic()
    while (n := seen()) < rows:
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since > stall:
            return False
        time.sleep(0.05)  # polling the readers' counts
    return True


def run_sink(
    cluster: PgCluster,
    name: str,
    sink: dict[str, Any],
    reader: Callable[[Samples, threading.Event], None],
    rates: list[int],
    seconds: float,
    workdir: Path,
    warmup: float,
) -> dict[str, Any]:
    dsn = cluster.dsn()
    slot, ref_slot = f"lat_{name}", f"lat_{name}_ref"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        conn.execute("select pg_create_logical_replication_slot(%s, 'test_decoding')", (ref_slot,))
    cfg_path = workdir / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(walrelay_config(cluster, slot, sink)))
    wr_samples, ref_samples = Samples(), Samples()
    stop = threading.Event()
    log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115
    wr = subprocess.Popen(
        [sys.executable, "-m", "walrelay", "run", "--config", str(cfg_path)], stderr=log
    )
    ref = subprocess.Popen(
        [
            str(pg_bindir() / "pg_recvlogical"),
            "-d",
            dsn,
            "--slot",
            ref_slot,
            "--start",
            "-f",
            "-",
            "-s",
            "1",
        ],
        stdout=subprocess.PIPE,
    )
    threads = [
        threading.Thread(target=reader, args=(wr_samples, stop), daemon=True),
        threading.Thread(target=read_recvlogical, args=(ref, ref_samples), daemon=True),
    ]
    for t in threads:
        t.start()
    result: dict[str, Any] = {}

    def seen_by_both(tag: int) -> int:
        return min(wr_samples.count(tag), ref_samples.count(tag))

    def warmed_since(before: int) -> int:
        return seen_by_both(WARMUP_RATE) - before

    try:
        # Warm-up: both readers have seen a row before anything is measured.
        def warm() -> bool:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(
                    "insert into lat (lat_rate, lat_t) "
                    "values (%s, extract(epoch from clock_timestamp()))",
                    (WARMUP_RATE,),
                )
            if wr.poll() is not None:
                raise RuntimeError(
                    f"walrelay exited with {wr.returncode}: "
                    + (workdir / f"{name}.log").read_text()[-2000:]
                )
            time.sleep(0.5)  # one warm-up row per half second until both have arrived
            return wr_samples.count(WARMUP_RATE) > 0 and ref_samples.count(WARMUP_RATE) > 0

        wait_for(warm, f"{name}: the first row through walrelay", timeout=120)
        for rate in rates:
            if warmup > 0:
                # The same rate, not measured: a JVM broker and walrelay alike
                # reach their steady state before anything counts.
                before = seen_by_both(WARMUP_RATE)
                warm_rows, _ = offer(dsn, rate, warmup, tag=WARMUP_RATE)
                wait_progress(partial(warmed_since, before), warm_rows)
            rows, elapsed = offer(dsn, rate, seconds)

            complete = wait_progress(partial(seen_by_both, rate), rows)
            result[str(rate)] = {
                "offered_per_s": rate,
                "achieved_per_s": round(rows / elapsed),
                "rows": rows,
                "rows_seen": {
                    "walrelay": wr_samples.count(rate),
                    "pg_recvlogical": ref_samples.count(rate),
                },
                "complete": complete,
                "walrelay": percentiles(wr_samples.by_rate[rate]),
                "pg_recvlogical": percentiles(ref_samples.by_rate[rate]),
            }
    finally:
        stop.set()
        for proc in (wr, ref):
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.close()
        for t in threads:
            t.join(timeout=10)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for s in (slot, ref_slot):
                conn.execute("select pg_drop_replication_slot(%s)", (s,))
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rates", default="1000,10000,50000")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument(
        "--warmup",
        type=float,
        default=3.0,
        help="seconds at each rate before it is measured (not counted); 0: none",
    )
    ap.add_argument("--sinks", default="file,kafka,nats,webhook,postgres")
    ap.add_argument("--json", default="bench/results/latency.json")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SINK.KEY=VALUE",
        help="a sink setting for this run, e.g. kafka.transaction_spacing=0.005 (YAML value)",
    )
    args = ap.parse_args()
    settings: dict[str, dict[str, Any]] = {}
    for item in args.set:
        target, _, value = item.partition("=")
        sink_name, _, key = target.partition(".")
        if sink_name not in SINKS or not key or not value:
            print(f"error: --set {item!r}: use SINK.KEY=VALUE with SINK one of {', '.join(SINKS)}")
            return 2
        settings.setdefault(sink_name, {})[key] = yaml.safe_load(value)
    rates = [int(r) for r in args.rates.split(",")]
    sinks = args.sinks.split(",")
    unknown = set(sinks) - set(SINKS)
    if unknown:
        print(f"error: unknown sink(s) {', '.join(sorted(unknown))}: use {', '.join(SINKS)}")
        return 2

    sys.setswitchinterval(0.0005)  # reader threads stamp arrivals promptly
    compileall.compile_dir(Path(walrelay.__file__).parent, quiet=1)
    cluster = start_cluster({"synchronous_commit": "on", "fsync": "on"})
    results: dict[str, Any] = {}
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(
                "create table lat (id bigserial primary key, lat_rate int not null, "
                "lat_t double precision not null)"
            )
            conn.execute("create publication lat_pub for table lat")
            conn.execute("create database lat_target")
        with psycopg.connect(cluster.dsn("lat_target"), autocommit=True) as conn:
            conn.execute(
                "create table lat (id bigint primary key, lat_rate int not null, "
                "lat_t double precision not null)"
            )
        with tempfile.TemporaryDirectory(prefix="walrelay-lat-") as tmp:
            workdir = Path(tmp)
            if "file" in sinks:
                out = workdir / "events.jsonl"
                results["file"] = run_sink(
                    cluster,
                    "file",
                    {
                        "type": "file",
                        "path": str(out),
                        "fsync": "batch",
                        **settings.get("file", {}),
                    },
                    lambda s, stop: tail_file(out, s, stop),
                    rates,
                    args.seconds,
                    workdir,
                    args.warmup,
                )
            if "kafka" in sinks:
                with KafkaServer() as kafka:
                    results["kafka exactly_once"] = run_sink(
                        cluster,
                        "kafka",
                        {
                            "type": "kafka",
                            "bootstrap_servers": kafka.bootstrap,
                            "prefix": PREFIX,
                            **settings.get("kafka", {}),
                        },
                        lambda s, stop: read_kafka(kafka.bootstrap, s, stop),
                        rates,
                        args.seconds,
                        workdir,
                        args.warmup,
                    )
                    spacing = float(settings.get("kafka", {}).get("transaction_spacing", 0.01))
                    for rate in rates:
                        samples = Samples()
                        sent = kafka_floor.measure(
                            kafka.bootstrap, rate, args.seconds, spacing, samples, args.warmup
                        )
                        row = results["kafka exactly_once"][str(rate)]
                        row["bare producer"] = percentiles(samples.by_rate[rate])
                        row["rows_seen"]["bare producer"] = samples.count(rate)
                        row["complete"] = row["complete"] and samples.count(rate) >= sent
            if "nats" in sinks:
                with NatsServer() as nats_server:
                    results["nats jetstream"] = run_sink(
                        cluster,
                        "nats",
                        {
                            "type": "nats",
                            "servers": nats_server.url,
                            "prefix": PREFIX,
                            "stream": "LAT",
                            **settings.get("nats", {}),
                        },
                        lambda s, stop: read_nats(nats_server.url, s, stop),
                        rates,
                        args.seconds,
                        workdir,
                        args.warmup,
                    )
            if "webhook" in sinks:
                port = free_ports()[0]
                results["webhook"] = run_sink(
                    cluster,
                    "webhook",
                    {
                        "type": "webhook",
                        "url": f"http://127.0.0.1:{port}/hook",
                        **settings.get("webhook", {}),
                    },
                    lambda s, stop: serve_webhook(port, s, stop),
                    rates,
                    args.seconds,
                    workdir,
                    args.warmup,
                )
            if "postgres" in sinks:
                target = cluster.dsn("lat_target")
                results["postgres (ordered)"] = run_sink(
                    cluster,
                    "postgres",
                    {"type": "postgres", "dsn": target, **settings.get("postgres", {})},
                    lambda s, stop: poll_target(target, s, stop),
                    rates,
                    args.seconds,
                    workdir,
                    args.warmup,
                )
    finally:
        cluster.stop()

    print(
        f"{'sink':<20}{'rate/s':>8}{'got/s':>8}  {'':<15}{'p50':>8}{'p99':>8}{'p99.9':>8}{'max':>8}"
    )
    for sink, by_rate in results.items():
        for rate, r in by_rate.items():
            for who in ("walrelay", "pg_recvlogical", "bare producer"):
                p = r.get(who)
                if not p:
                    continue
                print(
                    f"{sink:<20}{rate:>8}{r['achieved_per_s']:>8}  {who:<15}"
                    f"{p['p50_ms']:>8.1f}{p['p99_ms']:>8.1f}{p['p99_9_ms']:>8.1f}{p['max_ms']:>8.1f}"
                )
    print("(milliseconds, commit -> readable)")
    incomplete = [
        f"{k} at {r}/s" for k, v in results.items() for r, x in v.items() if not x["complete"]
    ]
    if incomplete:
        print(
            f"ERROR: rows missing (the latencies cover those that arrived): {', '.join(incomplete)}"
        )
    out_json = {
        "benchmark": "latency",
        "seconds_per_rate": args.seconds,
        "warmup_seconds_per_rate": args.warmup,
        "settings": {"synchronous_commit": "on", "fsync": "on", "transaction_every_ms": 10},
        "sink_settings": settings,
        "results": results,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out_json, indent=2))
    print(f"wrote {args.json}")
    return 1 if incomplete else 0


if __name__ == "__main__":
    sys.exit(main())
