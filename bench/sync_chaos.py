"""Two-way sync chaos: concurrent writers on every node over hot keys, walrelay
SIGKILLed and restarted, one node stopped and restarted; then judge convergence.

For 2 and then 3 nodes (real PostgreSQL clusters, ``track_commit_timestamp =
on``), one ``walrelay sync`` child process runs with ``last_write_wins``
while a writer per node commits random inserts, updates and deletes of
``--keys`` hot keys (each insert/update writes a unique token ``node:seq``),
for ``--seconds``. Meanwhile walrelay is SIGKILLed ``--kills`` times at random
moments and restarted, and one node's server is stopped and started once (its
writer waits for it), with one more SIGKILL and restart of walrelay just as
the node goes down, so that walrelay's start-up meets a node going away.
Then the writers stop, walrelay catches up, and:

- **identical**: every node's table has the same ordered hash of all rows;
- **no duplicate apply**: an audit trigger on every node records each token
  written there; no token written by the sync appears twice on a node, and the
  tokens the sync wrote on each node are exactly the other nodes' tokens minus
  those a conflict resolution dropped (``keep_local`` in the conflicts log);
- **no echo**: once converged, no row of the synced table is written on any
  node for 2 s (the audit trigger sees every insert, update and delete);
- **last write wins**: every key holds the version with the greatest (commit
  time, lower priority number) among all writes (a delete: no row), computed
  from the writers' own log and their commit times.

    .venv/bin/python bench/sync_chaos.py            # 2 and 3 nodes, 40 s of writes each
    .venv/bin/python bench/sync_chaos.py --short    # 2 and 3 nodes, 6 s each (the suite's)

Prints the figures, writes JSON (default bench/results/sync_chaos.json), exits 1
if any check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from walrelay.testing.pgcluster import PgCluster, start_cluster

SETTINGS = {
    "track_commit_timestamp": "on",
    "wal_sender_timeout": "20s",
    # As in production: a commit is flushed (and so decodable) when it returns.
    "synchronous_commit": "on",
}
NAMES = ("a", "b", "c")
PRIORITY = {"a": 1, "b": 2, "c": 3}

DDL = [
    "create table public.items (id int primary key, v text not null)",
    "create table public.audit (seq bigserial primary key, token text not null, "
    "by_sync boolean not null, at timestamptz not null default clock_timestamp())",
    # by_sync: the writing session runs under a replication origin (walrelay's
    # applier). A delete is recorded as 'delete:<token of the deleted row>'.
    "create function public.audit_write() returns trigger language plpgsql as $$ begin "
    "insert into public.audit (token, by_sync) values ("
    "case when TG_OP = 'DELETE' then 'delete:' || OLD.v else NEW.v end, "
    "pg_replication_origin_session_is_setup()); return NEW; end $$",
    "create trigger audit after insert or update or delete on public.items "
    "for each row execute function public.audit_write()",
]


@dataclass
class Plan:
    seconds: float
    keys: int
    kills: int
    rate: float  # transactions per second per writer
    seed: int


@dataclass
class Write:
    node: str
    key: int
    op: str  # insert | update | delete
    token: str | None
    xid: str


@dataclass
class Log:
    writes: list[Write] = field(default_factory=list)
    failed: int = 0


async def writer(
    node: str,
    dsn: str,
    plan: Plan,
    log: Log,
    stop: asyncio.Event,
    keys: range | None = None,
) -> None:
    rnd = random.Random(f"{plan.seed}-{node}")
    key_range = keys or range(plan.keys)
    seq = 0
    conn: psycopg.AsyncConnection[Any] | None = None
    while not stop.is_set():
        if conn is None:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    dsn, autocommit=True, connect_timeout=2
                )
            except psycopg.OperationalError:
                await asyncio.sleep(0.2)  # the node is down: wait for it
                continue
        key = rnd.choice(key_range)
        roll = rnd.random()
        seq += 1
        token = f"{node}:{seq}"
        if roll < 0.3:
            op, q, params = (
                "insert",
                "insert into items values (%s, %s) on conflict do nothing returning 1",
                (key, token),
            )
        elif roll < 0.8:
            op, q, params = (
                "update",
                "update items set v = %s where id = %s returning 1",
                (token, key),
            )
        else:
            op, q, params = "delete", "delete from items where id = %s returning 1", (key,)
        try:
            async with conn.transaction():
                cur = await conn.execute("select pg_current_xact_id()::text")
                row = await cur.fetchone()
                xid = str(row[0]) if row else ""
                cur = await conn.execute(q, params)
                hit = await cur.fetchone() is not None
                if hit:
                    # Logged before COMMIT: a lost commit answer still has its xid.
                    log.writes.append(Write(node, key, op, token if op != "delete" else None, xid))
        except psycopg.OperationalError:
            log.failed += 1
            with contextlib.suppress(Exception):
                await conn.close()
            conn = None
            continue
        except psycopg.Error:
            log.failed += 1
            continue
        if plan.rate:
            await asyncio.sleep(rnd.expovariate(plan.rate))  # pacing of the workload
    if conn is not None:
        await conn.close()


class Walrelay:
    """``walrelay sync`` as a child process, SIGKILLed by its own pid."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        with open(self.log, "ab") as out:  # noqa: ASYNC230 - handed to the child
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "walrelay",
                "sync",
                "--config",
                str(self.config),
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        self.starts += 1

    def describe(self) -> str:
        """Whether the process still runs, and its log's warnings and errors."""
        proc = self.proc
        state = (
            "not running"
            if proc is None
            else f"running (pid {proc.pid})"
            if proc.returncode is None
            else f"EXITED with code {proc.returncode}"
        )
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        notable = [ln for ln in lines if " WARNING " in ln or " ERROR " in ln or "rror" in ln]
        return f"walrelay {state}; its last warnings/errors:\n" + "\n".join(notable[-12:])

    async def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()


def query(dsn: str, q: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(q, params)
        return cur.fetchall() if cur.description else []


def table_hash(dsn: str) -> str:
    return str(
        query(
            dsn, "select md5(coalesce(string_agg(id || '=' || v, ',' order by id), '')) from items"
        )[0][0]
    )


def commit_times(dsn: str, xids: list[str]) -> dict[str, datetime | None]:
    rows = query(
        dsn,
        "select x, pg_xact_commit_timestamp(x::xid8::xid) from unnest(%s::text[]) x",
        (xids,),
    )
    return {str(x): ts for x, ts in rows}


def lww_oracle(
    writes: list[Write], times: dict[tuple[str, str], datetime | None]
) -> dict[int, str]:
    best: dict[int, tuple[tuple[datetime, int], Write]] = {}
    for w in writes:
        ts = times.get((w.node, w.xid))
        if ts is None:
            continue  # rolled back (the connection dropped before COMMIT)
        rank = (ts, -PRIORITY[w.node])
        if w.key not in best or rank > best[w.key][0]:
            best[w.key] = (rank, w)
    return {k: w.token for k, (_, w) in best.items() if w.token is not None}


async def slots_created(dsns: dict[str, str], name: str) -> None:
    def missing() -> list[str]:
        return [
            n
            for n, d in dsns.items()
            if not query(
                d,
                "select 1 from pg_replication_slots where slot_name = %s",
                (f"walrelay_sync_{name}_{n}",),
            )
        ]

    while missing():  # noqa: ASYNC110 - polling what another process creates
        await asyncio.sleep(0.1)


async def converge(dsns: dict[str, str], within: float, log: Log, relay: Walrelay) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within:
        try:
            hashes = {table_hash(d) for d in dsns.values()}
        except psycopg.OperationalError:
            hashes = {"down", "x"}
        if len(hashes) == 1:
            return time.monotonic() - start
        await asyncio.sleep(0.2)  # polling the nodes
    rows = {
        n: {
            int(k): (v, str(ts), o)
            for k, v, ts, o in query(
                d,
                "select id, v, c.timestamp, c.roident from items "
                "left join lateral pg_xact_commit_timestamp_origin(xmin) c on true",
            )
        }
        for n, d in dsns.items()
    }
    keys = sorted({k for r in rows.values() for k in r})
    diff = [
        f"{k}: " + ", ".join(f"{n}={r.get(k)}" for n, r in rows.items())
        for k in keys
        if len({str(r.get(k, (None,))[0]) for r in rows.values()}) > 1
    ]
    bad = {int(d.split(":")[0]) for d in diff[:1]}
    history = [f"{w.node} {w.op} {w.key} {w.token} xid {w.xid}" for w in log.writes if w.key in bad]
    raise AssertionError(
        f"nodes did not converge within {within}s: {len(diff)} keys differ: "
        + "; ".join(diff[:5])
        + "\n"
        + relay.describe()
        + f"\nthe last writes of key {min(bad)}:\n"
        + "\n".join(history[-15:])
        + f"\nconflicts logged for key {min(bad)}:\n"
        + "\n".join(
            f"{n}: {c}"
            for n, d in dsns.items()
            for c in query(
                d,
                "select conflict, resolution, local_row->>'v', local_committed_at, "
                "remote_origin, remote_row->>'v', remote_committed_at from walrelay.conflicts "
                "where key->>'id' = %s order by id desc limit 4",
                (str(min(bad)),),
            )
        )
    )


async def scenario(
    nodes: tuple[str, ...], clusters: dict[str, PgCluster], plan: Plan, workdir: Path, say: Any
) -> dict[str, Any]:
    rnd = random.Random(plan.seed * 31 + len(nodes))
    db = f"chaos{len(nodes)}"
    dsns: dict[str, str] = {}
    for n in nodes:
        c = clusters[n]
        query(c.dsn(), f"drop database if exists {db} with (force)")
        query(c.dsn(), f"create database {db}")
        for stmt in DDL:
            query(c.dsn(db), stmt)
        dsns[n] = c.dsn(db)
    config = workdir / f"sync{len(nodes)}.yaml"
    config.write_text(
        json.dumps(
            {
                "sync": {
                    "name": f"chaos{len(nodes)}",
                    "nodes": {n: {"dsn": dsns[n], "priority": PRIORITY[n]} for n in nodes},
                    "tables": ["public.items"],
                    "reconnect": {"initial": 0.2, "max": 1.0},
                    "status_interval": 2,
                }
            }
        )
    )
    relay = Walrelay(config, workdir / f"walrelay{len(nodes)}.log")
    try:  # stopped by its pid even when a check fails
        return await chaos(nodes, clusters, plan, dsns, relay, rnd, say)
    finally:
        await relay.stop()


async def chaos(
    nodes: tuple[str, ...],
    clusters: dict[str, PgCluster],
    plan: Plan,
    dsns: dict[str, str],
    relay: Walrelay,
    rnd: random.Random,
    say: Any,
) -> dict[str, Any]:
    """Writers, SIGKILLs and a node outage; then the checks."""
    await relay.start()
    # The first run creates the slots: writes start once they exist.
    await slots_created(dsns, f"chaos{len(nodes)}")
    log = Log()
    stop = asyncio.Event()
    writers = [asyncio.create_task(writer(n, dsns[n], plan, log, stop)) for n in nodes]
    started = time.monotonic()
    kill_at = sorted(rnd.uniform(0.1, 0.9) * plan.seconds for _ in range(plan.kills))
    outage_node = nodes[-1]
    outage_at = rnd.uniform(0.3, 0.5) * plan.seconds
    outage = 0.0
    kills = 0
    stopped_node = False
    while time.monotonic() - started < plan.seconds:
        now = time.monotonic() - started
        if kill_at and now >= kill_at[0]:
            kill_at.pop(0)
            await relay.kill()
            kills += 1
            say(f"  SIGKILL #{kills} at {now:.1f}s; {len(log.writes)} writes so far")
            await relay.start()
        if not stopped_node and now >= outage_at:
            stopped_node = True
            # walrelay restarts as the node goes down: its start-up meets a node
            # that is going away (or already gone), which it must wait for.
            await relay.kill()
            kills += 1
            await relay.start()
            t0 = time.monotonic()
            await asyncio.to_thread(clusters[outage_node].stop, remove=False)
            say(f"  SIGKILL #{kills} and node {outage_node} stopped at {now:.1f}s")
            await asyncio.sleep(min(2.0, plan.seconds / 5))  # the node stays down a while
            await asyncio.to_thread(clusters[outage_node].restart)
            outage = time.monotonic() - t0
            say(f"  node {outage_node} back after {outage:.1f}s")
        await asyncio.sleep(0.05)  # the chaos schedule's clock
    stop.set()
    await asyncio.gather(*writers)
    write_seconds = time.monotonic() - started
    converge_s = await converge(dsns, within=60, log=log, relay=relay)
    # No echo: once converged, no row of the synced table is written anywhere
    # (the audit sees every insert, update and delete) for 2 s without writers.
    # (pg_last_committed_xact would also see walrelay trimming tombstones.)
    probe = "select coalesce(max(seq), 0), pg_current_wal_lsn()::text from audit"
    before = {n: query(d, probe)[0] for n, d in dsns.items()}
    await asyncio.sleep(2.0)  # an echo loop would write within this window
    after = {n: query(d, probe)[0] for n, d in dsns.items()}
    no_echo = all(before[n][0] == after[n][0] for n in nodes)
    wal_moved = {n: before[n][1] != after[n][1] for n in nodes}
    await relay.stop()
    # The oracle.
    times: dict[tuple[str, str], datetime | None] = {}
    for n in nodes:
        xids = [w.xid for w in log.writes if w.node == n]
        for x, ts in commit_times(dsns[n], xids).items():
            times[(n, x)] = ts
    expected = lww_oracle(log.writes, times)
    actual = {int(k): str(v) for k, v in query(dsns[nodes[0]], "select id, v from items")}
    lww_mismatch = sorted(
        k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k)
    )
    # Duplicates and the applied count, per node.
    committed_tokens = {
        w.token: w.node for w in log.writes if w.token is not None and times.get((w.node, w.xid))
    }
    per_node: dict[str, Any] = {}
    duplicates = 0
    count_mismatch = 0
    conflicts: Counter[str] = Counter()
    for n in nodes:
        applied = [
            str(t)
            for (t,) in query(
                dsns[n], "select token from audit where by_sync and token not like 'delete:%'"
            )
        ]
        dup = sum(c - 1 for c in Counter(applied).values() if c > 1)
        # Tokens whose conflict on this node kept the local version: not applied there.
        dropped = {
            str(t)
            for (t,) in query(
                dsns[n],
                "select remote_row->>'v' from walrelay.conflicts "
                "where resolution = 'keep_local' and remote_row ? 'v'",
            )
        }
        for kind, cnt in query(
            dsns[n], "select conflict, count(*) from walrelay.conflicts group by 1"
        ):
            conflicts[str(kind)] += int(cnt)
        foreign = {t for t, src in committed_tokens.items() if src != n}
        expected_applied = foreign - dropped
        missing = len(expected_applied - set(applied))
        extra = len(set(applied) - foreign)
        duplicates += dup
        count_mismatch += missing + extra
        per_node[n] = {
            "writes": sum(1 for w in log.writes if w.node == n and times.get((w.node, w.xid))),
            "applied_here": len(applied),
            "expected_applied": len(expected_applied),
            "duplicates": dup,
            "missing": missing,
            "unexpected": extra,
        }
    hashes = {n: table_hash(d) for n, d in dsns.items()}
    result = {
        "nodes": len(nodes),
        "writes_committed": sum(1 for w in log.writes if times.get((w.node, w.xid))),
        "write_errors": log.failed,
        "write_seconds": round(write_seconds, 1),
        "sigkills": kills,
        "node_outage": {"node": outage_node, "seconds": round(outage, 1)},
        "per_node": per_node,
        "conflicts": dict(conflicts),
        "converge_seconds": round(converge_s, 2),
        "identical": len(set(hashes.values())) == 1,
        "duplicates": duplicates,
        "applied_count_mismatch": count_mismatch,
        "no_echo": no_echo,
        "wal_moved_after_convergence": wal_moved,
        "lww_mismatches": len(lww_mismatch),
        "lww_mismatch_keys": lww_mismatch[:10],
        "keys_present": len(actual),
    }
    result["ok"] = (
        result["identical"]
        and duplicates == 0
        and count_mismatch == 0
        and no_echo
        and not lww_mismatch
    )
    return result


async def steady(clusters: dict[str, PgCluster], plan: Plan, workdir: Path) -> dict[str, Any]:
    """Two nodes, each writing its own keys (no conflicts) for plan.seconds:
    apply rate and lag (source commit -> row written on the target) per direction."""
    nodes = NAMES[:2]
    dsns = {}
    for n in nodes:
        c = clusters[n]
        query(c.dsn(), "create database steady")
        for stmt in DDL:
            query(c.dsn("steady"), stmt)
        dsns[n] = c.dsn("steady")
    config = workdir / "steady.yaml"
    config.write_text(
        json.dumps(
            {
                "sync": {
                    "name": "steady",
                    "nodes": {n: {"dsn": dsns[n], "priority": PRIORITY[n]} for n in nodes},
                    "tables": ["public.items"],
                }
            }
        )
    )
    relay = Walrelay(config, workdir / "walrelay-steady.log")
    try:  # stopped by its pid even when a check fails
        return await steady_load(nodes, plan, dsns, relay)
    finally:
        await relay.stop()


async def steady_load(
    nodes: tuple[str, ...], plan: Plan, dsns: dict[str, str], relay: Walrelay
) -> dict[str, Any]:
    await relay.start()
    await slots_created(dsns, "steady")
    log = Log()
    stop = asyncio.Event()
    half = plan.keys
    writers = [
        asyncio.create_task(writer(n, dsns[n], plan, log, stop, range(i * half, (i + 1) * half)))
        for i, n in enumerate(nodes)
    ]
    await asyncio.sleep(plan.seconds)  # the load runs this long
    stop.set()
    await asyncio.gather(*writers)
    await converge(dsns, within=120, log=log, relay=relay)
    # Catch-up: a backlog of single-row transactions on each node while walrelay
    # is stopped, then the time both directions take to apply it.
    await relay.stop()
    backlog = 2000
    for i, n in enumerate(nodes):
        base = 10_000_000 * (i + 1)
        query(
            dsns[n],
            f"do $$ begin for k in 1..{backlog} loop "
            f"insert into items values ({base} + k, 'backlog'); commit; end loop; end $$",
        )
    t0 = time.monotonic()
    await relay.start()
    await converge(dsns, within=300, log=log, relay=relay)
    catch_up = time.monotonic() - t0
    await relay.stop()
    out: dict[str, Any] = {
        "catch_up": {
            "transactions_per_node": backlog,
            "seconds_including_start": round(catch_up, 2),
            "transactions_per_second_per_direction": round(backlog / catch_up, 1),
        }
    }
    for src, dst in ((nodes[0], nodes[1]), (nodes[1], nodes[0])):
        mine = [w for w in log.writes if w.node == src and w.token is not None]
        times = commit_times(dsns[src], [w.xid for w in mine])
        committed = {w.token: times[w.xid] for w in mine if times.get(w.xid) is not None}
        applied = {
            str(t): at for t, at in query(dsns[dst], "select token, at from audit where by_sync")
        }
        lags = sorted(
            (applied[t] - ts).total_seconds() for t, ts in committed.items() if t in applied
        )
        out[f"{src}->{dst}"] = {
            "source_writes": sum(1 for w in log.writes if w.node == src),
            "applied": len(lags),
            "source_writes_per_second": round(
                sum(1 for w in log.writes if w.node == src) / plan.seconds, 1
            ),
            "lag_ms_p50": round(1000 * lags[len(lags) // 2], 1) if lags else None,
            "lag_ms_p99": round(1000 * lags[int(len(lags) * 0.99)], 1) if lags else None,
            "lag_ms_max": round(1000 * lags[-1], 1) if lags else None,
        }
    return {"seconds": plan.seconds, "rate_per_writer": plan.rate, "directions": out}


async def run(
    plan: Plan, workdir: Path, verbose: bool, steady_only: bool = False
) -> dict[str, Any]:
    def say(msg: str) -> None:
        if verbose:
            print(msg, flush=True)

    t0 = time.monotonic()
    with ThreadPoolExecutor(3) as pool:
        clusters = dict(zip(NAMES, pool.map(lambda _: start_cluster(SETTINGS), NAMES), strict=True))
    try:
        say(f"clusters up in {time.monotonic() - t0:.1f}s")
        if steady_only:
            return {
                "benchmark": "sync_steady",
                "ok": True,
                **(await steady(clusters, plan, workdir)),
            }
        results = []
        for nodes in (NAMES[:2], NAMES):
            say(f"{len(nodes)} nodes: writing for {plan.seconds}s over {plan.keys} keys")
            results.append(await scenario(nodes, clusters, plan, workdir, say))
        return {
            "benchmark": "sync_chaos",
            "plan": plan.__dict__,
            "scenarios": results,
            "ok": all(r["ok"] for r in results),
            "seconds": round(time.monotonic() - t0, 1),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        }
    finally:
        for c in clusters.values():
            c.stop()


def main() -> int:
    ap = argparse.ArgumentParser(
        description="Two-way sync under chaos: converge, exactly once, no echo, LWW."
    )
    ap.add_argument("--short", action="store_true", help="6 s of writes per scenario, 2 kills")
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--keys", type=int)
    ap.add_argument("--kills", type=int)
    ap.add_argument("--rate", type=float, help="transactions per second per writer")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--json", help="default: bench/results/sync_chaos.json")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument(
        "--steady",
        action="store_true",
        help="instead: 2 nodes writing their own keys, apply rate and lag per direction",
    )
    args = ap.parse_args()
    plan = (
        Plan(6.0, 30, 2, 150.0, args.seed) if args.short else Plan(40.0, 200, 8, 300.0, args.seed)
    )
    for name in ("seconds", "keys", "kills", "rate"):
        if getattr(args, name) is not None:
            setattr(plan, name, getattr(args, name))
    with tempfile.TemporaryDirectory(prefix="walrelay-sync-chaos-") as tmp:
        try:
            result = asyncio.run(run(plan, Path(tmp), not args.quiet, args.steady))
        except BaseException:
            if os.environ.get("SYNC_CHAOS_KEEP"):
                import shutil

                shutil.copytree(tmp, os.environ["SYNC_CHAOS_KEEP"], dirs_exist_ok=True)
            for log in sorted(Path(tmp).glob("walrelay*.log")):
                sys.stderr.write(f"--- {log.name}\n" + log.read_text(errors="replace")[-4000:])
            raise
        if not result["ok"]:
            for log in sorted(Path(tmp).glob("walrelay*.log")):
                sys.stderr.write(f"--- {log.name}\n" + log.read_text(errors="replace")[-3000:])
    if args.steady:
        print(json.dumps(result, indent=2, default=str))
        out = Path(args.json or "bench/results/sync_steady.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str))
        return 0
    for r in result["scenarios"]:
        print(
            f"sync chaos, {r['nodes']} nodes: {r['writes_committed']} writes in "
            f"{r['write_seconds']}s "
            f"({r['write_errors']} failed while a node was down); {r['sigkills']} SIGKILLs, node "
            f"{r['node_outage']['node']} down {r['node_outage']['seconds']}s; converged in "
            f"{r['converge_seconds']}s"
        )
        print(
            f"  identical: {r['identical']}; duplicates {r['duplicates']}; applied-count "
            f"mismatches {r['applied_count_mismatch']}; no echo: {r['no_echo']}; LWW mismatches "
            f"{r['lww_mismatches']} of {r['keys_present']} keys present"
        )
        print(f"  conflicts: {r['conflicts']}")
        print("  per node: " + "; ".join(f"{n}: {v}" for n, v in r["per_node"].items()))
    out = Path(args.json or "bench/results/sync_chaos.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"ok: {result['ok']}; {result['seconds']}s; JSON in {out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
