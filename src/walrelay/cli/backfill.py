"""``walrelay backfill``: ask the running engine to backfill a table, show progress."""

from __future__ import annotations

import asyncio
import math
import sys
import time

import click
import psycopg
from psycopg import sql

from walrelay.dsn import connect_error, one_line
from walrelay.errors import ConfigError, WalrelayError
from walrelay.units import format_duration


@click.command("backfill")
@click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False), help="walrelay.yaml"
)
@click.option("--destination", required=True, help="the destination to backfill")
@click.option("--table", required=True, help="schema.table (one of source.tables)")
@click.option("--where", "where", default=None, help="SQL condition on the table's rows")
@click.option("--rate", type=float, default=None, help="at most this many rows/s")
@click.option("--chunk-size", type=int, default=5000, show_default=True, help="rows per chunk")
@click.option("--no-wait", is_flag=True, help="submit and return; the engine runs it")
def backfill_command(
    config_path: str,
    destination: str,
    table: str,
    where: str | None,
    rate: float | None,
    chunk_size: int,
    no_wait: bool,
) -> None:
    """Backfill TABLE to DESTINATION while the engine streams (watermarks, resumable).

    The request is stored in the state database; the running `walrelay run`
    picks it up, reads the table in key order in chunks, and resumes from its
    cursor after a restart. Progress: here, `walrelay status`, /metrics.
    """
    from walrelay.config import load_config, qualify
    from walrelay.state.backfills import read_backfill, submit_backfill

    try:
        config = load_config(config_path)
        table = qualify(table)
        dest = next((d for d in config.destinations if d.name == destination), None)
        if dest is None:
            raise ConfigError(
                f"no destination named {destination!r}",
                fix="use one of: " + ", ".join(d.name for d in config.destinations),
            )
        if table not in config.source.tables or (
            dest.tables is not None and table not in dest.tables
        ):
            raise ConfigError(
                f"destination {destination} does not receive {table}",
                fix="backfill a table listed in source.tables (and the destination's tables)",
            )
        if chunk_size <= 0 or (rate is not None and not (0 < rate < math.inf)):
            raise ConfigError("--chunk-size and --rate must be positive (and --rate finite)")
        if where is not None:
            _check_where(config.source.dsn_value, table, where)
        schema = config.state.schema
        request_id = asyncio.run(
            submit_backfill(
                config.state_dsn,
                schema,
                slot=config.source.slot,
                destination=destination,
                table=table,
                where=where,
                rate=rate,
                chunk_size=chunk_size,
            )
        )
        click.echo(f"backfill {request_id} of {table} to {destination} submitted")
        if no_wait:
            return
        last = ""
        while True:
            doc = asyncio.run(read_backfill(config.state_dsn, schema, request_id))
            if doc is None:
                raise WalrelayError(f"backfill {request_id} disappeared")
            line = _progress_line(doc)
            if line != last:
                click.echo(line)
                last = line
            if doc["status"] in ("done", "failed"):
                if doc["status"] == "failed":
                    raise WalrelayError(f"backfill {request_id} failed: {doc['error']}")
                return
            time.sleep(2.0)  # polling the request's row
    except WalrelayError as e:
        click.echo(f"walrelay: error: {e}", err=True)
        sys.exit(e.exit_code)
    except psycopg.Error as e:
        error = connect_error(
            "the state database", config.state_dsn, e, fix="check state.dsn (default: source.dsn)"
        )
        click.echo(f"walrelay: error: {error}", err=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        click.echo("stopped watching; the engine goes on with the backfill", err=True)
        sys.exit(130)


def _check_where(dsn: str, table: str, where: str) -> None:
    """Refuse a --where PostgreSQL cannot plan on ``table`` now, rather than when
    the engine reads the first chunk. EXPLAIN only plans: nothing runs."""
    schema, name = table.split(".", 1)
    query = sql.SQL("explain select 1 from {} as _r where ({})").format(
        sql.Identifier(schema, name),
        sql.SQL(where),
    )
    try:
        # The chunk reader's search_path (pg_catalog: values print schema-qualified),
        # so a name it would not find is refused now.
        with psycopg.connect(
            dsn,
            autocommit=True,
            options="-c default_transaction_read_only=on -c search_path=pg_catalog",
            connect_timeout=10,
        ) as conn:
            conn.execute(query)
    except psycopg.OperationalError as e:
        raise connect_error(
            "the source", dsn, e, fix="check source.dsn, the server and PGPASSWORD"
        ) from None
    except psycopg.Error as e:
        reason = one_line(e.diag.message_primary or str(e))
        raise ConfigError(
            f"--where is not a condition PostgreSQL accepts on {table}: {reason}",
            fix='write a boolean SQL expression over the table\'s columns, e.g. "id > 1000";'
            " it is read with search_path=pg_catalog: schema-qualify functions and types"
            " (public.f(x))",
        ) from None


def _progress_line(doc: dict[str, object]) -> str:
    done = int(str(doc["rows_done"]))
    est = max(int(str(doc["rows_estimated"])), done)
    status = str(doc["status"])
    if status == "pending":
        return "waiting for the engine to pick the request up (is `walrelay run` running?)"
    started, now = doc.get("started_at"), doc.get("now")
    rate = 0.0
    if isinstance(started, float) and isinstance(now, float) and now > started:
        rate = done / (now - started)
    eta = format_duration((est - done) / rate) if rate > 0 and est > done else "?"
    pct = f"{100.0 * done / est:.1f}%" if est else "?"
    return f"{status}: {done} of ~{est} rows ({pct}), {rate:,.0f} rows/s, ETA {eta}"
