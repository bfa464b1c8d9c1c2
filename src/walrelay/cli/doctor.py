"""``walrelay doctor``: the monitor's review of one database
(:mod:`walrelay.monitor.doctor`), or with ``--sync-config`` of every node of a
two-way sync, with the sync's own findings (:mod:`walrelay.sync.doctor`)."""

from __future__ import annotations

import sys
from typing import Any

import click
import orjson
from click.core import ParameterSource

from walrelay.errors import WalrelayError
from walrelay.monitor.doctor import doctor_command as _one_database

__all__ = ["doctor_command"]


def _run(sync_config: str | None, **options: Any) -> None:
    if sync_config is None:
        assert _one_database.callback is not None
        _one_database.callback(**options)
        return
    ctx = click.get_current_context()
    for name in ("dsn", "config_path", "slot", "state_schema"):
        if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE:
            flag = "--config" if name == "config_path" else "--" + name.replace("_", "-")
            click.echo(
                f"walrelay doctor: error: {flag} and --sync-config exclude each other "
                "(the sync config names every node, its slot and state schema)",
                err=True,
            )
            sys.exit(2)
    from walrelay.sync.config import load_sync_config
    from walrelay.sync.doctor import review_sync

    try:
        settings = load_sync_config(sync_config)
    except WalrelayError as e:
        click.echo(f"walrelay doctor: error: {e}", err=True)
        sys.exit(e.exit_code)
    reports, failed = review_sync(
        settings,
        long_transaction_seconds=options["long_transaction_seconds"],
        record=not options["no_record"],
    )
    for node, why in failed.items():
        click.echo(f"walrelay doctor: error: node {node}: {why}", err=True)
    if options["as_json"]:
        click.echo(
            orjson.dumps(
                {
                    "sync": settings.name,
                    "nodes": {n: orjson.loads(r.to_json()) for n, r in reports.items()},
                    "unreachable": failed,
                },
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
    else:
        click.echo("\n\n".join(f"node {n}: {r.to_text()}" for n, r in reports.items()))
    sys.exit(max([r.exit_code for r in reports.values()] + ([2] if failed else [0])))


doctor_command = click.Command(
    "doctor",
    callback=_run,
    params=[
        *_one_database.params,
        click.Option(
            ["--sync-config", "sync_config"],
            type=click.Path(dir_okay=False),
            default=None,
            help="review every node of this two-way sync (sync.yaml), with its slots, "
            "and flag sequences of synced tables whose ranges overlap between nodes",
        ),
    ],
    help=_one_database.help,
)
