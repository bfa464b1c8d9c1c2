"""What runs beside the replication pipeline: the monitor loop and the HTTP server.

:class:`Services` is created by the engine, started once its destinations
are open and stopped after it shut them down. It owns

* :class:`Monitor`: every ``monitor.interval`` it reads a
  :class:`~walrelay.monitor.probe.Snapshot` over its own read-only
  connection, evaluates the :mod:`rules <walrelay.monitor.rules>` and
  hands the conditions to the :class:`~walrelay.monitor.alerts.AlertManager`,
  whose notifications go to the log and the alert webhooks;
* the :class:`~walrelay.monitor.sampling.SlotSampler`, which records the
  checks' slots in the state schema every ``monitor.samples.interval`` for
  ``walrelay doctor``, and, when the source is on another host, the
  :class:`~walrelay.monitor.walsender_waits.WalsenderWaits` estimating its
  walsenders' CPU;
* the commit -> delivered :class:`~walrelay.monitor.metrics.LatencyHistogram`
  (fed by the engine as batches finish);
* the :class:`~walrelay.web.server.HttpServer` (``/healthz``, ``/metrics``,
  ``/api/status``, the dashboard);
* :meth:`Services.status`, the one status document that ``/api/status``,
  the dashboard and ``walrelay status`` show.

Nothing here may stop CDC: a monitor check that fails is logged (and, when
it keeps failing, alerted); a port already in use leaves the engine running
without its HTTP server, with an error in the log and an open alert.

Other parts of the engine can raise their own alerts through
:meth:`Services.set_condition`. Parked and dead counts come from each
destination's parking (``destination.parking.stats()``; 0 for a
destination without one), and ``engine.replication_paused`` (parking at
its cap) pages. Heartbeat lag is read from ``engine.stats.heartbeat_lag``
(seconds, None until heartbeats run).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from walrelay.model import Event, format_lsn
from walrelay.monitor.alert_targets import AlertmanagerTarget, PagerDutyTarget
from walrelay.monitor.alerts import (
    Alert,
    AlertManager,
    Condition,
    NotificationTarget,
    Notifier,
    WebhookTarget,
)
from walrelay.monitor.health import HEALTH_RULES, EngineHealth
from walrelay.monitor.metrics import LatencyHistogram, render_metrics
from walrelay.monitor.probe import Probe, Snapshot
from walrelay.monitor.rules import (
    DB_RULES,
    ENGINE_RULES,
    RuleState,
    evaluate_engine,
    evaluate_snapshot,
)
from walrelay.monitor.sampling import SlotSampler
from walrelay.monitor.thresholds import DEFAULT_THRESHOLDS, Severity, Thresholds
from walrelay.monitor.view import EngineView
from walrelay.monitor.walsender_waits import WalsenderWaits
from walrelay.pipeline.hooks import DeliveryHook

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from walrelay.config import Config, MonitorConfig
    from walrelay.web.server import HttpServer

__all__ = ["Monitor", "Services", "thresholds_from_config"]

log = logging.getLogger("walrelay.monitor")

# Consecutive failed checks before "the monitor cannot see the source" alerts.
MONITOR_FAILURES_BEFORE_ALERT = 3


def thresholds_from_config(config: MonitorConfig) -> Thresholds:
    """The defaults of ARCHITECTURE section 3 with the configured overrides."""
    from dataclasses import replace

    overrides = config.thresholds.model_dump(exclude_none=True)
    return replace(DEFAULT_THRESHOLDS, **overrides)


def instance_name(config: Config) -> str:
    """How alerts name this walrelay: its slot and where the source is."""
    from psycopg.conninfo import conninfo_to_dict

    src = config.source
    try:
        params = conninfo_to_dict(src.dsn_value)
    except Exception:
        params = {}
    where = (
        f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname', '')}"
    )
    return f"walrelay slot {src.slot} @ {where}"


class Monitor:
    """The check loop. :meth:`check` is one check; :meth:`run` loops until cancelled."""

    def __init__(
        self,
        services: Services,
        config: MonitorConfig,
        dsn: str,
        sampler: SlotSampler | None = None,
    ) -> None:
        self.services = services
        self.config = config
        self.interval = config.interval
        self.thresholds = thresholds_from_config(config)
        self.probe = Probe(dsn)
        # Records the snapshots in the state schema for the doctor (monitor.samples).
        self.sampler = sampler
        # Walsender wait events, sampled once the source proves to be on another host.
        self._waits_task: asyncio.Task[None] | None = None
        self.rule_state = RuleState()
        self.snapshot: Snapshot | None = None
        self.last_error: str | None = None
        self.errors_total = 0
        self.checks_total = 0
        self._failures = 0

    async def check(self) -> None:
        svc = self.services
        engine = svc.engine
        now = time.monotonic()
        rules: set[str] = set(ENGINE_RULES)
        conditions: list[Condition] = []
        try:
            async with asyncio.timeout(max(5.0, self.interval)):
                snap = await self.probe.read()
        except Exception as e:  # the check must never take the engine down
            self.errors_total += 1
            self._failures += 1
            self.last_error = " ".join(f"{type(e).__name__}: {e}".split())
            if self._failures == 1 or self._failures % 10 == 0:
                log.warning(
                    "monitor: cannot read the source's replication state: %s", self.last_error
                )
            if self._failures >= MONITOR_FAILURES_BEFORE_ALERT:
                rules.add("monitor_unavailable")
                conditions.append(
                    Condition(
                        "monitor_unavailable",
                        "monitor",
                        Severity.WARN,
                        f"the monitor has not been able to read the source for "
                        f"{self._failures} checks: {self.last_error}; slot and WAL alerts "
                        "are stale meanwhile",
                        "check monitor.dsn (or source.dsn) and that the role can connect; "
                        "pg_monitor is enough",
                    )
                )
        else:
            self.snapshot = snap
            self.last_error = None
            self._failures = 0
            if self.sampler is not None:
                self.sampler.offer(snap.server.current_lsn, snap.slots)
                self._inactive_from_samples(now)
            if snap.server.disk is None and self._waits_task is None:
                waits = WalsenderWaits(self.probe.walsender_waits)
                svc.engine_health.waits = waits
                self._waits_task = asyncio.get_running_loop().create_task(
                    waits.run(), name="walrelay-walsender-waits"
                )
            rules |= DB_RULES | {"monitor_unavailable"}
            state = svc.state()
            detail = (
                ""
                if state == "streaming"
                else (f"{state} ({engine.stats.reconnects} reconnects so far)")
            )
            conditions += evaluate_snapshot(
                snap,
                own_slot=engine.config.source.slot,
                thresholds=self.thresholds,
                state=self.rule_state,
                now=now,
                watch_other_slots=self.config.watch_other_slots,
                spill_sustained_checks=self.config.spill_sustained_checks,
                own_detail=detail,
            )
        conditions += evaluate_engine(
            svc.delivery_lags(),
            thresholds=self.thresholds,
            replication_paused=engine.replication_paused,
            backpressured=bool(getattr(engine, "backpressured", False)),
            slot=engine.config.source.slot,
        )
        rows = svc.destination_rows()
        svc.engine_health.observe_destinations(rows, now)
        rules |= {"destination_failing", "parked_cap", "heartbeat_lag"}
        conditions += svc.engine_health.destination_conditions(rows, now)
        conditions += svc.engine_health.heartbeat_conditions(
            engine.stats.heartbeat_lag, engine.config.source.slot, self.thresholds
        )
        if self.snapshot is not None and "slot_inactive" in rules:
            rules |= HEALTH_RULES
            conditions += svc.engine_health.walsender_conditions(
                self.snapshot, self.thresholds, now, self.snapshot.notes
            )
        rules |= svc.external_rules
        conditions += svc.external_conditions.values()
        self.checks_total += 1
        svc.notifier.notify(svc.alerts.update(conditions, rules=rules))
        svc.sync_alertmanagers()

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # a bug in a rule: log it, keep looking
                log.exception("monitor: check failed")
            await asyncio.sleep(self.interval)  # the check timer

    def _inactive_from_samples(self, now: float) -> None:
        """Before PostgreSQL 17 a slot's inactive time is counted from the
        first check that saw it; the samples in the state schema remember
        longer (across walrelay's restarts): take the earlier start."""
        assert self.sampler is not None
        since = self.rule_state.inactive_since
        for slot, seconds in self.sampler.inactive_seconds.items():
            since[slot] = min(since.get(slot, now), now - seconds)
        self.sampler.inactive_seconds = {}

    async def close(self) -> None:
        task, self._waits_task = self._waits_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.sampler is not None:
            await self.sampler.close()
        await self.probe.close()


class _LatencyHook(DeliveryHook):
    def __init__(self, latency: LatencyHistogram, destination: str) -> None:
        self.latency = latency
        self.destination = destination

    def on_finished(self, events: Sequence[Event], *, parked: bool) -> None:
        self.latency.observe_batch(self.destination, events)


class Services:
    """Monitor + metrics + HTTP for one :class:`~walrelay.engine.Engine`."""

    def __init__(self, engine: EngineView) -> None:
        self.engine = engine
        config = engine.config
        self.latency = LatencyHistogram()
        self.alerts = AlertManager(instance_name(config))
        self.notifier = Notifier()
        self.monitor: Monitor | None = None
        self.http: HttpServer | None = None
        self.metrics_registry: CollectorRegistry | None = None
        self.external_conditions: dict[str, Condition] = {}
        self.external_rules: set[str] = set()
        self.started_at = time.time()
        self._pending_since: dict[str, float] = {}
        self.engine_health = EngineHealth()
        self.alertmanagers: list[AlertmanagerTarget] = []
        self._monitor_task: asyncio.Task[None] | None = None

    # -- engine hooks ---------------------------------------------------------

    def delivery_hook(self, destination: str) -> DeliveryHook:
        """The hook that feeds ``destination``'s finished events into the
        commit -> delivered latency histogram."""
        return _LatencyHook(self.latency, destination)

    def set_condition(
        self, rule: str, obj: str, severity: Severity, message: str, fix: str | None = None
    ) -> None:
        """Raise (or with ``Severity.OK``, clear) an alert from elsewhere in the
        engine; it fires at the next check."""
        self.external_rules.add(rule)
        cond = Condition(rule, obj, severity, message, fix)
        if cond.firing:
            self.external_conditions[cond.key] = cond
        else:
            self.external_conditions.pop(cond.key, None)

    def alert_now(
        self, rule: str, obj: str, severity: Severity, message: str, fix: str | None = None
    ) -> None:
        """Like :meth:`set_condition`, but notified at once, not at the next
        check: for what the engine is about to act on (stop, re-snapshot)."""
        self.set_condition(rule, obj, severity, message, fix)
        same_rule = [c for c in self.external_conditions.values() if c.rule == rule]
        self.notifier.notify(self.alerts.update(same_rule, rules={rule}))

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        config = self.engine.config
        try:
            self._alert_targets(config)
        except Exception as e:
            log.error("alerts: %s; alerts go to the log only", e)
        if config.monitor.enabled:
            dsn = (
                config.monitor.dsn.get_secret_value()
                if config.monitor.dsn is not None
                else config.source.dsn_value
            )
            samples = config.monitor.samples
            sampler = (
                SlotSampler(config.source.dsn_value, config.state.schema, samples)
                if samples.enabled
                else None
            )
            self.monitor = Monitor(self, config.monitor, dsn, sampler)
            self._monitor_task = asyncio.get_running_loop().create_task(
                self.monitor.run(), name="walrelay-monitor"
            )
        if config.http.enabled:
            await self._start_http()

    def _alert_targets(self, config: Config) -> None:
        """Slack webhooks, PagerDuty and Alertmanager from ``alerts:``."""
        alerts, slot = config.alerts, config.source.slot
        targets: list[NotificationTarget] = [
            WebhookTarget(w.url_value(), Severity(w.min_severity), w.timeout)
            for w in [*alerts.webhooks, *alerts.slack]
        ]
        targets += [
            PagerDutyTarget(p.routing_key_value(), slot, Severity(p.min_severity), p.url, p.timeout)
            for p in alerts.pagerduty
        ]
        self.notifier.webhooks = targets
        self.alertmanagers = [
            AlertmanagerTarget(
                a.url,
                slot=slot,
                instance=self.alerts.instance,
                min_severity=Severity(a.min_severity),
                extra_labels=a.labels,
                bearer_token=a.bearer_token(),
                timeout=a.timeout,
            )
            for a in alerts.alertmanager
        ]

    def sync_alertmanagers(self) -> None:
        for target in self.alertmanagers:
            target.sync(self.notifier, self.alerts.open)

    async def _start_http(self) -> None:
        from walrelay.web.auth import resolve_token
        from walrelay.web.server import HttpServer

        cfg = self.engine.config.http
        try:
            token, where = resolve_token(cfg, self.engine.config.source.slot, create=True)
        except Exception as e:
            log.error("http: no API token (%s); the HTTP server is off", e)
            self.set_condition("http_unavailable", "http", Severity.WARN, f"no API token: {e}")
            return
        server = HttpServer(
            self,
            host=cfg.listen,
            port=cfg.port,
            token=token,
            ssl_context=cfg.server_ssl_context(),  # a ConfigError stops the engine: exit 2
        )
        try:
            await server.start()
        except OSError as e:
            log.error(
                "http: cannot listen on %s:%d (%s); metrics, API and dashboard are off",
                cfg.listen,
                cfg.port,
                e.strerror or e,
            )
            self.set_condition(
                "http_unavailable",
                "http",
                Severity.WARN,
                f"cannot listen on {cfg.listen}:{cfg.port}: {e.strerror or e}",
                "free the port or set http.port (0 picks a free one)",
            )
            return
        self.http = server
        log.info(
            "http: listening on %s (/healthz, /metrics open; API and dashboard need the token "
            "from %s)",
            server.url,
            where,
        )

    async def stop(self) -> None:
        task, self._monitor_task = self._monitor_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.monitor is not None:
            await self.monitor.close()
        if self.http is not None:
            await self.http.stop()
            self.http = None
        await self.notifier.close()

    # -- reading --------------------------------------------------------------

    def state(self) -> str:
        engine = self.engine
        if engine.stopping:
            return "stopping"
        if not engine.started.is_set():
            return "starting"
        if engine.streaming:
            return "streaming"
        return "reconnecting"

    def open_alerts(self) -> list[Alert]:
        return self.alerts.open

    def _failed_counts(self) -> dict[str, dict[str, Any]]:
        """Per destination, its parking's ``stats()`` (parked, dead, ...)."""
        out: dict[str, dict[str, Any]] = {}
        for name, dest in self.engine.destinations.items():
            stats = getattr(getattr(dest, "parking", None), "stats", None)
            if callable(stats):
                try:
                    out[name] = dict(stats())
                except Exception:
                    log.debug("destination %s: parking.stats() raised", name, exc_info=True)
        return out

    def destination_rows(self) -> list[dict[str, Any]]:
        failed = self._failed_counts()
        lags = self.delivery_lags(failed)
        configs = {d.name: d for d in self.engine.config.destinations}
        now = time.monotonic()
        rows = []
        for name, dest in self.engine.destinations.items():
            counts = failed.get(name, {})
            waiting = dest.buffered_events
            in_flight = dest.in_flight
            cfg = configs.get(name)
            cap_used: float | None = None
            if cfg is not None and counts:
                cap = cfg.parking
                cap_used = max(
                    (counts.get("parked") or 0) / cap.max_events,
                    (counts.get("parked_bytes") or 0) / cap.max_bytes,
                )
            rows.append(
                {
                    "name": name,
                    # The configured type (webhook, kafka, ...), not a wrapper's class.
                    "sink": cfg.sink.type if cfg is not None else type(dest.sink).__name__,
                    "retry_failures": counts.get("retry_failures_total") or 0,
                    "redelivered": counts.get("delivered_total") or 0,
                    "parked_cap_used": cap_used,
                    "failing_seconds": self.engine_health.failing_seconds(name, now),
                    # Every event put is finished (delivered or parked) or still held.
                    "events_in": dest.delivered_total + dest.parked_total + waiting + in_flight,
                    "events_out": dest.delivered_total,
                    "parked_total": dest.parked_total,
                    "failures": dest.failures_total,
                    "in_flight": in_flight,
                    "buffered": waiting,
                    "buffered_bytes": dest.buffered_bytes,
                    "blocked": dest.blocked,
                    "retrying": dest.retrying,
                    "parked": counts.get("parked") or 0,
                    "dead": counts.get("dead") or 0,
                    "oldest_parked_age": counts.get("oldest_parked_age_seconds"),
                    "lag": lags.get(name, 0.0),
                    "last_latency": self.latency.last.get(name),
                    "last_error": dest.last_error,
                    # Its server was unreachable at start (walrelay.engine.waiting_sink).
                    "not_ready": (not_ready := getattr(dest.sink, "not_ready", None)),
                    "ready": not_ready is None,
                }
            )
        return rows

    def delivery_lags(self, failed: dict[str, dict[str, Any]] | None = None) -> dict[str, float]:
        """Commit -> delivered lag per destination, now: the age of its oldest
        event not delivered, parked events included.

        0 when nothing waits. While events wait in memory, the latency of the
        last finished batch plus the time since anything finished (or since
        the first check that saw events waiting, if later): it keeps growing
        while a destination is stuck, which a "last delivery" figure would
        not. A parked event counts from when it was first parked (its commit
        was earlier still), so a destination failing every event shows a
        growing lag although its failures "finish" quickly.
        """
        if failed is None:
            failed = self._failed_counts()
        now = time.monotonic()
        out: dict[str, float] = {}
        for name, dest in self.engine.destinations.items():
            parked_age = float(failed.get(name, {}).get("oldest_parked_age_seconds") or 0.0)
            if dest.buffered_events + dest.in_flight == 0:
                self._pending_since.pop(name, None)
                out[name] = parked_age
                continue
            since = self._pending_since.setdefault(name, now)
            last_finish = self.latency.last_finish.get(name, 0.0)
            stalled = now - max(last_finish, since)
            out[name] = max(self.latency.last.get(name, 0.0) + stalled, parked_age)
        return out

    def walsender_cpu(self) -> dict[str, float]:
        """Per slot, its walsender's CPU (share of a core) at the last check."""
        return dict(self.engine_health.cpu_ratio)

    def slot_rows(self) -> list[dict[str, Any]]:
        monitor = self.monitor
        snap = monitor.snapshot if monitor is not None else None
        if snap is None:
            return []
        return slot_rows(
            snap, self.engine.config.source.slot, monitor.rule_state if monitor else None
        )

    def health(self) -> tuple[bool, dict[str, Any]]:
        state = self.state()
        doc: dict[str, Any] = {
            "status": state,
            "slot": self.engine.config.source.slot,
            "confirmed_lsn": format_lsn(self.engine.tracker.confirmed),
        }
        # Destinations whose server walrelay could not reach yet: named, with
        # why and the fix. The others deliver, so the status code stays 200.
        not_ready = [
            line
            for dest in self.engine.destinations.values()
            if (line := getattr(dest.sink, "not_ready", None))
        ]
        if not_ready:
            doc["not_ready"] = not_ready
        return state == "streaming", doc

    def metrics(self) -> tuple[bytes, str]:
        return render_metrics(self)

    def status(self) -> dict[str, Any]:
        """The status document (``/api/status``, the dashboard, ``walrelay status``)."""
        from importlib.metadata import PackageNotFoundError, version

        engine = self.engine
        stats = engine.stats
        try:
            ver = version("walrelay")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            ver = "?"
        monitor = self.monitor
        snap = monitor.snapshot if monitor is not None else None
        return {
            "source": "engine",
            "version": ver,
            "instance": self.alerts.instance,
            "time": time.time(),
            "started_at": self.started_at,
            "state": self.state(),
            "slot": engine.config.source.slot,
            "publication": engine.config.source.publication,
            "confirmed_lsn": format_lsn(engine.tracker.confirmed),
            "last_commit_lsn": format_lsn(stats.last_commit_lsn) if stats.last_commit_lsn else None,
            "events_in": stats.events_in,
            "transactions_in": stats.transactions_in,
            "reconnects": stats.reconnects,
            "last_delivery_lag": stats.last_delivery_lag,
            "heartbeat_lag": getattr(stats, "heartbeat_lag", None),
            "destinations": self.destination_rows(),
            "slots": self.slot_rows(),
            "server": server_dict(snap),
            "monitor": {
                "enabled": monitor is not None,
                "interval": monitor.interval if monitor is not None else None,
                "last_check": snap.taken_at if snap is not None else None,
                "error": monitor.last_error if monitor is not None else None,
                "checks": monitor.checks_total if monitor is not None else 0,
                "notes": snap.notes if snap is not None else [],
                "samples": _samples_status(monitor.sampler if monitor is not None else None),
            },
            "alerts": [a.to_dict() for a in self.open_alerts()],
            # Replication paused: the parked-event cap, or delivery blocked (the
            # replication connection released, walrelay.engine.session).
            "paused": {
                "parked_cap": engine.replication_paused,
                "backpressure": bool(getattr(engine, "backpressured", False)),
            },
            # Initial snapshots and backfills (walrelay.source.snapshot).
            "progress": [p.to_dict() for p in getattr(engine, "progress", {}).values()],
        }


def slot_rows(snap: Snapshot, own_slot: str, state: RuleState | None) -> list[dict[str, Any]]:
    """Slots of a snapshot as status rows (inactive time from the monitor's memory)."""
    now = time.monotonic()
    rows = []
    for s in snap.slots:
        row = s.to_dict()
        row["owned"] = s.name == own_slot
        inactive: float | None = None
        if not s.active:
            if s.server_inactive_seconds is not None:
                inactive = s.server_inactive_seconds
            elif state is not None and s.name in state.inactive_since:
                inactive = now - state.inactive_since[s.name]
        row["inactive_seconds"] = inactive
        rows.append(row)
    rows.sort(key=lambda r: (not r["owned"], r["name"]))
    return rows


def _samples_status(sampler: SlotSampler | None) -> dict[str, Any] | None:
    """The engine's slot samples (monitor.samples), for the status document."""
    if sampler is None:
        return None
    return {
        "interval": sampler.interval,
        "retention": sampler.retention,
        "recorded": sampler.samples_total,
        "pruned": sampler.pruned_total,
        "failures": sampler.failures_total,
        "error": sampler.last_error,
    }


def server_dict(snap: Snapshot | None) -> dict[str, Any] | None:
    if snap is None:
        return None
    server = snap.server
    tx = server.oldest_transaction
    return {
        "current_lsn": server.current_lsn,
        "server_version_num": server.server_version_num,
        "max_slot_wal_keep_size": server.max_slot_wal_keep_size,
        "pg_wal_bytes": server.pg_wal_bytes,
        "pg_wal_disk_used_percent": server.disk_used_percent,
        "pg_wal_disk_free_bytes": server.disk.free if server.disk is not None else None,
        "oldest_transaction": None
        if tx is None
        else {
            "pid": tx.pid,
            "seconds": tx.seconds,
            "state": tx.state,
            "application": tx.application,
            "database": tx.database,
            "user": tx.user,
        },
    }
