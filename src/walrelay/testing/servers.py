"""Real Redis, NATS JetStream, RabbitMQ and Kafka servers for tests and benchmarks.

Each server runs on free loopback ports with its data in a temp directory of its
own, and is started in a new session (``start_new_session=True``), so the
process we spawn is the leader of a process group whose id is that pid. We only
ever signal that pid or that group, and we keep the leader unreaped (``waitid``
with ``WNOWAIT``) until the rest of its group is gone, so the group id cannot
have been handed to anybody else while we signal it. Nothing is ever stopped
by process name.

The binaries come from ``scripts/servers/install.sh`` (Debian packages for
Redis, NATS and RabbitMQ; Maven Central jars for Kafka). A missing binary
raises :class:`ServerNotInstalled` (a ``RuntimeError``) naming that script:
tests must fail loudly rather than skip.

Usage::

    with KafkaServer() as kafka:
        producer = Producer({"bootstrap.servers": kafka.bootstrap})
        ...
        kafka.kill()       # SIGKILL, data stays
        kafka.restart()    # same ports, same data directory

``start``/``stop``/``restart`` block; ``astart``/``astop``/``arestart`` run them
in a worker thread so an event loop under test keeps running meanwhile.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self, TypedDict, Unpack

INSTALL_HINT = "run `bash scripts/servers/install.sh` (as root) to install it"
KAFKA_VERSION = "4.4.0"
HOST = "127.0.0.1"

_POLL = 0.02  # seconds between checks of a process or a port we are waiting on


class ServerOptions(TypedDict, total=False):
    """Keyword options every server takes."""

    startup_timeout: float  # seconds to wait for readiness
    stop_timeout: float  # seconds between the polite signal and SIGKILL
    base_dir: str | Path | None  # parent of the temp dir (default: the system's)


class ServerNotInstalled(RuntimeError):
    """A server binary (or its client library) this test needs is missing."""


def free_ports(count: int = 1) -> list[int]:
    """``count`` distinct free TCP ports on the loopback address."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def cache_dir() -> Path:
    """Where install.sh puts downloads: ``$WALRELAY_CACHE`` or ``~/.cache/walrelay``."""
    env = os.environ.get("WALRELAY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "walrelay"


def kafka_version() -> str:
    return os.environ.get("WALRELAY_KAFKA_VERSION", KAFKA_VERSION)


def kafka_libs_dir() -> Path:
    """The directory of Kafka broker jars (``$WALRELAY_KAFKA_LIBS`` overrides)."""
    env = os.environ.get("WALRELAY_KAFKA_LIBS")
    if env:
        return Path(env)
    return cache_dir() / f"kafka-{kafka_version()}" / "libs"


def _which(name: str, *fallbacks: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in fallbacks:
        if os.access(candidate, os.X_OK):
            return candidate
    raise ServerNotInstalled(f"{name} not found: {INSTALL_HINT}")


def _require_module(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ServerNotInstalled(
            f"Python package {module!r} missing: pip install 'walrelay[{extra}]'"
        )


# --------------------------------------------------------------------------- processes


def _proc_table() -> dict[int, tuple[bytes, int, int, int]]:
    """pid -> (state, ppid, pgrp, start time) of every process (Linux ``/proc``)."""
    table: dict[int, tuple[bytes, int, int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # after "pid (comm)": state ppid pgrp session tty tpgid flags ... starttime (20th)
        fields = stat.rsplit(b")", 1)[-1].split()
        if len(fields) > 19:
            table[int(entry.name)] = (fields[0], int(fields[1]), int(fields[2]), int(fields[19]))
    return table


class _Child:
    """One spawned process, leader of its own process group (pgid == pid).

    Some servers' helpers leave the group (Erlang's ``erl_child_setup`` and
    ``inet_gethost`` call ``setsid``); those are tracked as descendants of the
    leader, by (pid, start time) so a reused pid is never taken for one of ours.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        self.pid = self.popen.pid
        self._seen: dict[int, int] = {}  # descendants ever observed: pid -> start time

    def exited(self) -> bool:
        """True once the leader has exited; does not reap it (the pgid stays ours)."""
        if self.popen.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def _others(self) -> list[int]:
        """Live members of our group and live descendants of the leader, leader excluded."""
        table = _proc_table()
        if self.popen.returncode is None and self.pid in table:
            children: dict[int, list[int]] = {}
            for pid, (_, ppid, _, _) in table.items():
                children.setdefault(ppid, []).append(pid)
            todo = [self.pid]
            while todo:
                for child in children.get(todo.pop(), []):
                    self._seen[child] = table[child][3]
                    todo.append(child)
        live: list[int] = []
        for pid, (state, _, pgrp, started) in table.items():
            if pid == self.pid or state == b"Z":
                continue
            if pgrp == self.pid or self._seen.get(pid) == started:
                if pgrp == self.pid:
                    self._seen[pid] = started
                live.append(pid)
        return live

    def pids(self) -> list[int]:
        """The leader (while not reaped) and every live process it started."""
        leader = [] if self.popen.returncode is not None else [self.pid]
        return leader + self._others()

    def signal_leader(self, sig: int) -> None:
        if not self.exited():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def signal_group(self, sig: int) -> None:
        # Only while the leader is unreaped: then the group id is certainly ours.
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.exited():
            if time.monotonic() > deadline:
                return False
            time.sleep(_POLL)
        return True

    def terminate(self, sig: int, timeout: float) -> None:
        """Ask the leader to stop with ``sig``; SIGKILL the group after ``timeout``."""
        self._others()  # note the current descendants before they are orphaned
        self.signal_leader(sig)
        if not self.wait_exit(timeout):
            self.signal_group(signal.SIGKILL)
            self.wait_exit(30.0)
        self._finish()

    def kill(self) -> None:
        """SIGKILL everything we started at once (a crash, as far as the server can tell)."""
        self._others()
        self.signal_group(signal.SIGKILL)
        self._finish()

    def _finish(self) -> None:
        self.wait_exit(30.0)
        # The leader has exited but is not reaped yet, so the group id is still
        # ours: kill what is left of the group and of the leader's descendants.
        deadline = time.monotonic() + 10.0
        while (left := self._others()) and time.monotonic() < deadline:
            self.signal_group(signal.SIGKILL)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(_POLL)
        self.popen.wait()


# --------------------------------------------------------------------------- base class

_live: set[_Server] = set()


@atexit.register
def _stop_leftovers() -> None:  # a test run that ends without its fixtures' teardown
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.stop()


class _Server:
    """A server in a temp directory on free loopback ports; see the module doc."""

    name: ClassVar[str] = "server"
    stop_signal: ClassVar[int] = signal.SIGTERM

    def __init__(
        self,
        *,
        startup_timeout: float = 60.0,
        stop_timeout: float = 30.0,
        base_dir: str | Path | None = None,
    ) -> None:
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.base_dir = base_dir
        self.host = HOST
        self.port = 0
        self._root: Path | None = None
        self._child: _Child | None = None
        self.startup_seconds = 0.0  # how long the last start or restart waited
        self._check_installed()

    # -- hooks -----------------------------------------------------------------
    def _check_installed(self) -> None:
        raise NotImplementedError

    def _allocate_ports(self) -> None:
        (self.port,) = free_ports(1)

    def _prepare(self) -> None:
        """Write config into :attr:`root` once, before the first spawn."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None

    def _probe(self) -> bool:
        """One readiness check; may raise (the error is reported on timeout)."""
        raise NotImplementedError

    def _before_spawn(self) -> None:
        """Start helper processes (RabbitMQ's epmd) if they are not running."""

    def _after_stop(self) -> None:
        """Stop helper processes."""

    # -- state -----------------------------------------------------------------
    @property
    def root(self) -> Path:
        if self._root is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._root

    @property
    def log_path(self) -> Path:
        return self.root / f"{self.name}.log"

    @property
    def pid(self) -> int:
        """The pid we spawned; it is also the id of the process group we stop."""
        if self._child is None:
            raise RuntimeError(f"{self.name} is not running")
        return self._child.pid

    def pids(self) -> list[int]:
        """Every live process we started for this server (helpers included)."""
        return self._child.pids() if self._child is not None else []

    def running(self) -> bool:
        return self._child is not None and not self._child.exited()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, RuntimeError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- life cycle ------------------------------------------------------------
    def start(self) -> Self:
        """Create the temp dir (first time), spawn, and wait until it serves."""
        if self.running():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        first = self._root is None
        if first:
            self._root = Path(tempfile.mkdtemp(prefix=f"walrelay-{self.name}-", dir=self.base_dir))
        _live.add(self)
        try:
            if first:
                self._allocate_ports()
                self._prepare()
            self._spawn()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, *, remove: bool = True) -> None:
        """Stop by our own pid (escalating to SIGKILL of our group), then clean up."""
        try:
            if self._child is not None:
                self._child.terminate(self.stop_signal, self.stop_timeout)
                self._child = None
            if remove:
                self._after_stop()
        finally:
            if remove:
                _live.discard(self)
                if self._root is not None:
                    shutil.rmtree(self._root, ignore_errors=True)
                    self._root = None

    def kill(self) -> None:
        """SIGKILL the server's process group; its data directory stays for restart()."""
        if self._child is not None:
            self._child.kill()
            self._child = None

    def restart(self) -> None:
        """Stop (gracefully, unless already killed) and start on the same ports and data."""
        if self._child is not None:
            self._child.terminate(self.stop_signal, self.stop_timeout)
            self._child = None
        try:
            self._spawn()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    async def astart(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def astop(self, *, remove: bool = True) -> None:
        await asyncio.to_thread(self.stop, remove=remove)

    async def arestart(self) -> None:
        await asyncio.to_thread(self.restart)

    def __enter__(self) -> Self:
        return self if self.running() else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self._child.pid}" if self._child is not None else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"

    # -- internals -------------------------------------------------------------
    def _spawn(self) -> None:
        self._before_spawn()
        self._child = _Child(
            self._command(), log_path=self.log_path, env=self._env(), cwd=self.root
        )

    def _wait_ready(self) -> None:
        assert self._child is not None
        started = time.monotonic()
        deadline = started + self.startup_timeout
        last: BaseException | None = None
        while True:
            if self._child.exited():
                raise RuntimeError(
                    f"{self.name} exited during start-up; log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if self._probe():
                    self.startup_seconds = time.monotonic() - started
                    return
            except ServerNotInstalled:
                raise
            except Exception as e:  # any failed probe means "not yet"
                last = e
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} not ready after {self.startup_timeout:.0f}s on "
                    f"{self.host}:{self.port} (last probe: {last!r}); log {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(_POLL * 2)


def _recv_until(sock: socket.socket, marker: bytes, limit: int = 1 << 16) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed before {marker!r}; got {data[:200]!r}")
        data += chunk
        if len(data) > limit:
            raise ConnectionError(f"no {marker!r} in {limit} bytes")
    return data


# --------------------------------------------------------------------------- Redis


class RedisServer(_Server):
    """``redis-server`` with AOF persistence (``appendonly yes``) by default."""

    name = "redis"

    def __init__(
        self,
        *,
        appendonly: bool = True,
        appendfsync: str = "everysec",
        config: Mapping[str, str] | None = None,
        **kw: Unpack[ServerOptions],
    ) -> None:
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.config = dict(config or {})
        super().__init__(**kw)

    def _check_installed(self) -> None:
        self.binary = _which("redis-server", "/usr/bin/redis-server")

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _prepare(self) -> None:
        (self.root / "data").mkdir()
        settings = {
            "bind": self.host,
            "port": str(self.port),
            "dir": str(self.root / "data"),
            "daemonize": "no",
            "protected-mode": "no",
            "save": '""',
            "appendonly": "yes" if self.appendonly else "no",
            "appendfsync": self.appendfsync,
            "logfile": '""',
            "loglevel": "warning",
        }
        settings.update(self.config)
        (self.root / "redis.conf").write_text("".join(f"{k} {v}\n" for k, v in settings.items()))

    def _command(self) -> list[str]:
        return [self.binary, str(self.root / "redis.conf")]

    def _probe(self) -> bool:
        with socket.create_connection((self.host, self.port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            return _recv_until(s, b"\r\n").startswith(b"+PONG")  # "-LOADING" while loading


# --------------------------------------------------------------------------- NATS


class NatsServer(_Server):
    """``nats-server -js`` with its JetStream store in the temp directory."""

    name = "nats"

    def __init__(self, *, extra_args: Sequence[str] = (), **kw: Unpack[ServerOptions]) -> None:
        self.extra_args = list(extra_args)
        super().__init__(**kw)

    def _check_installed(self) -> None:
        self.binary = _which("nats-server", "/usr/bin/nats-server")

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def _prepare(self) -> None:
        (self.root / "jetstream").mkdir()

    def _command(self) -> list[str]:
        return [
            self.binary,
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-n",
            f"walrelay-{self.port}",
            "-js",
            "-sd",
            str(self.root / "jetstream"),
            *self.extra_args,
        ]

    def _probe(self) -> bool:
        # A JetStream API round trip, not merely an open port.
        with socket.create_connection((self.host, self.port), timeout=2.0) as s:
            _recv_until(s, b"\r\n")  # INFO {...}
            s.sendall(
                b'CONNECT {"verbose":false,"pedantic":false}\r\n'
                b"SUB _INBOX.walrelay.ready 1\r\n"
                b"PUB $JS.API.INFO _INBOX.walrelay.ready 0\r\n\r\n"
            )
            reply = _recv_until(s, b"account_info_response")
            return b'"error"' not in reply


# --------------------------------------------------------------------------- RabbitMQ

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


class RabbitMQServer(_Server):
    """A RabbitMQ node of its own: node name, Erlang cookie, epmd, ports and dirs.

    We run the package's inner start script (``/usr/lib/rabbitmq/bin``), not
    ``/usr/sbin/rabbitmq-server``: as root the latter re-runs itself through
    ``su rabbitmq``, so the pid we hold would not be the server's. Run as the
    current user, every file the node writes is in our temp dir, owned by us.
    The script stays our child and forwards SIGTERM to ``beam.smp``.
    Erlang would start a shared ``epmd -daemon`` that outlives us; instead we
    run our own ``epmd`` in the foreground on a free port (``ERL_EPMD_PORT``).
    """

    name = "rabbitmq"

    def __init__(
        self, *, config: Mapping[str, str] | None = None, **kw: Unpack[ServerOptions]
    ) -> None:
        self.config = dict(config or {})
        self.dist_port = 0
        self.epmd_port = 0
        self._epmd: _Child | None = None
        kw.setdefault("startup_timeout", 90.0)
        super().__init__(**kw)

    def _check_installed(self) -> None:
        script = os.environ.get("WALRELAY_RABBITMQ_SERVER", RABBITMQ_SERVER)
        if not os.access(script, os.X_OK):
            raise ServerNotInstalled(f"{script} not found: {INSTALL_HINT}")
        self.script = script
        self.epmd = _which("epmd", "/usr/bin/epmd")

    @property
    def nodename(self) -> str:
        return f"walrelay-{self.port}@localhost"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}/"

    def pids(self) -> list[int]:
        return super().pids() + (self._epmd.pids() if self._epmd is not None else [])

    def _allocate_ports(self) -> None:
        self.port, self.dist_port, self.epmd_port = free_ports(3)

    def _prepare(self) -> None:
        root = self.root
        for d in ("home", "mnesia", "log"):
            (root / d).mkdir()
        cookie = root / "home" / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex)
        cookie.chmod(0o400)
        (root / "enabled_plugins").write_text("[].\n")
        (root / "rabbitmq-env.conf").write_text("")
        settings = {
            "listeners.tcp.1": f"{self.host}:{self.port}",
            "log.file": "false",
            "log.console": "true",
            "log.console.level": "info",
        }
        settings.update(self.config)
        (root / "rabbitmq.conf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))

    def _env(self) -> dict[str, str]:
        root = self.root
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RABBITMQ_", "ERL_", "NOTIFY_SOCKET"))
        }
        env.update(
            {
                "HOME": str(root / "home"),
                "LC_ALL": "C.UTF-8",
                "ERL_EPMD_PORT": str(self.epmd_port),
                "RABBITMQ_NODENAME": self.nodename,
                "RABBITMQ_NODE_IP_ADDRESS": self.host,
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_CONF_ENV_FILE": str(root / "rabbitmq-env.conf"),
                "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(root / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
                "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
                "RABBITMQ_LOG_BASE": str(root / "log"),
                "RABBITMQ_PID_FILE": str(root / "rabbitmq.pid"),
            }
        )
        return env

    def _before_spawn(self) -> None:
        if self._epmd is None or self._epmd.exited():
            if self._epmd is not None:
                self._epmd.kill()
            self._epmd = _Child(
                [self.epmd, "-port", str(self.epmd_port), "-address", self.host],
                log_path=self.root / "epmd.log",
                cwd=self.root,
            )
            deadline = time.monotonic() + 10.0
            while True:
                try:
                    socket.create_connection((self.host, self.epmd_port), timeout=1.0).close()
                    break
                except OSError:
                    if self._epmd.exited() or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"epmd did not listen on {self.epmd_port}: "
                            f"{(self.root / 'epmd.log').read_text(errors='replace')}"
                        ) from None
                    time.sleep(_POLL)

    def _after_stop(self) -> None:
        if self._epmd is not None:
            self._epmd.terminate(signal.SIGTERM, 5.0)
            self._epmd = None

    def _command(self) -> list[str]:
        return [self.script]

    def sync_metadata(self) -> None:
        """Write the node's Mnesia transaction log (queue and exchange
        definitions) to disk. Mnesia writes it lazily: a durable queue declared
        moments before a SIGKILL can be gone after the restart ("Recovering 0
        queues"), and the messages confirmed into it with it. Call before
        kill() when the test is about what survives a crash."""
        ctl = str(Path(self.script).with_name("rabbitmqctl"))
        done = subprocess.run(
            [ctl, "-n", self.nodename, "eval", "mnesia:sync_log()."],
            env=self._env(),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0 or done.stdout.strip() != "ok":
            raise RuntimeError(
                f"rabbitmqctl eval mnesia:sync_log() failed ({done.returncode}): "
                f"{done.stdout.strip()} {done.stderr.strip()}"
            )

    def _probe(self) -> bool:
        # AMQP 0-9-1 handshake: the server's first frame must be Connection.Start.
        with socket.create_connection((self.host, self.port), timeout=2.0) as s:
            s.sendall(b"AMQP\x00\x00\x09\x01")
            head = b""
            while len(head) < 11:
                chunk = s.recv(11 - len(head))
                if not chunk:
                    return False
                head += chunk
            # frame type 1 (method), channel 0, size(4), class 10, method 10
            return head[0] == 1 and head[7:11] == b"\x00\x0a\x00\x0a"


# --------------------------------------------------------------------------- Kafka


def _kafka_cluster_id() -> str:
    while True:  # like Kafka's Uuid.randomUuid: base64url, never starting with "-"
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


KAFKA_DEFAULT_CONFIG: dict[str, str] = {
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "4",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "4",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "min.insync.replicas": "1",
    "group.initial.rebalance.delay.ms": "0",
    "num.partitions": "1",
    "auto.create.topics.enable": "true",
    # After a SIGKILL the restarted broker cannot register until the controller
    # has expired the old incarnation's session (default 9 s): keep that short.
    "broker.session.timeout.ms": "3000",
    "broker.heartbeat.interval.ms": "500",
}

KAFKA_JVM_OPTS: tuple[str, ...] = (
    "-Xmx512m",
    "-Xms128m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)


class KafkaServer(_Server):
    """Apache Kafka 4.x, one node in KRaft combined mode (broker + controller).

    ``config`` entries override :data:`KAFKA_DEFAULT_CONFIG`; the first start
    formats the storage (``kafka.tools.StorageTool format --standalone``).
    """

    name = "kafka"

    def __init__(
        self,
        *,
        config: Mapping[str, str] | None = None,
        jvm_opts: Sequence[str] = KAFKA_JVM_OPTS,
        log_level: str = "warn",
        **kw: Unpack[ServerOptions],
    ) -> None:
        self.config = dict(config or {})
        self.jvm_opts = list(jvm_opts)
        self.log_level = log_level
        self.controller_port = 0
        self.cluster_id = _kafka_cluster_id()
        super().__init__(**kw)

    def _check_installed(self) -> None:
        java_home = os.environ.get("JAVA_HOME")
        self.java = _which("java", *([f"{java_home}/bin/java"] if java_home else []))
        self.libs = kafka_libs_dir()
        if not (self.libs / f"kafka_2.13-{kafka_version()}.jar").exists():
            raise ServerNotInstalled(
                f"Kafka {kafka_version()} jars not found in {self.libs}: {INSTALL_HINT}"
            )
        _require_module("confluent_kafka", "kafka")

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return self.bootstrap

    def _allocate_ports(self) -> None:
        self.port, self.controller_port = free_ports(2)

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            self.java,
            *self.jvm_opts,
            f"-Dlog4j2.configurationFile={self.root / 'log4j2.properties'}",
            "-cp",
            f"{self.libs}/*",
            main,
            *args,
        ]

    def _prepare(self) -> None:
        root = self.root
        (root / "data").mkdir()
        controller = f"{self.host}:{self.controller_port}"
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": controller,
            "listeners": f"PLAINTEXT://{self.bootstrap},CONTROLLER://{controller}",
            "advertised.listeners": f"PLAINTEXT://{self.bootstrap},CONTROLLER://{controller}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(root / "data"),
            **KAFKA_DEFAULT_CONFIG,
        }
        settings.update(self.config)
        (root / "server.properties").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        (root / "log4j2.properties").write_text(
            "status = warn\n"
            "appender.console.type = Console\n"
            "appender.console.name = STDOUT\n"
            "appender.console.layout.type = PatternLayout\n"
            "appender.console.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = " + self.log_level + "\n"
            "rootLogger.appenderRef.stdout.ref = STDOUT\n"
        )
        fmt = subprocess.run(
            self._java(
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                self.cluster_id,
                "-c",
                str(root / "server.properties"),
            ),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if fmt.returncode != 0:
            raise RuntimeError(
                f"kafka storage format failed ({fmt.returncode}):\n{fmt.stdout}\n{fmt.stderr}"
            )

    def _command(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.root / "server.properties"))

    def _probe(self) -> bool:
        socket.create_connection((self.host, self.port), timeout=1.0).close()
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(
            {"bootstrap.servers": self.bootstrap, "log_level": 0, "socket.timeout.ms": 2000}
        )
        metadata = admin.list_topics(timeout=3.0)
        if 1 not in metadata.brokers:
            return False
        return self._coordinator_ready()

    def _coordinator_ready(self) -> bool:
        """Can a transactional (or idempotent) producer get its producer id? On a
        busy machine the broker answers metadata requests a while before its
        transaction coordinator has loaded, and a test's first producer would
        fail with "Coordinator load in progress"."""
        from confluent_kafka import KafkaException, Producer

        producer = Producer(
            {"bootstrap.servers": self.bootstrap, "transactional.id": "walrelay-server-ready"}
        )
        try:
            producer.init_transactions(5.0)
        except KafkaException as exc:
            if exc.args[0].retriable():
                return False
            raise
        finally:
            producer.flush(1.0)
        return True
