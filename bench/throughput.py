"""Throughput: walrelay (file sink) against pg_recvlogical on the same workload.

Both consumers read the same backlog from their own slot, created before the
workload, one after the other so each has the machine to itself. The
reference, pg_recvlogical writing to /dev/null, is bounded by the walsender
(decoding on the server), which is also walrelay's ceiling.

    .venv/bin/python bench/throughput.py [--changes 1000000] [--rows-per-tx N]
        [--json out.json] [--pure-python] [--transforms] [--format debezium --format cloudevents]

``--pure-python`` adds a third run, from its own slot, with the C speedups
off (``WALRELAY_NO_SPEEDUPS=1``). ``--transforms`` adds two more, each from
its own slot: a typical transform chain on the 5-column table (filter +
exclude + rename + hash, keeping every row) and a Python hook returning its
input; the cost per event of each is the time over the run without transforms.
Each ``--format`` adds a run, from its own
slot, with the destination's output format set to it (walrelay.pipeline.formats).
``WALRELAY_BENCH_PROFILE=FILE`` records each walrelay run with py-spy into FILE
(collapsed stacks; the run is then slower by the sampling). py-spy is taken
from the venv's bin, else from PATH.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import psycopg
import yaml

import walrelay
from walrelay import speedups
from walrelay.model import parse_lsn
from walrelay.testing.pgcluster import PgCluster, pg_bindir, start_cluster

OPTIONS = {
    "proto_version": "2",
    "publication_names": "bench_pub",
    "messages": "true",
    "streaming": "true",
}


def setup(cluster: PgCluster, slots: list[str]) -> str:
    dsn = cluster.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "create table bench (id bigint primary key, k int not null, v text not null, "
            "n numeric(12,2) not null, ts timestamptz not null default now())"
        )
        conn.execute("create publication bench_pub for table bench")
        for slot in slots:
            conn.execute("select pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    return dsn


def workload(dsn: str, changes: int, rows_per_tx: int | None = None) -> tuple[int, int, float]:
    """Half the changes as single-row transactions, half as 100-row ones; with
    ``rows_per_tx``, every transaction that many rows (1: the walsender's
    per-transaction cost dominates; 10000: walrelay's per-change cost does).

    Returns (changes, transactions, seconds)."""
    if rows_per_tx is None:
        singles = changes // 2
        size = 100
    else:
        singles = changes if rows_per_tx == 1 else 0
        size = max(1, rows_per_tx)
    batches = (changes - singles) // size
    t0 = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Server-side loops with COMMIT: many small transactions, fast to generate.
        conn.execute(
            f"""
            do $$
            declare i bigint;
            begin
              for i in 1..{singles} loop
                insert into bench (id, k, v, n) values (i, i % 1000, 'single ' || i, i % 9999);
                commit;
              end loop;
              for b in 0..{batches - 1} loop
                insert into bench (id, k, v, n)
                  select {singles} + b * {size} + g, g, 'batch ' || b, g * 1.5
                  from generate_series(1, {size}) g;
                commit;
              end loop;
            end $$;
            """
        )
    return singles + batches * size, singles + batches, time.monotonic() - t0


def end_lsn(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("select pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        return parse_lsn(row[0])


def confirmed(dsn: str, slot: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = %s",
            (slot,),
        ).fetchone()
        assert row is not None
        return parse_lsn(row[0])


def children_cpu() -> float:
    """CPU seconds (user + system) of every child process waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_reference(cluster: PgCluster, target: int) -> tuple[float, float]:
    """Returns (seconds, client CPU seconds)."""
    lsn_text = f"{target >> 32:X}/{target & 0xFFFFFFFF:X}"
    cmd = [
        str(pg_bindir() / "pg_recvlogical"),
        "-d",
        cluster.dsn(),
        "--slot",
        "ref_slot",
        "--start",
        "--no-loop",
        f"--endpos={lsn_text}",
        "-f",
        "/dev/null",
        "-s",
        "1",
    ]
    for k, v in OPTIONS.items():
        cmd += ["-o", f"{k}={v}"]
    cpu0, t0 = children_cpu(), time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.monotonic() - t0, children_cpu() - cpu0


TYPICAL_CHAIN = [
    {"filter": "record.id >= 0"},
    {"exclude": ["ts"]},
    {"rename": {"columns": {"k": "kind"}}},
    {"hash": {"columns": ["v"], "key_env": "BENCH_HASH_KEY"}},
]
IDENTITY_HOOK = "def identity(event):\n    return event\n"


def run_walrelay(
    cluster: PgCluster,
    target: int,
    workdir: Path,
    slot: str,
    pure_python: bool = False,
    transforms: list[dict[str, object]] | None = None,
    fmt: str = "walrelay",
) -> tuple[float, int, int, float]:
    """Returns (seconds, lines written, peak RSS bytes, CPU seconds of the process)."""
    out = workdir / "events.jsonl"
    env = {**os.environ, "BENCH_HASH_KEY": "bench-secret"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(workdir), env.get("PYTHONPATH")]))
    (workdir / "bench_hook.py").write_text(IDENTITY_HOOK)
    if pure_python:
        env["WALRELAY_NO_SPEEDUPS"] = "1"
    cfg = {
        "source": {
            "dsn": cluster.dsn(),
            "slot": slot,
            "publication": "bench_pub",
            "tables": ["public.bench"],
            "status_interval": 1,
        },
        "destinations": [
            {
                "name": "file",
                "sink": {"type": "file", "path": str(out), "fsync": "batch"},
                "transforms": transforms or [],
                **({} if fmt == "walrelay" else {"format": fmt}),
            }
        ],
        "log_level": "warning",
    }
    cfg_path = workdir / "walrelay.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    lsn_text = f"{target >> 32:X}/{target & 0xFFFFFFFF:X}"
    cpu0, t0 = children_cpu(), time.monotonic()
    # Like pg_recvlogical --endpos: the process exits once it has delivered
    # and confirmed everything up to the target, so both timings are whole runs.
    profile = os.environ.get("WALRELAY_BENCH_PROFILE")  # collapsed stacks, by py-spy
    venv_spy = Path(sys.executable).parent / "py-spy"
    spy_bin = str(venv_spy) if venv_spy.exists() else shutil.which("py-spy") or str(venv_spy)
    spy_cmd = [spy_bin, "record", "--format", "raw"]
    spy = [*spy_cmd, "--rate", "200", "--nonblocking", "-o", profile, "--"] if profile else []
    proc = subprocess.Popen(
        [
            *spy,
            sys.executable,
            "-m",
            "walrelay",
            "run",
            "--config",
            str(cfg_path),
            "--until-lsn",
            lsn_text,
        ],
        stderr=open(workdir / "walrelay.log", "wb"),  # noqa: SIM115
        env=env,
    )
    peak = 0
    try:
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, ps.memory_info().rss)
            time.sleep(0.05)  # sampling memory while it runs
        elapsed = time.monotonic() - t0
        cpu = children_cpu() - cpu0  # with py-spy, py-spy's own CPU too
        if proc.returncode != 0:
            raise RuntimeError(
                f"walrelay exited with {proc.returncode}: "
                + (workdir / "walrelay.log").read_text()[-2000:]
            )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    deadline = time.monotonic() + 10
    while confirmed(cluster.dsn(), slot) < target:
        if time.monotonic() > deadline:
            raise RuntimeError("walrelay stopped before confirming the target LSN")
        time.sleep(0.05)  # the walsender applies the last status update after we exit
    with open(out, "rb") as f:
        lines = sum(1 for _ in f)
    return elapsed, lines, peak, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--changes", type=int, default=1_000_000)
    ap.add_argument("--json", default="bench/results/throughput.json")
    ap.add_argument(
        "--rows-per-tx",
        type=int,
        default=None,
        metavar="N",
        help="every transaction N rows (default: half single-row, half 100-row)",
    )
    ap.add_argument(
        "--transforms",
        action="store_true",
        help="also run with a typical transform chain, and with a Python hook",
    )
    ap.add_argument(
        "--pure-python",
        action="store_true",
        help="also run walrelay with its C speedups off (WALRELAY_NO_SPEEDUPS=1)",
    )
    ap.add_argument(
        "--format",
        action="append",
        default=[],
        choices=["debezium", "cloudevents"],
        help="also run walrelay with this output format (repeatable)",
    )
    args = ap.parse_args()

    # Time the run, not compiling walrelay's modules (PYTHONDONTWRITEBYTECODE
    # would otherwise make every start compile them again).
    compileall.compile_dir(Path(walrelay.__file__).parent, quiet=1)
    if not speedups.ENABLED:
        print("warning: walrelay._speedups is not built; measuring the pure-Python paths")
    cluster = start_cluster({"logical_decoding_work_mem": "64MB"})
    try:
        slots = ["ref_slot", "walrelay_slot"] + (["walrelay_py_slot"] if args.pure_python else [])
        if args.transforms:
            slots += ["walrelay_chain_slot", "walrelay_hook_slot"]
        slots += [f"walrelay_{fmt}_slot" for fmt in args.format]
        dsn = setup(cluster, slots)
        n, txs, gen_s = workload(dsn, args.changes, args.rows_per_tx)
        target = end_lsn(dsn)
        ref_s, ref_cpu = run_reference(cluster, target)
        with tempfile.TemporaryDirectory(prefix="walrelay-bench-") as tmp:
            wr_s, lines, peak, wr_cpu = run_walrelay(cluster, target, Path(tmp), "walrelay_slot")
        py: tuple[float, int, int, float] | None = None
        if args.pure_python:
            with tempfile.TemporaryDirectory(prefix="walrelay-bench-") as tmp:
                py = run_walrelay(cluster, target, Path(tmp), "walrelay_py_slot", pure_python=True)
        shaped: dict[str, tuple[float, int, int, float]] = {}
        if args.transforms:
            for name, slot, chain in (
                ("typical_chain", "walrelay_chain_slot", TYPICAL_CHAIN),
                ("python_hook", "walrelay_hook_slot", [{"python": "bench_hook:identity"}]),
            ):
                with tempfile.TemporaryDirectory(prefix="walrelay-bench-") as tmp:
                    shaped[name] = run_walrelay(cluster, target, Path(tmp), slot, transforms=chain)
        formats: dict[str, tuple[float, int, int, float]] = {}
        for fmt in args.format:
            with tempfile.TemporaryDirectory(prefix="walrelay-bench-") as tmp:
                formats[fmt] = run_walrelay(
                    cluster, target, Path(tmp), f"walrelay_{fmt}_slot", fmt=fmt
                )
    finally:
        cluster.stop()
    ok = (
        lines == n
        and (py is None or py[1] == n)
        and all(r[1] == n for r in [*shaped.values(), *formats.values()])
    )
    if not ok:
        written = f"{lines}" if py is None else f"{lines} (pure Python: {py[1]})"
        print(f"ERROR: walrelay wrote {written} events, expected {n}", file=sys.stderr)
    ref_rate, wr_rate = n / ref_s, n / wr_s
    result = {
        "benchmark": "throughput",
        "changes": n,
        "transactions": txs,
        "workload": (
            "half single-row transactions, half 100-row transactions"
            if args.rows_per_tx is None
            else f"{args.rows_per_tx}-row transactions"
        ),
        "workload_generation_s": round(gen_s, 2),
        "pg_recvlogical": {
            "seconds": round(ref_s, 3),
            "changes_per_s": round(ref_rate),
            "cpu_s_per_million": round(ref_cpu / n * 1e6, 2),
        },
        "walrelay_file_sink": {
            "seconds": round(wr_s, 3),
            "changes_per_s": round(wr_rate),
            "events_written": lines,
            "peak_rss_mb": round(peak / 2**20, 1),
            "cpu_s_per_million": round(wr_cpu / n * 1e6, 2),
        },
        "ratio": round(wr_rate / ref_rate, 3),
        "walrelay_pure_python": None
        if py is None
        else {
            "seconds": round(py[0], 3),
            "changes_per_s": round(n / py[0]),
            "events_written": py[1],
            "peak_rss_mb": round(py[2] / 2**20, 1),
            "cpu_s_per_million": round(py[3] / n * 1e6, 2),
            "ratio": round(ref_s / py[0], 3),
        },
        "transforms": {
            name: {
                "seconds": round(r[0], 3),
                "changes_per_s": round(n / r[0]),
                "events_written": r[1],
                "peak_rss_mb": round(r[2] / 2**20, 1),
                "cpu_s_per_million": round(r[3] / n * 1e6, 2),
                "extra_us_per_event": round((r[0] - wr_s) / n * 1e6, 2),
            }
            for name, r in shaped.items()
        },
        "formats": {
            fmt: {
                "seconds": round(f[0], 3),
                "changes_per_s": round(n / f[0]),
                "events_written": f[1],
                "peak_rss_mb": round(f[2] / 2**20, 1),
                "cpu_s_per_million": round(f[3] / n * 1e6, 2),
                "ratio": round(ref_s / f[0], 3),
            }
            for fmt, f in formats.items()
        },
        "c_speedups": speedups.ENABLED,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    print(f"{'consumer':<24}{'seconds':>10}{'changes/s':>14}{'CPU s / 1M':>12}")
    print(f"{'pg_recvlogical':<24}{ref_s:>10.2f}{ref_rate:>14,.0f}{ref_cpu / n * 1e6:>12.2f}")
    print(f"{'walrelay (file sink)':<24}{wr_s:>10.2f}{wr_rate:>14,.0f}{wr_cpu / n * 1e6:>12.2f}")
    if py is not None:
        print(f"{'walrelay, pure Python':<24}{py[0]:>10.2f}{n / py[0]:>14,.0f}")
    for name, r in shaped.items():
        extra = (r[0] - wr_s) / n * 1e6
        print(f"{'walrelay, ' + name:<24}{r[0]:>10.2f}{n / r[0]:>14,.0f}   (+{extra:.1f} us/event)")
    for fmt, f in formats.items():
        print(f"{'walrelay, ' + fmt:<24}{f[0]:>10.2f}{n / f[0]:>14,.0f}")
    print(
        f"ratio walrelay / pg_recvlogical: {wr_rate / ref_rate:.3f}   "
        f"(peak RSS {peak / 2**20:.0f} MiB, {n:,} changes in {txs:,} transactions)"
    )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
