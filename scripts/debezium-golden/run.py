"""Regenerate the Debezium golden files the suite compares ``format: debezium`` with.

Fetches Debezium's embedded engine and PostgreSQL connector from Maven Central
(pom.xml), starts a throwaway PostgreSQL cluster, creates the type matrix
(tests/data/debezium/setup.sql), writes the snapshot rows, runs Debezium,
runs the streamed workload (stream.sql) and writes what Debezium emitted to
tests/data/debezium/golden.jsonl (one record a line: destination, key, value).
Run it by hand (not in CI); it needs Java 17 and Maven:

    python scripts/debezium-golden/run.py [--libs DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from walrelay.testing.pgcluster import start_cluster

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "tests" / "data" / "debezium"


def fetch_jars(libs: Path) -> None:
    if (libs / ".complete").exists():
        return
    libs.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "mvn",
            "-B",
            "-q",
            "-f",
            str(HERE / "pom.xml"),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={libs}",
        ],
        check=True,
    )
    (libs / ".complete").touch()


def run_sql(dsn: str, path: Path) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(path.read_text())


def wait_lines(path: Path, proc: subprocess.Popen[bytes], count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= count:
            return
        if proc.poll() is not None:
            raise SystemExit(f"Debezium exited with {proc.returncode}")
        time.sleep(0.2)
    raise SystemExit(f"Debezium wrote fewer than {count} records in {timeout}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--libs", type=Path, default=Path("/tmp/walrelay-debezium-libs"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--transaction-metadata",
        action="store_true",
        help="provide.transaction.metadata=true (writes golden-transactions.jsonl)",
    )
    parser.add_argument(
        "--schemas",
        action="store_true",
        help="JsonConverter schemas.enable=true (writes golden-schemas.jsonl: the worker's"
        " Debezium input tests read it)",
    )
    args = parser.parse_args()
    if args.out is None:
        name = "golden-transactions.jsonl" if args.transaction_metadata else "golden.jsonl"
        if args.schemas:
            name = "golden-schemas.jsonl"
        args.out = DATA / name
    fetch_jars(args.libs)
    cluster = start_cluster()
    try:
        admin = cluster.dsn()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("create database golden")
        dsn = cluster.dsn("golden")
        run_sql(dsn, DATA / "setup.sql")
        run_sql(dsn, DATA / "snapshot.sql")
        raw = args.out.with_suffix(".raw")
        raw.unlink(missing_ok=True)
        classpath = ":".join(str(p) for p in sorted(args.libs.glob("*.jar")))
        proc = subprocess.Popen(
            [
                "java",
                "-cp",
                classpath,
                str(HERE / "GoldenRunner.java"),
                str(cluster.port),
                "golden",
                str(raw),
                "true" if args.transaction_metadata else "false",
                "true" if args.schemas else "false",
            ],
        )
        try:
            snapshot_rows = 3  # the rows of snapshot.sql
            wait_lines(raw, proc, snapshot_rows, 120)
            with psycopg.connect(dsn, autocommit=True) as conn:
                for statement in split_statements((DATA / "stream.sql").read_text()):
                    conn.execute(statement)
            if proc.wait(timeout=120) != 0:
                raise SystemExit(f"Debezium exited with {proc.returncode}")
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
        raw.replace(args.out)
        print(f"wrote {args.out} ({args.out.read_text().count(chr(10))} records)")
    finally:
        cluster.stop()


def split_statements(text: str) -> list[str]:
    """stream.sql, one statement a line group (ends with ';' at a line end)."""
    out: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("--") and not current:
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            out.append("\n".join(current))
            current = []
    return out


if __name__ == "__main__":
    sys.exit(main())
