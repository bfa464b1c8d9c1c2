"""`walrelay status`: the engine's status, or -- for a worker's file (one with
``worker:``) -- the status of that worker's processes on this host, or -- for a
sync's file (``sync:``) -- each direction's lag and conflicts, asked of the
running ``walrelay sync``."""

from __future__ import annotations

import sys

import click
import orjson

from walrelay.errors import WalrelayError
from walrelay.monitor.status import status_command as engine_status_command
from walrelay.sync.config import is_sync_file
from walrelay.worker.config import is_worker_file

__all__ = ["status_command"]


def _sync_status(config_path: str, as_json: bool, timeout: float) -> None:
    from walrelay.sync.config import load_sync_config
    from walrelay.sync.status import fetch_sync_status, render_sync_status

    try:
        settings = load_sync_config(config_path)
    except WalrelayError as e:
        click.echo(f"walrelay: error: {e}", err=True)
        sys.exit(e.exit_code)
    doc, where = fetch_sync_status(settings, timeout)
    if doc is None:
        click.echo(
            f"walrelay status: {where}; the sync does not seem to be running "
            "(walrelay sync status --config ... reads the nodes directly)",
            err=True,
        )
        sys.exit(1)
    if as_json:
        click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    else:
        click.echo(render_sync_status(doc))
    # 0: running and every direction connected (a node down: 1, as a page).
    connected = all(d["connected"] for d in doc["sync"]["directions"])
    sys.exit(0 if doc.get("state") == "streaming" and connected else 1)


def _status(config_path: str, as_json: bool, timeout: float) -> None:
    if is_sync_file(config_path):
        _sync_status(config_path, as_json, timeout)
        return
    if not is_worker_file(config_path):
        assert engine_status_command.callback is not None
        engine_status_command.callback(config_path, as_json, timeout)
        return
    from walrelay.worker.config import load_worker_config
    from walrelay.worker.status import fetch_worker_status, render_worker_status

    try:
        config = load_worker_config(config_path)
    except WalrelayError as e:
        click.echo(f"walrelay: error: {e}", err=True)
        sys.exit(e.exit_code)
    docs, why = fetch_worker_status(config, timeout)
    if not docs:
        click.echo(f"walrelay status: {why}; the worker does not seem to be running", err=True)
        sys.exit(1)
    if as_json:
        click.echo(orjson.dumps(docs, option=orjson.OPT_INDENT_2))
    else:
        click.echo(render_worker_status(docs))
    sys.exit(0)


status_command = click.Command(
    "status",
    params=engine_status_command.params,
    callback=_status,
    help=engine_status_command.help,
)
