"""``walrelay doctor --sync-config sync.yaml``: the doctor's review of every
node, plus what only a sync has: sequences of synced tables whose ranges
overlap between nodes (sequences are not synced, so two nodes inserting with
them give the same key twice: ``insert_exists``, one row lost)."""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg

from walrelay.monitor.doctor import DoctorError, Finding, Report, run_doctor
from walrelay.monitor.thresholds import Severity
from walrelay.sqltext import ident, qualified
from walrelay.sync.catalog import SequenceRange, overlapping_sequences, read_sequences
from walrelay.sync.config import SyncSettings

__all__ = ["disjoint_restarts", "review_sync", "sequence_findings"]


def disjoint_restarts(ranges: list[SequenceRange], nodes: list[str]) -> dict[str, int]:
    """A start per node for ``INCREMENT BY len(nodes)``: past every value any
    node's sequence gave, node i gets the values congruent to i."""
    n = len(nodes)
    used = max(
        [r.last_value if r.last_value is not None else r.start - 1 for r in ranges], default=0
    )
    base = (used // n + 1) * n
    return {node: base + i for i, node in enumerate(nodes)}


def _fix(column: list[SequenceRange], nodes: list[str]) -> str:
    restart = disjoint_restarts(column, nodes)
    n = len(nodes)
    by_node = {r.node: r for r in column}
    parts = []
    for node in nodes:
        r = by_node.get(node)
        if r is None:
            continue
        if r.identity:
            sql = (
                f"ALTER TABLE {qualified(r.table)} ALTER COLUMN {ident(r.column)} "
                f"SET INCREMENT BY {n} RESTART WITH {restart[node]}"
            )
        else:
            sql = (
                f"ALTER SEQUENCE {r.sequence} INCREMENT BY {n} "
                f"START WITH {restart[node]} RESTART WITH {restart[node]}"
            )
        parts.append(f"on node {node}: {sql}")
    return "; ".join(parts) + " (or use UUID keys)"


def sequence_findings(settings: SyncSettings, ranges: list[SequenceRange]) -> list[Finding]:
    """One warning per synced column whose sequences can collide between nodes."""
    nodes = list(settings.nodes)
    out = []
    seen: set[tuple[str, str]] = set()
    for x, y in overlapping_sequences(ranges):
        if (x.table, x.column) in seen:
            continue
        seen.add((x.table, x.column))
        column = [r for r in ranges if (r.table, r.column) == (x.table, x.column)]
        out.append(
            Finding(
                "sync_sequence_overlap",
                Severity.WARN,
                f"{x.table}.{x.column}",
                f"sequences are not synced, and {x.sequence} on node {x.node} and "
                f"{y.sequence} on node {y.node} can give the same values: rows inserted "
                "on both nodes collide (insert_exists, one of them lost)",
                _fix(column, nodes),
                {"nodes": sorted({r.node for r in column}), "sequence": x.sequence},
            )
        )
    return out


def review_sync(
    settings: SyncSettings, *, long_transaction_seconds: float | None, record: bool
) -> tuple[dict[str, Report], dict[str, str]]:
    """Each reachable node's doctor report, the sync's findings added to the
    report of every node they name; and why each other node could not be
    reviewed."""
    reports: dict[str, Report] = {}
    failed: dict[str, str] = {}
    ranges: list[SequenceRange] = []
    for node, cfg in settings.nodes.items():
        try:
            reports[node] = run_doctor(
                cfg.dsn_value,
                long_transaction_seconds=long_transaction_seconds,
                slot=settings.slot(node),
                state_schema=settings.state_schema if record else None,
            )
        except DoctorError as e:
            failed[node] = str(e)
            continue
        ranges += _ranges(cfg.dsn_value, node, settings.tables)
    for finding in sequence_findings(settings, ranges):
        for node in finding.details["nodes"]:
            if node in reports:
                reports[node].findings.insert(0, finding)
    for report in reports.values():
        report.findings.sort(key=lambda f: -f.severity.rank)
    return reports, failed


def _ranges(dsn: str, node: str, tables: list[str]) -> list[SequenceRange]:
    out: list[SequenceRange] = []
    with contextlib.suppress(psycopg.Error):
        conn: psycopg.Connection[Any]
        with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as conn:
            for table in tables:
                # A table missing on a node is walrelay sync's start-up error, not ours.
                with contextlib.suppress(psycopg.errors.UndefinedTable):
                    out += read_sequences(conn, node, [table])
    return out
