"""``walrelay sync``: every direction of a sync in one process.

Start-up checks every reachable node (:mod:`walrelay.sync.catalog`), then
runs one :class:`~walrelay.sync.reader.NodeReader` per node and one
:class:`~walrelay.sync.applier.Direction` per ordered pair of nodes. A node
that is down at start-up, or goes away during it (after a first run prepared
it), only waits: its directions connect when it is back. With fewer than two
nodes reachable, start-up itself waits and retries, saying which are missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg

from walrelay.dsn import connect_error, refused_for_good
from walrelay.errors import ConfigError, WalrelayError
from walrelay.state.sync import trim_tombstones
from walrelay.sync.applier import Direction
from walrelay.sync.catalog import NodeTables, check_nodes, inspect_node, prepare_node
from walrelay.sync.config import SyncSettings
from walrelay.sync.conflicts import Resolver, load_resolver
from walrelay.sync.reader import NodeReader

if TYPE_CHECKING:
    from walrelay.web.server import HttpServer

__all__ = ["SyncRunner"]

log = logging.getLogger("walrelay.sync")

TOMBSTONE_MARGIN = timedelta(minutes=1)
"""Deletes are remembered this long after every direction into the node passed
them (commit times are not strictly monotonic in commit order, clocks drift)."""


class TooFewNodes(ConfigError):
    """Fewer than two nodes answered at start-up."""


class SyncRunner:
    """Runs a sync until :meth:`stop`."""

    def __init__(self, settings: SyncSettings) -> None:
        self.settings = settings
        self._stop = asyncio.Event()
        self.directions: dict[tuple[str, str], Direction] = {}
        self.readers: dict[str, NodeReader] = {}
        self.ready = asyncio.Event()
        self.http: HttpServer | None = None
        # Nodes set up (slot, publication, triggers, state schema) in this run; the
        # others are set up when they answer (_prepare_late) before they take part.
        self.prepared: dict[str, asyncio.Event] = {n: asyncio.Event() for n in settings.nodes}
        self._tables: dict[str, NodeTables] = {}

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def prepare(self, initial_from: str | None = None) -> dict[str, int]:
        """Check every node, then set each up; returns server versions by node."""
        s = self.settings
        resolvers: dict[str, Resolver] = {
            t: load_resolver(s.conflicts.policy_of(t)) for t in s.tables
        }
        self._resolvers = resolvers
        conns: dict[str, psycopg.AsyncConnection[tuple[Any, ...]]] = {}
        self._lost: list[psycopg.AsyncConnection[tuple[Any, ...]]] = []
        versions: dict[str, int] = {}
        try:
            for node, cfg in s.nodes.items():
                try:
                    conns[node] = await psycopg.AsyncConnection.connect(
                        cfg.dsn_value, autocommit=True, connect_timeout=5
                    )
                except psycopg.OperationalError as e:
                    if refused_for_good(e):
                        raise connect_error(
                            f"node {node}", cfg.dsn_value, e, fix=f"correct node {node}'s dsn"
                        ) from None
                    if initial_from is not None:
                        raise ConfigError(
                            f"node {node} ({cfg.masked_dsn}) is unreachable: "
                            f"{str(e).strip().splitlines()[-1]}",
                            fix="start it: --initial needs every node",
                        ) from None
                    log.warning(
                        "node %s is unreachable (%s); its directions wait for it",
                        node,
                        str(e).strip().splitlines()[-1],
                    )
            self._enough(conns)
            tables: dict[str, NodeTables] = {}
            for node, conn in list(conns.items()):
                try:
                    tables[node] = await inspect_node(conn, node, s.tables)
                except psycopg.OperationalError as e:
                    self._went_away(conns, node, e, initial_from)
                    continue
                versions[node] = conn.info.server_version
            check_nodes(tables)
            if initial_from is not None:
                from walrelay.sync.initial import copy_from

                await copy_from(s, initial_from, conns, tables)
            else:
                for node, conn in list(conns.items()):
                    try:
                        await prepare_node(conn, s, node, tables[node])
                    except psycopg.OperationalError as e:
                        self._went_away(conns, node, e, initial_from)
                self._enough(conns)
            self._tables = {n: tables[n] for n in conns}
            for node in conns:
                self.prepared[node].set()
        finally:
            for conn in [*conns.values(), *self._lost]:
                with contextlib.suppress(Exception):
                    await conn.close()
        return versions

    def _went_away(
        self,
        conns: dict[str, psycopg.AsyncConnection[tuple[Any, ...]]],
        node: str,
        error: psycopg.OperationalError,
        initial_from: str | None,
    ) -> None:
        """A node lost during start-up waits like one down at start-up (a server
        restart must not end the sync); ``--initial`` needs every node."""
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "connection lost"
        self._lost.append(conns.pop(node))  # closed with the others
        if initial_from is not None:
            raise ConfigError(
                f"node {node} ({self.settings.nodes[node].masked_dsn}) went away during "
                f"start-up: {reason}",
                fix="start it: --initial needs every node",
            ) from None
        log.warning(
            "node %s went away during start-up (%s); its directions wait for it", node, reason
        )

    def _enough(self, conns: dict[str, psycopg.AsyncConnection[tuple[Any, ...]]]) -> None:
        if len(conns) < 2:
            raise TooFewNodes(
                f"only {len(conns)} of {len(self.settings.nodes)} nodes are reachable",
                fix="start the nodes' servers, or check the dsn of each node",
            )

    async def _prepare_when_reachable(self, initial_from: str | None) -> dict[str, int] | None:
        """:meth:`prepare` once two nodes answer (None: stopped meanwhile); a
        first run with a wrong dsn says so on every attempt."""
        backoff = self.settings.reconnect
        delay = backoff.initial
        while True:
            try:
                return await self.prepare(initial_from)
            except TooFewNodes as e:
                if initial_from is not None:
                    raise
                log.warning("sync %s: %s; retrying in %.1fs", self.settings.name, e, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                return None
            delay = min(delay * backoff.multiplier, backoff.max)

    async def run(self, initial_from: str | None = None) -> None:
        s = self.settings
        prepared = await self._prepare_when_reachable(initial_from)
        if prepared is None:
            return
        versions = prepared
        for src in s.nodes:
            for dst in s.nodes:
                if src != dst:
                    self.directions[(src, dst)] = Direction(s, src, dst, self._resolvers)
        for node in s.nodes:
            outgoing = [d for (src, _), d in self.directions.items() if src == node]
            self.readers[node] = NodeReader(s, node, outgoing, versions.get(node, 150000))
        tasks = [
            asyncio.create_task(
                self._once_prepared((src, dst), d.run(self.readers[src], self._stop)),
                name=f"sync {d.name}",
            )
            for (src, dst), d in self.directions.items()
        ]
        tasks += [
            asyncio.create_task(
                self._once_prepared((n,), r.run(self._stop)), name=f"sync reader {n}"
            )
            for n, r in self.readers.items()
        ]
        # These end when their node is set up; the others run until the sync stops.
        preparing = {
            asyncio.create_task(self._prepare_late(n), name=f"sync prepare {n}")
            for n, ready in self.prepared.items()
            if not ready.is_set()
        }
        tasks.append(asyncio.create_task(self._upkeep(), name="sync upkeep"))
        log.info(
            "sync %s: %d nodes, %d directions, tables %s",
            s.name,
            len(s.nodes),
            len(self.directions),
            ", ".join(s.tables),
        )
        self.ready.set()
        await self._start_http()
        stopped = asyncio.create_task(self._stop.wait())
        pending: set[asyncio.Task[Any]] = {stopped, *tasks, *preparing}
        try:
            while True:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    if t is not stopped and not t.cancelled() and t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
                if not done <= preparing:
                    break
        finally:
            stopped.cancel()
            for t in [*tasks, *preparing]:
                t.cancel()
            await asyncio.gather(*tasks, *preparing, return_exceptions=True)
            if self.http is not None:
                await self.http.stop()
                self.http = None

    async def _once_prepared(self, nodes: tuple[str, ...], work: Coroutine[Any, Any, None]) -> None:
        """``work`` once every one of ``nodes`` is set up."""
        try:
            waiting = [self.prepared[n] for n in nodes if not self.prepared[n].is_set()]
            if waiting:
                # A direction into a node not set up yet counts as tried (as one whose
                # node is down), so that its source's reader streams for the others.
                for direction in self.directions.values():
                    if (direction.source, direction.target) == nodes:
                        direction.ever_tried.set()
                await asyncio.gather(*(e.wait() for e in waiting))
        except BaseException:
            work.close()
            raise
        await work

    async def _prepare_late(self, node: str) -> None:
        """Set up ``node``, unreachable at start-up, once it answers; its reader and
        the directions into it start then. A node never set up before gets its
        slot now: what was written on it before this moment is not synced."""
        s = self.settings
        cfg = s.nodes[node]
        backoff = s.reconnect
        delay = backoff.initial
        while not self._stop.is_set():
            try:
                conn = await psycopg.AsyncConnection.connect(
                    cfg.dsn_value, autocommit=True, connect_timeout=5
                )
            except psycopg.OperationalError as e:
                if refused_for_good(e):
                    refusal = connect_error(
                        f"node {node}", cfg.dsn_value, e, fix=f"correct node {node}'s dsn"
                    )
                    log.error("%s; retrying in %.1fs", refusal, delay)
            else:
                try:
                    tables = await inspect_node(conn, node, s.tables)
                    check_nodes({**self._tables, node: tables})
                    await prepare_node(conn, s, node, tables)
                    self.readers[node].server_version = conn.info.server_version
                    self._tables[node] = tables
                    log.info(
                        "sync %s: node %s is back and set up (slot %s); its changes are "
                        "synced from here on",
                        s.name,
                        node,
                        s.slot(node),
                    )
                    self.prepared[node].set()
                    return
                except psycopg.OperationalError as e:
                    reason = (str(e).strip().splitlines() or ["connection lost"])[-1]
                    log.warning("node %s went away while being set up (%s)", node, reason)
                except WalrelayError as e:  # e.g. its table differs: fixable meanwhile
                    log.error("%s; retrying in %.1fs", e, delay)
                finally:
                    with contextlib.suppress(Exception):
                        await conn.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * backoff.multiplier, backoff.max)

    async def _start_http(self) -> None:
        """/healthz, /metrics, /api/status and the dashboard (:mod:`walrelay.sync.status`)."""
        cfg = self.settings.http
        if not cfg.enabled:
            return
        from walrelay.sync.status import SyncStatus
        from walrelay.web.auth import resolve_token
        from walrelay.web.server import HttpServer

        token, where = resolve_token(cfg, self.settings.token_key, create=True)
        server = HttpServer(
            SyncStatus(self),
            host=cfg.listen,
            port=cfg.port,
            token=token,
            ssl_context=cfg.server_ssl_context(),
        )
        try:
            await server.start()
        except OSError as e:
            raise ConfigError(
                f"sync {self.settings.name}: http cannot listen on {cfg.listen}:{cfg.port}: "
                f"{e.strerror or e}",
                fix="set sync.http.port to a free port (or sync.http.enabled: false)",
            ) from None
        self.http = server
        log.info("sync %s: http on %s (API token from %s)", self.settings.name, server.url, where)

    async def _upkeep(self) -> None:
        while True:
            await asyncio.sleep(self.settings.status_interval)
            for d in self.directions.values():
                st = d.stats
                log.info(
                    "sync %s: %s, %d transactions (%d changes) applied, conflicts %s",
                    d.name,
                    "connected" if st.connected else "waiting for the node",
                    st.transactions,
                    st.changes,
                    dict(st.conflicts) or "none",
                )
            for node in self.settings.nodes:
                await self._trim(node)

    async def _trim(self, node: str) -> None:
        passed = [d.passed_time for (_, dst), d in self.directions.items() if dst == node]
        if not passed or any(p is None for p in passed):
            return
        floor: datetime = min(p for p in passed if p is not None) - TOMBSTONE_MARGIN
        try:
            async with await psycopg.AsyncConnection.connect(
                self.settings.nodes[node].dsn_value, autocommit=True, connect_timeout=5
            ) as conn:
                n = await trim_tombstones(conn, self.settings.state_schema, floor)
        except psycopg.Error as e:
            log.debug("sync node %s: tombstones not trimmed: %s", node, e)
            return
        if n:
            log.info("sync node %s: forgot %d delete tombstone(s) every node has passed", node, n)
