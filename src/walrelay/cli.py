"""Command line: ``walrelay run``, ``walrelay demo``."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

import click

from walrelay.errors import WalrelayError

log = logging.getLogger("walrelay")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )


def run_until_signalled(main: Callable[[], Awaitable[None]], on_signal: Callable[[], None]) -> None:
    """Run ``main``; the first SIGTERM/SIGINT calls ``on_signal``, a second one aborts."""

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        signalled = 0

        def handler() -> None:
            nonlocal signalled
            signalled += 1
            if signalled == 1:
                on_signal()
            elif task is not None:
                log.warning("second signal: stopping without waiting")
                task.cancel()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, handler)
        await main()

    try:
        asyncio.run(runner())
    except WalrelayError as e:
        click.echo(f"walrelay: error: {e}", err=True)
        sys.exit(e.exit_code)
    except asyncio.CancelledError:
        sys.exit(130)


@click.group()
@click.version_option(package_name="walrelay")
def main() -> None:
    """walrelay: stream PostgreSQL changes to destinations, in per-key order."""


@main.command()
@click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False), help="walrelay.yaml"
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default=None,
    help="overrides log_level from the config",
)
@click.option(
    "--until-lsn",
    default=None,
    metavar="X/Y",
    help="stop once everything up to this LSN is delivered and confirmed",
)
def run(config_path: str, log_level: str | None, until_lsn: str | None) -> None:
    """Stream the configured slot to its destinations until SIGTERM/SIGINT."""
    from walrelay.config import load_config
    from walrelay.engine import Engine
    from walrelay.model import parse_lsn

    try:
        stop_at = parse_lsn(until_lsn) if until_lsn else None
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--until-lsn") from None

    try:
        config = load_config(config_path)
    except WalrelayError as e:
        click.echo(f"walrelay: error: {e}", err=True)
        sys.exit(e.exit_code)
    setup_logging(log_level or config.log_level)
    engine = Engine(config, until_lsn=stop_at)
    run_until_signalled(engine.run, engine.request_stop)


@main.command()
@click.option(
    "--transactions", default=3000, show_default=True, help="transactions in the sample workload"
)
@click.option(
    "--output", default="walrelay-demo.jsonl", show_default=True, help="the file sink's path"
)
@click.option("--quiet", is_flag=True, help="do not print the customer events on stdout")
def demo(transactions: int, output: str, quiet: bool) -> None:
    """Start a throwaway PostgreSQL, run a sample workload, stream it; clean up."""
    from walrelay.demo import run_demo

    setup_logging("warning")
    run_until_signalled_demo = run_demo(transactions=transactions, output=output, quiet=quiet)
    sys.exit(run_until_signalled_demo)


def _register_subcommands() -> None:
    from walrelay.cli_backfill import backfill_command
    from walrelay.cli_failed import failed_command
    from walrelay.monitor.doctor import doctor_command
    from walrelay.monitor.status import status_command
    from walrelay.outbox.cli import outbox_command

    main.add_command(doctor_command)
    main.add_command(failed_command)
    main.add_command(status_command)
    main.add_command(outbox_command)
    main.add_command(backfill_command)


_register_subcommands()

if __name__ == "__main__":  # pragma: no cover
    main()
