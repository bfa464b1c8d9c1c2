"""`walrelay worker`: join the consumer group and deliver its partitions' events."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import click

from walrelay.cli.main import run_until_signalled, setup_logging
from walrelay.errors import WalrelayError

__all__ = ["worker_command"]

# Set for each process --processes starts: its number (HTTP port = http.port + number)
# and the parent's pid.
_INDEX = "WALRELAY_WORKER_INDEX"
_PARENT = "WALRELAY_WORKER_PARENT"


def _stop_with_parent(parent: int) -> None:
    """SIGTERM ourselves (a clean stop) once the starting process is gone."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)  # polling the parent's liveness
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="walrelay-parent-watch", daemon=True).start()


@click.command("worker")
@click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False), help="worker.yaml"
)
@click.option(
    "--processes",
    default=1,
    show_default=True,
    type=click.IntRange(1, 256),
    help="worker processes on this host, one group member each, stopped together",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default=None,
    help="overrides log_level from the config",
)
def worker_command(config_path: str, processes: int, log_level: str | None) -> None:
    """Read the relay's Kafka topics as a consumer-group member and deliver
    each assigned partition's events to the configured destinations."""
    from walrelay.worker.config import load_worker_config

    try:
        config = load_worker_config(config_path)
    except WalrelayError as e:
        click.echo(f"walrelay: error: {e}", err=True)
        sys.exit(e.exit_code)
    if processes > 1:
        sys.exit(_run_processes(config_path, processes, log_level))
    from walrelay.worker.runner import Worker

    setup_logging(log_level or config.log_level)
    if _PARENT in os.environ:
        _stop_with_parent(int(os.environ[_PARENT]))
    worker = Worker(config, index=int(os.environ.get(_INDEX, "0")))
    run_until_signalled(worker.run, worker.request_stop)


def _run_processes(config_path: str, n: int, log_level: str | None) -> int:
    """Start ``n`` single workers and stop them together: a signal goes to all
    of them; when one exits, the others are stopped. Returns the first
    non-zero exit code (0 when all stopped cleanly)."""
    args = [sys.executable, "-m", "walrelay", "worker", "--config", config_path]
    if log_level:
        args += ["--log-level", log_level]
    # Own process groups: a Ctrl-C reaches the children once, through us; each
    # child stops by itself should we die (see _stop_with_parent).
    env = {**os.environ, _PARENT: str(os.getpid())}
    children = [
        subprocess.Popen(args, env={**env, _INDEX: str(i)}, process_group=0) for i in range(n)
    ]
    stopping = False

    def stop_all(*_: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    code = 0
    while any(child.poll() is None for child in children):
        for child in children:
            rc = child.poll()
            if rc is not None and not stopping:
                click.echo(
                    f"walrelay: worker process {child.pid} exited ({rc}); stopping the others",
                    err=True,
                )
                code = code or rc
                stop_all()
        time.sleep(0.2)  # polling child processes, not synchronising a test
    for child in children:
        if child.returncode and not code and child.returncode not in (-signal.SIGTERM, 0):
            code = child.returncode
    return code
