"""The brokers' own load generators, on the brokers bench/brokers.py starts.

bench/brokers.py compares each sink with a bare *Python* client of the same
library. Those references are far below what the brokers themselves take;
this measures how far, with each broker's own tool, on a broker started the
same way (walrelay.testing.servers, test defaults), with the same message
count and size and the same durability where the tool allows it:

- Kafka: ``ProducerPerformance`` (``kafka-producer-perf-test``), acks=all and
  idempotence; and transactional, a transaction per 100 ms.
- Redis: ``redis-benchmark`` XADD, one connection pipelining 500 (the sink's
  cadence), and 50 connections pipelining 500 (the server's limit).
- RabbitMQ: PerfTest, one producer, persistent messages, publisher confirms
  with at most 100 unconfirmed (the sink's cadence).
- NATS JetStream: ``nats bench js pub async`` (the NATS CLI), one client,
  file storage, a message id per message (de-duplication, as the sink), acks
  awaited per 100 (the reference's cadence).

Install the tools first (not part of the test install):

    bash scripts/servers/install.sh perftools
    .venv/bin/python bench/broker_tools.py [--messages 50000] [--size 290]
        [--only kafka,redis,rabbitmq,nats] [--json bench/results/broker_tools.json]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from walrelay.testing.servers import (
    KafkaServer,
    NatsServer,
    RabbitMQServer,
    RedisServer,
    cache_dir,
)

TOOLS = ("kafka", "redis", "rabbitmq", "nats")
INSTALL = "bash scripts/servers/install.sh perftools"


class ToolMissing(RuntimeError):
    pass


def perftools_dir() -> Path:
    return cache_dir() / "perftools"


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    java = shutil.which("java") or (f"{java_home}/bin/java" if java_home else None)
    if java is None:
        raise ToolMissing("java not found: install a JRE (17+)")
    return java


LOGBACK_WARN = (
    '<configuration><appender name="E" class="ch.qos.logback.core.ConsoleAppender">'
    "<target>System.err</target><encoder><pattern>%msg%n</pattern></encoder></appender>"
    '<root level="WARN"><appender-ref ref="E"/></root></configuration>'
)


def _java_tool(main_class: str, *args: str) -> list[str]:
    """A Java tool from the perftools jars, logging warnings only (logback's
    default is every DEBUG line to the console, which costs the tool most of
    its rate)."""
    config = perftools_dir() / "logback-warn.xml"
    if not config.exists() or config.read_text() != LOGBACK_WARN:
        config.write_text(LOGBACK_WARN)
    return [
        _java(),
        "-Xmx512m",
        f"-Dlogback.configurationFile={config}",
        "-cp",
        _classpath(),
        main_class,
        *args,
    ]


def _classpath() -> str:
    libs = perftools_dir() / "libs"
    if not (libs / ".complete").exists():
        raise ToolMissing(f"{libs} is not installed: run {INSTALL}")
    return f"{libs}/*"


def _run(cmd: list[str], timeout: float = 600) -> str:
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{Path(cmd[0]).name} exited with {done.returncode} after "
            f"{time.monotonic() - t0:.1f}s: {(done.stderr or done.stdout)[-1500:]}"
        )
    return done.stdout + done.stderr


def _rate(pattern: str, text: str, what: str) -> float:
    m = re.search(pattern, text)
    if m is None:
        raise RuntimeError(f"{what}: no rate in its output: {text[-1500:]}")
    return float(m.group(1).replace(",", ""))


def kafka(messages: int, size: int) -> dict[str, float]:
    out: dict[str, float] = {}
    from confluent_kafka.admin import AdminClient, NewTopic

    with KafkaServer() as server:
        admin = AdminClient({"bootstrap.servers": server.bootstrap})
        for future in admin.create_topics([NewTopic("perf-0", 1), NewTopic("perf-1", 1)]).values():
            future.result(60)  # created before timing: the tool times from its first send
        del admin  # closed before the broker stops
        for name, extra in (
            ("idempotent, acks=all", []),
            (
                "transactional, a transaction per 100 ms",
                ["--transactional-id", "perf-tx", "--transaction-duration-ms", "100"],
            ),
        ):
            topic = f"perf-{len(out)}"
            text = _run(
                _java_tool(
                    "org.apache.kafka.tools.ProducerPerformance",
                    "--topic",
                    topic,
                    "--num-records",
                    str(messages),
                    "--record-size",
                    str(size),
                    "--throughput",
                    "-1",
                    *extra,
                    "--producer-props",
                    f"bootstrap.servers={server.bootstrap}",
                    "acks=all",
                    "enable.idempotence=true",
                )
            )
            # The summary line: "N records sent, R records/sec (...)".
            out[name] = _rate(r"records sent, ([0-9.]+) records/sec", text, "ProducerPerformance")
    return out


def redis(messages: int, size: int) -> dict[str, float]:
    tool = shutil.which("redis-benchmark")
    if tool is None:
        raise ToolMissing(f"redis-benchmark not found: run {INSTALL}")
    out: dict[str, float] = {}
    with RedisServer() as server:
        for name, clients in (("1 connection, pipeline 500", "1"), ("50 connections", "50")):
            text = _run(
                [
                    tool,
                    "-h",
                    server.host,
                    "-p",
                    str(server.port),
                    "-n",
                    str(messages),
                    "-c",
                    clients,
                    "-P",
                    "500",
                    "--csv",
                    "XADD",
                    f"perf{clients}",
                    "*",
                    "v",
                    "x" * size,
                ]
            )
            rows = list(csv.reader(io.StringIO(text)))
            out[f"XADD, {name}"] = float(rows[-1][1])
    return out


def rabbitmq(messages: int, size: int) -> dict[str, float]:
    with RabbitMQServer() as server:
        text = _run(
            _java_tool(
                "com.rabbitmq.perf.PerfTest",
                "--uri",
                server.url.rstrip("/"),
                "--producers",
                "1",
                "--consumers",
                "0",
                "--pmessages",
                str(messages),
                "--size",
                str(size),
                "--flag",
                "persistent",
                "--confirm",
                "100",
                "--queue",
                "perf",
                "--auto-delete",
                "false",
            )
        )
    # The summary: "sending rate avg: N msg/s".
    return {
        "persistent, confirms (100 unconfirmed)": _rate(
            r"sending rate avg: ([0-9.,]+) msg/s", text, "PerfTest"
        )
    }


def nats(messages: int, size: int) -> dict[str, float]:
    tool = perftools_dir() / "bin" / "nats"
    if not tool.exists():
        raise ToolMissing(f"{tool} is not installed: run {INSTALL}")
    with NatsServer() as server:
        _run(
            [
                str(tool),
                "--server",
                server.url,
                "stream",
                "add",
                "benchstream",
                "--subjects",
                "perf.subject",
                "--storage",
                "file",
                "--defaults",
            ]
        )
        text = _run(
            [
                str(tool),
                "--server",
                server.url,
                "bench",
                "js",
                "pub",
                "async",
                "perf.subject",
                "--batch",
                "100",
                "--dedup",
                "--purge",
                "--storage",
                "file",
                "--msgs",
                str(messages),
                "--size",
                str(size),
                "--clients",
                "1",
                "--no-progress",
            ]
        )
    # The summary: "... stats: 123,456 msgs/sec ~ ..."
    return {
        "js pub async, file storage, 1 client": _rate(r"([0-9,]+) msgs/sec", text, "nats bench")
    }


RUNNERS: dict[str, Callable[[int, int], dict[str, float]]] = {
    "kafka": kafka,
    "redis": redis,
    "rabbitmq": rabbitmq,
    "nats": nats,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument(
        "--size", type=int, default=290, help="bytes per message (bench/brokers.py events: ~290)"
    )
    ap.add_argument("--only", default=",".join(TOOLS))
    ap.add_argument("--json", default="bench/results/broker_tools.json")
    args = ap.parse_args()
    only = args.only.split(",")
    unknown = set(only) - set(TOOLS)
    if unknown:
        print(f"error: unknown broker(s) {', '.join(sorted(unknown))}: use {', '.join(TOOLS)}")
        return 2
    results: dict[str, Any] = {}
    failed = False
    for name in only:
        try:
            results[name] = RUNNERS[name](args.messages, args.size)
        except ToolMissing as e:
            print(f"error: {name}: {e}", file=sys.stderr)
            failed = True
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            print(f"error: {name}: {e}", file=sys.stderr)
            failed = True
    print(f"{'broker':<10}{'tool run':<45}{'msg/s':>12}")
    for broker, runs in results.items():
        for run, rate in runs.items():
            print(f"{broker:<10}{run:<45}{rate:>12,.0f}")
    print(f"({args.messages:,} messages of {args.size} bytes each)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps(
            {
                "benchmark": "broker_tools",
                "messages": args.messages,
                "size": args.size,
                "results": results,
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_average": [round(x, 2) for x in os.getloadavg()],
                },
            },
            indent=2,
        )
    )
    print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
