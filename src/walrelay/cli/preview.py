"""``walrelay preview``: sample rows through a destination's transforms, before and after.

Reads a few rows of each published table (or ``--table``) in a read-only
transaction, builds each as the ``read`` event a snapshot would send, and
prints it before and after the destination's steps -- so a user checks their
masking and hashing before anything leaves the database. Nothing is written
anywhere; no slot or publication is touched.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import click
import orjson

from walrelay import exact_json
from walrelay.errors import ConfigError, WalrelayError

_INDENT = orjson.OPT_INDENT_2


@dataclass
class Shown:
    """One sample row of one destination: the event before, and what the steps made of it."""

    destination: str
    table: str
    before: dict[str, Any]
    after: list[dict[str, Any]]  # one per event sent (fan out: several; empty: dropped)
    note: str = ""


@click.command("preview")
@click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False), help="walrelay.yaml"
)
@click.option("--destination", default=None, help="one destination (default: every one)")
@click.option("--table", default=None, help="schema.table (default: every published table)")
@click.option("--limit", type=click.IntRange(1, 1000), default=5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of text")
def preview_command(
    config_path: str, destination: str | None, table: str | None, limit: int, as_json: bool
) -> None:
    """Print sample rows before and after each destination's transforms (read-only)."""
    from walrelay.config import load_config, qualify

    try:
        config = load_config(config_path)
        dests = config.destinations
        if destination is not None:
            dests = [d for d in dests if d.name == destination]
            if not dests:
                raise ConfigError(
                    f"no destination named {destination!r}",
                    fix="use one of: " + ", ".join(d.name for d in config.destinations),
                )
        tables = list(config.source.tables)
        if table is not None:
            if qualify(table) not in tables:
                raise ConfigError(
                    f"table {qualify(table)} is not in source.tables",
                    fix="preview one of: " + ", ".join(tables),
                )
            tables = [qualify(table)]
        shown = asyncio.run(sample(config, dests, tables, limit))
    except WalrelayError as e:
        click.echo(f"walrelay: error: {e}", err=True)
        sys.exit(e.exit_code)
    for s in shown:
        if as_json:
            line = {"destination": s.destination, "table": s.table, "before": s.before}
            click.echo(exact_json.dumps({**line, "after": s.after, "note": s.note}).decode())
            continue
        key = exact_json.dumps(s.before.get("key")).decode()
        click.echo(f"== {s.destination}  {s.table}  key {key}")
        click.echo("-- before")
        click.echo(exact_json.dumps(s.before, option=_INDENT).decode())
        click.echo("-- after" + (f"  ({s.note})" if s.note else ""))
        for body in s.after:
            click.echo(exact_json.dumps(body, option=_INDENT).decode())
        click.echo("")


async def sample(config: Any, dests: list[Any], tables: list[str], limit: int) -> list[Shown]:
    """The sample rows of ``tables`` through the chains of ``dests``."""
    import psycopg
    from psycopg import sql

    from walrelay.model import Begin, Change
    from walrelay.pipeline.envelope import EnvelopeBuilder
    from walrelay.pipeline.transforms import build_chain
    from walrelay.source.slot import inspect_table
    from walrelay.source.snapshot import connect_reader, relation_for, select_list, table_ident
    from walrelay.source.types import TypeRegistry

    src = config.source
    try:
        conn = await connect_reader(src.dsn_value)
    except psycopg.OperationalError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"cannot connect to the source database {src.masked_dsn}: {first}",
            fix="check source.dsn and that the server is running",
        ) from None
    try:
        await conn.execute("set transaction read only")
        infos = {t: await inspect_table(conn, t, src.key_columns.get(t)) for t in src.tables}
        catalog = {t: info.columns for t, info in infos.items()}
        chains = {d.name: build_chain(d, catalog) for d in dests}
        builder = EnvelopeBuilder(
            TypeRegistry(), key_columns={t: i.key_columns for t, i in infos.items()}
        )
        begin = Begin(xid=0, commit_lsn=0, committed_at=datetime.now(UTC))
        out: list[Shown] = []
        for name in tables:
            rel = await relation_for(conn, infos[name])
            cur = await conn.execute(
                sql.SQL("select {} from {} limit {}").format(
                    select_list(rel), table_ident(rel), sql.Literal(limit)
                )
            )
            rows = await cur.fetchall()
            for seq, row in enumerate(rows):
                event = builder.build(begin, Change(op="read", relation=rel, new=tuple(row)), seq)
                for d in dests:
                    if d.tables is not None and name not in d.tables:
                        continue
                    out.append(_shown(d.name, event, chains[d.name]))
        return out
    finally:
        await conn.rollback()
        await conn.close()


def _shown(destination: str, event: Any, chain: Any) -> Shown:
    from walrelay.model import Event

    before = event.envelope()
    if chain is None:
        return Shown(destination, event.table, before, [before], "no transforms")
    result = chain.apply(event)
    if result is None:
        return Shown(destination, event.table, before, [], "dropped")
    events: list[Event] = result if isinstance(result, list) else [result]
    after: list[dict[str, Any]] = []
    notes: list[str] = []
    for e in events:
        if e.failure is not None:
            notes.append("failed: " + e.failure.strip().splitlines()[-1])
            continue
        after.append(exact_json.loads(e.body))
        if e.route is not None:
            notes.append(f"topic {e.route.topic}, message key {e.route.key}")
        elif e.key_json is not None and e.key_json != event.key_json:
            notes.append(f"key {e.key_json.decode()}")
    return Shown(destination, event.table, before, after, "; ".join(notes))
