"""Memory: one large transaction through walrelay, streamed and not streamed.

One PostgreSQL cluster with ``logical_decoding_work_mem = 64kB`` and one
transaction of ``--rows`` rows (default 5,000,000) inserted into a 5-column
table. Each case reads it from its own slot, created before the transaction,
with ``walrelay run --until-lsn <end>`` (it exits once everything is delivered
and confirmed):

- streamed: ``source.streaming: true``, so the server sends the transaction
  in progress, in chunks, as it exceeds the 64kB;
- not streamed: ``source.streaming: false``, so the server spills it to disk
  and sends it whole after its commit -- walrelay holds it until it can
  deliver (``source.spill_memory_bytes``, then its own spill files).

Through the file sink and the Kafka sink (exactly_once). For each case: peak
RSS of the walrelay process (psutil, sampled every 50 ms), the events that
arrived (lines in the file, or messages a ``read_committed`` consumer reads),
and the slot's confirmed_flush_lsn at the end against the end of the WAL.

    .venv/bin/python bench/memory.py [--rows 5000000] [--sinks file,kafka]
        [--json bench/results/memory.json]
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg
import yaml

import walrelay
from walrelay.model import format_lsn
from walrelay.testing.kafka_reading import reading_consumer
from walrelay.testing.pgcluster import PgCluster, start_cluster
from walrelay.testing.servers import KafkaServer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import confirmed, end_lsn

LIMIT_MB = 300


def setup(dsn: str, slots: list[str]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "create table big (id bigint primary key, k int not null, v text not null, "
            "n numeric(12,2) not null, ts timestamptz not null default now())"
        )
        conn.execute("create publication big_pub for table big")
        for slot in slots:
            conn.execute("select pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))


def one_transaction(dsn: str, rows: int) -> float:
    t0 = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "insert into big (id, k, v, n) "
            "select g, g %% 1000, 'row ' || g, g %% 9999 from generate_series(1, %s) g",
            (rows,),
        )
    return time.monotonic() - t0


def count_file(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def count_kafka(bootstrap: str, topic: str) -> int:
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    consumer = reading_consumer(bootstrap, "memory-count", eof=True)
    try:
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


def run_case(
    cluster: PgCluster,
    slot: str,
    streaming: bool,
    sink: dict[str, Any],
    target: int,
    workdir: Path,
) -> dict[str, Any]:
    cfg = {
        "source": {
            "dsn": cluster.dsn(),
            "slot": slot,
            "publication": "big_pub",
            "tables": ["public.big"],
            "status_interval": 1,
            "streaming": streaming,
            "spill_dir": str(workdir / f"{slot}-spill"),
        },
        "destinations": [{"name": "dest", "sink": sink}],
        "http": {"enabled": False},
        "log_level": "warning",
    }
    cfg_path = workdir / f"{slot}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    log_path = workdir / f"{slot}.log"
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "walrelay",
                "run",
                "--config",
                str(cfg_path),
                "--until-lsn",
                format_lsn(target),
            ],
            stderr=log,
        )
        peak = 0
        try:
            ps = psutil.Process(proc.pid)
            while proc.poll() is None:
                with contextlib.suppress(psutil.Error):
                    peak = max(peak, ps.memory_info().rss)
                time.sleep(0.05)  # sampling memory while it runs
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
    elapsed = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"walrelay exited with {proc.returncode}: {log_path.read_text()[-2000:]}"
        )
    deadline = time.monotonic() + 10
    while confirmed(cluster.dsn(), slot) < target and time.monotonic() < deadline:
        time.sleep(0.05)  # the walsender applies the last status update after we exit
    return {
        "seconds": round(elapsed, 2),
        "peak_rss_mb": round(peak / 2**20, 1),
        "slot_confirmed": confirmed(cluster.dsn(), slot) >= target,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--sinks", default="file,kafka")
    ap.add_argument("--json", default="bench/results/memory.json")
    args = ap.parse_args()
    sinks = args.sinks.split(",")
    unknown = set(sinks) - {"file", "kafka"}
    if unknown:
        print(f"error: unknown sink(s) {', '.join(sorted(unknown))}: use file, kafka")
        return 2

    compileall.compile_dir(Path(walrelay.__file__).parent, quiet=1)
    cases = [(sink, streaming) for sink in sinks for streaming in (True, False)]

    def slot_of(sink: str, streaming: bool) -> str:
        return f"mem_{sink}_{'streamed' if streaming else 'whole'}"

    cluster = start_cluster({"logical_decoding_work_mem": "64kB"})
    results: dict[str, Any] = {}
    try:
        dsn = cluster.dsn()
        setup(dsn, [slot_of(*c) for c in cases])
        gen_s = one_transaction(dsn, args.rows)
        target = end_lsn(dsn)
        with tempfile.TemporaryDirectory(prefix="walrelay-mem-") as tmp:
            workdir = Path(tmp)
            kafka = KafkaServer().start() if "kafka" in sinks else None
            try:
                for sink, streaming in cases:
                    slot = slot_of(sink, streaming)
                    if sink == "file":
                        out = workdir / f"{slot}.jsonl"
                        cfg: dict[str, Any] = {"type": "file", "path": str(out), "fsync": "batch"}
                    else:
                        assert kafka is not None
                        cfg = {
                            "type": "kafka",
                            "bootstrap_servers": kafka.bootstrap,
                            "prefix": slot,
                        }
                    r = run_case(cluster, slot, streaming, cfg, target, workdir)
                    if sink == "file":
                        r["events"] = count_file(out)
                    else:
                        assert kafka is not None
                        r["events"] = count_kafka(kafka.bootstrap, f"{slot}.public.big")
                    r["nothing_lost"] = r["events"] == args.rows
                    name = f"{sink}, {'streamed' if streaming else 'not streamed'}"
                    results[name] = r
            finally:
                if kafka is not None:
                    kafka.stop()
    finally:
        cluster.stop()

    print(f"{args.rows:,} rows in one transaction (inserted in {gen_s:.1f} s)")
    print(f"{'case':<26}{'seconds':>9}{'peak RSS MiB':>14}{'events':>11}  slot confirmed")
    for name, r in results.items():
        print(
            f"{name:<26}{r['seconds']:>9.1f}{r['peak_rss_mb']:>14.1f}{r['events']:>11,}  "
            f"{'yes' if r['slot_confirmed'] else 'NO'}"
        )
    ok = all(r["nothing_lost"] and r["slot_confirmed"] for r in results.values())
    over = [n for n, r in results.items() if r["peak_rss_mb"] > LIMIT_MB]
    if over:
        print(f"over {LIMIT_MB} MiB: {', '.join(over)}")
    if not ok:
        print("ERROR: a case lost events or left the slot behind", file=sys.stderr)
    out_json = {
        "benchmark": "memory",
        "rows": args.rows,
        "settings": {"logical_decoding_work_mem": "64kB"},
        "insert_seconds": round(gen_s, 2),
        "results": results,
        "limit_mb": LIMIT_MB,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out_json, indent=2))
    print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
