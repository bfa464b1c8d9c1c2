"""A throwaway PostgreSQL cluster for the demo, the tests and the benchmarks.

``initdb`` refuses to run as root, so when we are root the cluster's
processes run as the ``postgres`` OS user (``subprocess`` ``user=``), which
keeps the pid we stop the server by our own child's pid.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SETTINGS: dict[str, str] = {
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "256MB",
    "max_wal_size": "4GB",
    # walrelay refuses an unlimited cap (source.allow_unbounded_wal).
    "max_slot_wal_keep_size": "4GB",
    "wal_sender_timeout": "60s",
    "log_min_messages": "warning",
    "logging_collector": "off",
}


def pg_bindir() -> Path:
    """Where the server binaries are: $PG_BINDIR, `pg_config --bindir`, or PATH."""
    env = os.environ.get("PG_BINDIR")
    if env:
        return Path(env)
    try:
        out = subprocess.run(
            ["pg_config", "--bindir"], check=True, capture_output=True, text=True
        ).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    except (OSError, subprocess.CalledProcessError):
        pass
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    raise RuntimeError(
        "PostgreSQL server binaries not found: install postgresql (Debian: apt-get install "
        "postgresql) or set PG_BINDIR to the directory holding initdb"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> str | None:
    return "postgres" if os.geteuid() == 0 else None


@dataclass
class PgCluster:
    """A running cluster. Use :func:`start_cluster` and :meth:`stop`."""

    root: Path
    port: int
    process: subprocess.Popen[bytes]
    user: str = "postgres"
    log_path: Path = field(default_factory=Path)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def dsn(self, dbname: str = "postgres", **params: str) -> str:
        extra = "".join(f" {k}={v}" for k, v in params.items())
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={dbname}{extra}"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, *, remove: bool = True, mode: str = "fast") -> None:
        """Stop the server by its own pid (SIGINT = fast shutdown), then clean up."""
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    def restart(self, extra_settings: dict[str, str] | None = None, *, mode: str = "fast") -> None:
        """Stop (``mode``: smart, fast or immediate) and start again on the same
        port and data directory."""
        self.stop(remove=False, mode=mode)
        if extra_settings:
            _append_settings(self.datadir, extra_settings)
        self.process = _spawn_postgres(self.datadir, self.port, self.log_path)
        _wait_ready(self, timeout=60)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _append_settings(datadir: Path, settings: dict[str, str]) -> None:
    with open(datadir / "postgresql.auto.conf", "a") as f:
        for k, v in settings.items():
            f.write(f"{k} = {v}\n")


def _spawn_postgres(datadir: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    bindir = pg_bindir()
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        return subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(datadir), "-p", str(port), "-k", str(datadir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            user=_run_as(),
            start_new_session=True,
        )
    finally:
        log.close()


def _wait_ready(cluster: PgCluster, timeout: float) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not cluster.running():
            raise RuntimeError(f"postgres exited during start-up:\n{cluster.log_tail()}")
        try:
            with psycopg.connect(cluster.dsn(), connect_timeout=2) as conn:
                conn.execute("select 1")
            return
        except psycopg.OperationalError as e:
            last = e
            time.sleep(0.05)  # polling a server that is not accepting connections yet
    cluster.stop()
    raise RuntimeError(f"postgres did not accept connections in {timeout}s: {last}")


def start_cluster(
    settings: dict[str, str] | None = None, *, base_dir: str | None = None
) -> PgCluster:
    """initdb into a temp dir, start on a free loopback port, wait until ready."""
    bindir = pg_bindir()
    root = Path(tempfile.mkdtemp(prefix="walrelay-pg-", dir=base_dir))
    runas = _run_as()
    if runas:
        pw = pwd.getpwnam(runas)
        os.chown(root, pw.pw_uid, pw.pw_gid)
    root.chmod(0o755)
    datadir = root / "data"
    log_path = root / "postgres.log"
    try:
        subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(datadir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            user=runas,
        )
    except subprocess.CalledProcessError as e:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {e.stderr.decode(errors='replace')}") from e
    merged = dict(DEFAULT_SETTINGS)
    merged.update(settings or {})
    _append_settings(datadir, merged)
    with open(datadir / "pg_hba.conf", "w") as f:
        f.write("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        f.write("local replication all trust\nhost replication all 127.0.0.1/32 trust\n")
    if runas:
        pw = pwd.getpwnam(runas)
        for p in (datadir / "pg_hba.conf", datadir / "postgresql.auto.conf"):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    log_path.touch()
    if runas:
        pw = pwd.getpwnam(runas)
        os.chown(log_path, pw.pw_uid, pw.pw_gid)
    port = free_port()
    process = _spawn_postgres(datadir, port, log_path)
    cluster = PgCluster(root=root, port=port, process=process, log_path=log_path)
    _wait_ready(cluster, timeout=60)
    return cluster


def drop_database(dsn: str, name: str, *, within: float = 30.0) -> None:
    """Drop database ``name`` (if it exists) and its replication slots, through
    ``dsn`` (a connection to another database of the same cluster).

    ``DROP DATABASE ... WITH (FORCE)`` refuses while a slot of the database is
    active, and a walsender whose client just went away releases its slot a
    moment later: the walsenders are terminated and the slots awaited first."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        deadline = time.monotonic() + within
        while True:
            conn.execute(
                "select pg_terminate_backend(active_pid) from pg_replication_slots "
                "where database = %s and active_pid is not null",
                (name,),
            )
            rows = conn.execute(
                "select slot_name, active from pg_replication_slots where database = %s",
                (name,),
            ).fetchall()
            if not any(active for _, active in rows):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"database {name}: slots still active after {within:g} s")
            conn.execute("select pg_sleep(0.05)")
        for slot, _ in rows:
            conn.execute("select pg_drop_replication_slot(%s)", (slot,))
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )


@contextlib.contextmanager
def scratch_database(cluster: PgCluster, name: str) -> Iterator[str]:
    """A new database ``name`` on ``cluster`` (its dsn), dropped with its slots
    afterwards (:func:`drop_database`)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        yield cluster.dsn(name)
    finally:
        drop_database(cluster.dsn(), name)
