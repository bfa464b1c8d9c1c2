"""The `walrelay` group, `walrelay run` and `walrelay demo`; the other groups load lazily."""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

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
    import asyncio
    import signal

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

    import psycopg

    from walrelay.dsn import one_line

    try:
        asyncio.run(runner())
    except WalrelayError as e:
        click.echo(f"walrelay: error: {e}", err=True)
        sys.exit(e.exit_code)
    except psycopg.OperationalError as e:
        # A connection no code path above turned into a ConfigError (libpq's
        # message names host, port and user, never the password).
        click.echo(
            f"walrelay: error: a database connection failed: {one_line(str(e))}"
            " -- fix: check source.dsn, state.dsn and the servers they name",
            err=True,
        )
        sys.exit(2)
    except psycopg.Error as e:
        click.echo(f"walrelay: error: {type(e).__name__}: {one_line(str(e))}", err=True)
        sys.exit(1)
    except asyncio.CancelledError:
        sys.exit(130)


class LazyGroup(click.Group):
    """A group whose ``lazy_commands`` (name -> ``"module:attribute"``) are imported
    only when invoked or listed, so ``walrelay run`` does not load the others."""

    def __init__(self, *args: Any, lazy_commands: dict[str, str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands:
            return self._load(cmd_name)
        return super().get_command(ctx, cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        # click suggests close matches ("Did you mean ...?") from self.commands only
        if args and self.get_command(ctx, args[0]) is None:
            for name in self.lazy_commands:
                self.add_command(self._load(name), name)
        return super().resolve_command(ctx, args)

    def _load(self, cmd_name: str) -> click.Command:
        module_name, attribute = self.lazy_commands[cmd_name].split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{module_name}.{attribute} is not a click command")
        return command


@click.group(
    cls=LazyGroup,
    lazy_commands={
        "backfill": "walrelay.cli.backfill:backfill_command",
        "doctor": "walrelay.cli.doctor:doctor_command",  # + --sync-config
        "failed": "walrelay.cli.parking:failed_alias",  # hidden, deprecated
        "outbox": "walrelay.cli.outbox:outbox_command",
        "parking": "walrelay.cli.parking:parking_command",
        "preview": "walrelay.cli.preview:preview_command",
        "status": "walrelay.cli.status:status_command",  # the engine's, or a worker's
        "sync": "walrelay.cli.sync:sync_command",
        "worker": "walrelay.cli.worker:worker_command",
    },
)
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
@click.option(
    "--standby",
    is_flag=True,
    default=False,
    help="wait while another walrelay streams the slot, take over when it stops (ha: standby)",
)
def run(config_path: str, log_level: str | None, until_lsn: str | None, standby: bool) -> None:
    """Stream the configured slot to its destinations until SIGTERM/SIGINT."""
    import gc

    gc.disable()  # start-up makes next to no garbage (walrelay.engine.gc_tuning)
    try:
        from walrelay import failpoints  # parses WALRELAY_FAILPOINTS at import
    except WalrelayError as e:
        click.echo(f"walrelay: error: {e}", err=True)
        sys.exit(e.exit_code)
    from walrelay.config import load_config
    from walrelay.engine import Engine
    from walrelay.engine.gc_tuning import skip_collections_at_exit, tune_gc_for_streaming
    from walrelay.engine.preload import preload
    from walrelay.model import parse_lsn

    try:
        stop_at = parse_lsn(until_lsn) if until_lsn else None
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--until-lsn") from None

    try:
        failpoints.reload()  # a bad WALRELAY_FAILPOINTS is one line, like a bad config
        config = load_config(config_path)
    except WalrelayError as e:
        click.echo(f"walrelay: error: {e}", err=True)
        sys.exit(e.exit_code)
    setup_logging(log_level or config.log_level)
    if standby:
        config = config.model_copy(update={"ha": "standby"})
    engine = Engine(config, until_lsn=stop_at)
    tune_gc_for_streaming()
    # The web server is imported on a thread while start-up waits on the database.
    loading = preload(["walrelay.web.server"]) if config.http.enabled else None
    try:
        run_until_signalled(engine.run, engine.request_stop)
    finally:
        if loading is not None:
            # A daemon thread still importing (aiohttp's C extensions) while the
            # interpreter shuts down can crash it: a start-up error exited -11.
            loading.join()
    skip_collections_at_exit()


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
    from walrelay.cli.demo import run_demo

    setup_logging("warning")
    run_until_signalled_demo = run_demo(transactions=transactions, output=output, quiet=quiet)
    sys.exit(run_until_signalled_demo)


if __name__ == "__main__":  # pragma: no cover
    main()
