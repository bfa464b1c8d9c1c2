"""``walrelay sync``: two-way sync between PostgreSQL databases.

``walrelay sync --config sync.yaml [--initial copy-from NODE]`` runs every
direction; ``walrelay sync conflicts`` lists what was resolved and how;
``walrelay sync status`` shows each direction's position, lag and conflicts.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

import click
import orjson
import psycopg
from psycopg.rows import dict_row

from walrelay.cli.main import run_until_signalled, setup_logging
from walrelay.errors import WalrelayError

__all__ = ["sync_command"]


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"walrelay: error: {message}", err=True)
    sys.exit(code)


def _settings(config_path: str) -> Any:
    from walrelay.sync.config import load_sync_config

    try:
        return load_sync_config(config_path)
    except WalrelayError as e:
        _fail(str(e), e.exit_code)


_CONFIG = click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False), help="sync.yaml"
)


@click.group("sync", invoke_without_command=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="sync.yaml")
@click.option(
    "--initial",
    nargs=2,
    type=(click.Choice(["copy-from"]), str),
    default=None,
    metavar="copy-from NODE",
    help="first copy the tables from NODE to the other nodes, then sync both ways",
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info"
)
@click.option(
    "--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port"
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
@click.pass_context
def sync_command(
    ctx: click.Context,
    config_path: str | None,
    initial: tuple[str, str] | None,
    log_level: str,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Keep tables identical on two or more PostgreSQL databases, both ways."""
    if ctx.invoked_subcommand is not None:
        return
    if config_path is None:
        raise click.UsageError("missing option '--config'")
    settings = _settings(config_path)
    source = initial[1] if initial else None
    if source is not None and source not in settings.nodes:
        _fail(
            f"--initial copy-from {source}: no such node; nodes are {', '.join(settings.nodes)}",
            2,
        )
    from walrelay.sync.runner import SyncRunner

    setup_logging(log_level)
    runner = SyncRunner(settings)

    async def main() -> None:
        if metrics_port is not None:
            from walrelay.sync.metrics import serve_metrics

            serve_metrics(runner, metrics_host, metrics_port)
        await runner.run(source)

    run_until_signalled(main, runner.stop)


def _each_node(settings: Any, node: str | None, fn: Callable[[str, Any], None]) -> None:
    for name, cfg in settings.nodes.items():
        if node is not None and name != node:
            continue
        try:
            with psycopg.connect(cfg.dsn_value, connect_timeout=5, row_factory=dict_row) as conn:
                fn(name, conn)
        except psycopg.OperationalError as e:
            click.echo(f"node {name}: unreachable ({str(e).strip().splitlines()[-1]})", err=True)


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


@sync_command.command("conflicts")
@_CONFIG
@click.option("--table", default=None, help="only this table (schema.name)")
@click.option("--node", default=None, help="only the conflicts detected on this node")
@click.option("--limit", default=100, show_default=True, help="newest N per node")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def conflicts_command(
    config_path: str, table: str | None, node: str | None, limit: int, as_json: bool
) -> None:
    """List the conflicts detected on each node and how they were resolved."""
    from walrelay.config import qualify
    from walrelay.state.sync import read_conflicts

    settings = _settings(config_path)
    if node is not None and node not in settings.nodes:
        _fail(f"--node {node}: no such node; nodes are {', '.join(settings.nodes)}", 2)
    wanted = qualify(table) if table else None

    def show(name: str, conn: Any) -> None:
        try:
            rows = read_conflicts(conn, settings.state_schema, settings.name, wanted, limit)
        except psycopg.errors.UndefinedTable:
            rows = []
        for r in rows:
            if as_json:
                click.echo(orjson.dumps({"node": name, **r}, default=str).decode())
                continue
            click.echo(
                f"{_when(r['detected_at'])}  node {name}  {r['table_name']} "
                f"{orjson.dumps(r['key']).decode()}  {r['conflict']}  -> {r['resolution']}\n"
                f"    local  {r['local_origin'] or '-'} at {_when(r['local_committed_at'])}: "
                f"{orjson.dumps(r['local_row']).decode()}\n"
                f"    remote {r['remote_origin']} at {_when(r['remote_committed_at'])}: "
                f"{orjson.dumps(r['remote_row']).decode()}"
            )

    _each_node(settings, node, show)


@sync_command.command("status")
@_CONFIG
@click.option("--json", "as_json", is_flag=True, help="one JSON object per direction")
def status_command(config_path: str, as_json: bool) -> None:
    """Each direction's applied position, lag behind its source and conflicts."""
    settings = _settings(config_path)
    heads: dict[str, dict[str, Any]] = {}

    def head(name: str, conn: Any) -> None:
        row = conn.execute(
            "select pg_current_wal_lsn()::text as lsn, now() as now, "
            "(select confirmed_flush_lsn::text from pg_replication_slots where slot_name = %s) "
            "as confirmed",
            (settings.slot(name),),
        ).fetchone()
        heads[name] = row

    _each_node(settings, None, head)

    def directions(name: str, conn: Any) -> None:
        for src in settings.nodes:
            if src == name:
                continue
            origin = settings.origin(src)
            row = conn.execute(
                "select pg_replication_origin_progress(%s, false)::text as applied",
                (origin,),
            ).fetchone()
            try:
                n = conn.execute(
                    f"select conflict, count(*) as n from {_q(settings.state_schema)}.conflicts "
                    "where sync_name = %s and remote_origin = %s group by conflict",
                    (settings.name, src),
                ).fetchall()
            except psycopg.errors.UndefinedTable:
                conn.rollback()
                n = []
            src_head = heads.get(src)
            lag = None
            if src_head is not None and row["applied"] is not None:
                lag = _lsn(src_head["lsn"]) - _lsn(row["applied"])
            info = {
                "direction": f"{src}->{name}",
                "applied_lsn": row["applied"],
                "source_lsn": src_head["lsn"] if src_head else None,
                "lag_bytes": max(lag, 0) if lag is not None else None,
                "conflicts": {r["conflict"]: r["n"] for r in n},
            }
            if as_json:
                click.echo(orjson.dumps(info).decode())
            else:
                click.echo(
                    f"{info['direction']:<20} applied {info['applied_lsn'] or '-':<14} "
                    f"source at {info['source_lsn'] or '-':<14} lag "
                    f"{'-' if info['lag_bytes'] is None else str(info['lag_bytes']) + ' B':<12} "
                    f"conflicts {info['conflicts'] or 'none'}"
                )

    _each_node(settings, None, directions)
    _warn_sequences(settings)


def _warn_sequences(settings: Any) -> None:
    """Sequences are not synced: two nodes whose sequences can give the same
    value will collide on insert (insert_exists, one row lost)."""
    from walrelay.sync.catalog import SequenceRange, overlapping_sequences, read_sequences

    ranges: list[SequenceRange] = []

    def read(name: str, conn: Any) -> None:
        with contextlib.suppress(psycopg.errors.UndefinedTable):
            ranges.extend(read_sequences(conn, name, settings.tables))

    _each_node(settings, None, read)
    for x, y in overlapping_sequences(ranges):
        click.echo(
            f"warning: {x.table}.{x.column}: sequences {x.sequence} on node {x.node} and "
            f"{y.sequence} on node {y.node} can give the same values -- fix: give each node "
            f"its own range or step (e.g. ALTER SEQUENCE ... INCREMENT BY {len(settings.nodes)} "
            "with a different START on each node), or use UUIDs",
            err=True,
        )


def _q(name: str) -> str:
    from walrelay.sqltext import ident

    return ident(name)


def _lsn(text: str) -> int:
    from walrelay.model import parse_lsn

    return parse_lsn(text)
