"""``walrelay outbox init`` and ``walrelay outbox maintain``."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import click
import psycopg

from walrelay.dsn import DSN_HINT, connect_error, dsn_problem, scrub
from walrelay.errors import WalrelayError
from walrelay.outbox.partitions import (
    MaintainReport,
    OutboxTable,
    init_outbox,
    init_statements,
    maintain,
)

T = TypeVar("T")

_dsn_option = click.option(
    "--dsn",
    envvar="WALRELAY_DSN",
    default=None,
    help="libpq connection string or URL of the source database (or $WALRELAY_DSN)",
)
_schema_option = click.option("--schema", default="public", show_default=True)
_table_option = click.option("--table", default="outbox", show_default=True)
_days_ahead_option = click.option(
    "--days-ahead",
    type=click.IntRange(min=1, max=366),
    default=7,
    show_default=True,
    help="future daily partitions to keep ready",
)


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"walrelay outbox: error: {message}", err=True)
    sys.exit(code)


def _with_conn(dsn: str, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
    problem = dsn_problem(dsn)
    if problem is not None:
        _fail(f"--dsn: {problem} -- fix: {DSN_HINT}")

    async def main() -> T:
        try:
            conn = await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, application_name="walrelay-outbox"
            )
        except psycopg.Error as e:
            raise connect_error(
                "the database", dsn, e, fix="check --dsn, the server, and PGPASSWORD / the passfile"
            ) from None
        async with conn:
            return await work(conn)

    try:
        return asyncio.run(main())
    except WalrelayError as e:
        _fail(str(e), e.exit_code)
    except psycopg.Error as e:
        _fail(f"{type(e).__name__}: {scrub(e.diag.message_primary or str(e), dsn)}", 1)


@click.group("outbox")
def outbox_command() -> None:
    """The transactional outbox table: create it, keep its partitions."""


@outbox_command.command("init")
@_dsn_option
@_schema_option
@_table_option
@click.option(
    "--publication",
    default="walrelay_outbox",
    show_default=True,
    help="publication FOR TABLE the outbox only (use it as source.publication)",
)
@_days_ahead_option
@click.option(
    "--dry-run",
    is_flag=True,
    help="print the SQL instead of running it (without --dsn: all of it, as for an empty database)",
)
def init_command(
    dsn: str | None, schema: str, table: str, publication: str, days_ahead: int, dry_run: bool
) -> None:
    """Create the partitioned outbox table, its partitions and its publication.

    Idempotent: only what is missing is created.
    """
    try:
        t = OutboxTable(schema, table)
    except WalrelayError as e:
        _fail(str(e))
    if dsn is None:
        if not dry_run:
            _fail("--dsn (or $WALRELAY_DSN) is required unless --dry-run")
        for stmt in init_statements(t, publication, days_ahead=days_ahead):
            click.echo(stmt.as_string(None) + ";")
        return
    statements = _with_conn(
        dsn,
        lambda conn: init_outbox(conn, t, publication, days_ahead=days_ahead, dry_run=dry_run),
    )
    for text in statements:
        click.echo(text + ";")
    if not statements:
        click.echo(f"-- {t.qualified} and publication {publication} are up to date")
    elif not dry_run:
        click.echo(f"-- done: {len(statements)} statement(s)")


@outbox_command.command("maintain")
@_dsn_option
@_schema_option
@_table_option
@click.option(
    "--slot",
    "slots",
    multiple=True,
    help="slot that must have confirmed a partition's events before it is dropped "
    "(repeatable; default: every logical slot of the database)",
)
@_days_ahead_option
@click.option(
    "--retention-days",
    type=click.IntRange(min=1),
    default=7,
    show_default=True,
    help="drop partitions whose whole day is older than this",
)
@click.option(
    "--confirm-wait",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="seconds to wait for the slots to confirm a detached partition",
)
@click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0.001),
    default=2.0,
    show_default=True,
    help="seconds to wait for the locks DETACH and DROP need",
)
@click.option("--dry-run", is_flag=True, help="print what would be done; change nothing")
def maintain_command(
    dsn: str | None,
    schema: str,
    table: str,
    slots: tuple[str, ...],
    days_ahead: int,
    retention_days: int,
    confirm_wait: float,
    lock_timeout: float,
    dry_run: bool,
) -> None:
    """Create future partitions; detach expired ones and drop them once delivered.

    Rows are never DELETEd. An expired partition is detached, and dropped only
    once the slots have confirmed past every event it held; until then it is
    kept (exit code 1 while anything expired is kept).
    """
    if dsn is None:
        _fail("--dsn (or $WALRELAY_DSN) is required")
    try:
        t = OutboxTable(schema, table)
    except WalrelayError as e:
        _fail(str(e))
    report: MaintainReport = _with_conn(
        dsn,
        lambda conn: maintain(
            conn,
            t,
            slots=list(slots) or None,
            days_ahead=days_ahead,
            retention_days=retention_days,
            lock_timeout=lock_timeout,
            confirm_wait=confirm_wait,
            dry_run=dry_run,
        ),
    )
    if dry_run:
        for text in report.statements:
            click.echo(text + ";")
    for line in report.lines():
        click.echo(("-- would: " if dry_run else "") + line)
    sys.exit(1 if report.kept and not dry_run else 0)
