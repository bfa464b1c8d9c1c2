"""Prometheus metrics, read from the engine's own counters at scrape time.

Nothing on the hot path touches prometheus-client: a scrape walks the
engine's destinations, the last monitor snapshot and the open alerts (see
:class:`MetricsCollector`). The one thing measured as events finish is the
commit -> delivered latency, kept by :class:`LatencyHistogram` with one
bucket lookup per *transaction* of a finished batch, not per event.

Metric names (the Grafana dashboard in ``grafana/walrelay.json`` uses them):

==========================================  =====================================
``walrelay_info{slot,publication}``         always 1 (rules join on it for ``slot``)
``walrelay_streaming``                      1 while the replication stream runs
``walrelay_events_in_total{destination}``   events routed to the destination
``walrelay_events_out_total{destination}``  events delivered
``walrelay_events_parked_total{...}``       events moved to parking
``walrelay_delivery_failures_total{...}``   failed delivery attempts
``walrelay_delivery_latency_seconds{...}``  histogram, commit -> delivered
``walrelay_delivery_lag_seconds{...}``      current lag estimate (0 when idle)
``walrelay_in_flight_events{...}``          handed to the sink, not finished
``walrelay_buffered_events{...}``           waiting in the buffer
``walrelay_buffered_bytes{...}``            buffer bytes held (waiting + in flight)
``walrelay_parked_events{...}``             parked now (parking)
``walrelay_dead_events{...}``               dead now (parking)
``walrelay_oldest_parked_age_seconds{...}`` age of the oldest parked event
``walrelay_destination_failing_seconds{...}``  every attempt failing for (0: not)
``walrelay_destination_ready{...}``         0 while its server was not reachable since start
``walrelay_parking_cap_used_ratio{...}``    parked events / bytes against the cap
``walrelay_replication_paused{reason}``     1 while paused (parked cap, backpressure)
``walrelay_walsender_cpu_ratio{slot,...}``  walsender CPU, share of a core (/proc, or wait events)
``walrelay_walsender_write_lag_seconds``    pg_stat_replication.write_lag, per slot
``walrelay_walsender_flush_lag_seconds``    pg_stat_replication.flush_lag, per slot
``walrelay_max_slot_wal_keep_size_bytes``   the cap (absent when unlimited)
``walrelay_max_wal_size_bytes``             max_wal_size
``walrelay_confirmed_lsn``                  confirmed flush LSN, as a byte position
``walrelay_source_events_total``            changes routed to any destination
``walrelay_source_transactions_total``      transactions received
``walrelay_reconnects_total``               replication reconnects
``walrelay_heartbeat_lag_seconds``          heartbeat emitted -> received
``walrelay_slot_active{slot,database,owned}``             1/0
``walrelay_slot_retained_wal_bytes{...}``   current LSN - restart_lsn
``walrelay_slot_pending_wal_bytes{...}``    current LSN - confirmed_flush_lsn
``walrelay_slot_safe_wal_size_bytes{...}``  bytes until the slot would be lost
``walrelay_slot_inactive_seconds{...}``     0 while active
``walrelay_slot_wal_status{...,status}``    1 for the slot's wal_status
``walrelay_slot_spill_bytes_total{...}``    reorder buffer spilled bytes
``walrelay_slot_spill_txns_total{...}``     transactions spilled
``walrelay_walsender_sent_lag_bytes{...}``  current LSN - walsender sent_lsn
``walrelay_pg_wal_bytes``                   size of pg_wal (needs pg_monitor)
``walrelay_pg_wal_disk_used_ratio``         pg_wal filesystem usage (on its host)
``walrelay_oldest_transaction_seconds``     age of the oldest open transaction
``walrelay_alerts_open{severity}``          open alerts
``walrelay_alert{rule,object,severity}``    1 per open alert
``walrelay_monitor_last_check_timestamp_seconds``  last successful check
``walrelay_monitor_errors_total``           checks that failed
==========================================  =====================================
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from walrelay.model import Event, Lsn
from walrelay.monitor.alerts import Alert
from walrelay.monitor.probe import Snapshot
from walrelay.monitor.view import EngineView

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["BUCKETS", "LatencyHistogram", "MetricsCollector", "MetricsSource", "render_metrics"]


class _MonitorView(Protocol):
    @property
    def snapshot(self) -> Snapshot | None: ...
    @property
    def errors_total(self) -> int: ...


class MetricsSource(Protocol):
    """What the collector reads (walrelay.monitor.service.Services provides it)."""

    metrics_registry: CollectorRegistry | None

    @property
    def engine(self) -> EngineView: ...
    @property
    def latency(self) -> LatencyHistogram: ...
    @property
    def monitor(self) -> _MonitorView | None: ...
    def state(self) -> str: ...
    def destination_rows(self) -> list[dict[str, Any]]: ...
    def slot_rows(self) -> list[dict[str, Any]]: ...
    def walsender_cpu(self) -> dict[str, float]: ...
    def open_alerts(self) -> list[Alert]: ...


BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)


class _Series:
    __slots__ = ("counts", "sum", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.total = 0


class LatencyHistogram:
    """Commit -> delivered seconds per destination, observed per transaction run."""

    def __init__(self) -> None:
        self.series: dict[str, _Series] = {}
        self.last: dict[str, float] = {}  # latency of the newest finished event
        self.last_finish: dict[str, float] = {}  # monotonic time of the last finish

    def observe_batch(self, destination: str, batch: Sequence[Event]) -> None:
        if not batch:
            return
        series = self.series.get(destination)
        if series is None:
            series = self.series[destination] = _Series()
        now = time.time()
        lsn: Lsn = -1
        run = 0
        latency = 0.0
        counts = series.counts
        bucket = bisect.bisect_left
        added = 0.0
        # One step per run of a transaction's events (a single-row transaction
        # is a run of one: _add inlined).
        for event in batch:
            if event.commit_lsn != lsn:
                if run:
                    counts[bucket(BUCKETS, latency)] += run
                    added += latency * run
                lsn = event.commit_lsn
                latency = max(0.0, now - event.committed_at.timestamp())
                run = 0
            run += 1
        counts[bucket(BUCKETS, latency)] += run
        series.sum += added + latency * run
        series.total += len(batch)
        self.last[destination] = latency
        self.last_finish[destination] = time.monotonic()

    def cumulative(self, destination: str) -> list[tuple[str, float]]:
        series = self.series.get(destination) or _Series()
        out: list[tuple[str, float]] = []
        acc = 0
        for bound, n in zip((*BUCKETS, float("inf")), series.counts, strict=True):
            acc += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(acc)))
        return out


class MetricsCollector:
    """A prometheus-client collector over one engine's :class:`Services`."""

    def __init__(self, services: MetricsSource) -> None:
        self.services = services

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        svc = self.services
        engine = svc.engine
        status = svc.destination_rows()

        def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=list(labels))

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=list(labels))

        info = gauge(
            "walrelay_info", "Always 1; labels name this walrelay's slot", ["slot", "publication"]
        )
        info.add_metric([engine.config.source.slot, engine.config.source.publication], 1.0)
        yield info
        streaming = gauge("walrelay_streaming", "1 while the replication stream is running")
        streaming.add_metric([], 1.0 if svc.state() == "streaming" else 0.0)
        yield streaming

        d = ["destination"]
        fams: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "events_in": counter("walrelay_events_in_total", "Events routed to the destination", d),
            "events_out": counter(
                "walrelay_events_out_total", "Events delivered to the destination", d
            ),
            "parked_total": counter("walrelay_events_parked_total", "Events moved to parking", d),
            "failures": counter("walrelay_delivery_failures_total", "Failed delivery attempts", d),
            "lag": gauge(
                "walrelay_delivery_lag_seconds",
                "Commit -> delivered lag now (an estimate; 0 when nothing waits)",
                d,
            ),
            "in_flight": gauge(
                "walrelay_in_flight_events", "Events handed to the sink, not finished", d
            ),
            "buffered": gauge("walrelay_buffered_events", "Events waiting in the buffer", d),
            "buffered_bytes": gauge(
                "walrelay_buffered_bytes", "Buffer bytes held (waiting and in flight)", d
            ),
            "parked": gauge("walrelay_parked_events", "Events in parking now", d),
            "dead": gauge("walrelay_dead_events", "Dead events in parking", d),
            "oldest_parked_age": gauge(
                "walrelay_oldest_parked_age_seconds", "Age of the oldest parked event", d
            ),
            "failing_seconds": gauge(
                "walrelay_destination_failing_seconds",
                "How long every delivery attempt has failed (0: not failing)",
                d,
            ),
            "ready": gauge(
                "walrelay_destination_ready",
                "0 while the destination's server has not been reachable since walrelay started",
                d,
            ),
            "parked_cap_used": gauge(
                "walrelay_parking_cap_used_ratio",
                "Parked events or bytes against the parking cap (1: replication paused)",
                d,
            ),
        }
        hist = HistogramMetricFamily(
            "walrelay_delivery_latency_seconds",
            "Commit -> delivered (or parked) latency",
            labels=d,
        )
        for row in status:
            name = row["name"]
            for key, fam in fams.items():
                value = row.get(key)
                if value is not None:
                    fam.add_metric([name], float(value))
            series = svc.latency.series.get(name)
            hist.add_metric(
                [name],
                svc.latency.cumulative(name),
                series.sum if series is not None else 0.0,
            )
        yield from fams.values()
        yield hist

        confirmed = gauge(
            "walrelay_confirmed_lsn", "Confirmed flush LSN of the slot, as a byte position"
        )
        confirmed.add_metric([], float(engine.tracker.confirmed))
        yield confirmed
        stats = engine.stats
        for name, doc, value in (
            ("walrelay_source_events_total", "Changes routed to destinations", stats.events_in),
            (
                "walrelay_source_transactions_total",
                "Transactions received",
                stats.transactions_in,
            ),
            ("walrelay_reconnects_total", "Replication reconnects", stats.reconnects),
        ):
            c = counter(name, doc)
            c.add_metric([], float(value))
            yield c
        hb = gauge("walrelay_heartbeat_lag_seconds", "Heartbeat emitted -> received, seconds")
        heartbeat = getattr(stats, "heartbeat_lag", None)
        if heartbeat is not None:
            hb.add_metric([], float(heartbeat))
        yield hb
        paused = gauge(
            "walrelay_replication_paused",
            "1 while replication is paused (parked-event cap, or backpressure)",
            ["reason"],
        )
        paused.add_metric(["parked_cap"], 1.0 if engine.replication_paused else 0.0)
        released = bool(getattr(engine, "backpressured", False))
        paused.add_metric(["backpressure"], 1.0 if released else 0.0)
        yield paused

        yield from self._progress_metrics(gauge)
        yield from self._transform_metrics(counter, gauge)
        yield from self._slot_metrics()
        yield from self._alert_metrics()

    def _transform_metrics(self, counter: Any, gauge: Any) -> Iterator[Any]:
        """Per transform step of each destination (walrelay.pipeline.transforms)."""
        labels = ["destination", "step", "kind"]
        fams = {
            "events_in": counter(
                "walrelay_transform_events_in_total", "Events a transform step ran on", labels
            ),
            "dropped": counter(
                "walrelay_transform_dropped_total",
                "Events a step dropped (filter, python hook returning None, flatten drop)",
                labels,
            ),
            "errors": counter(
                "walrelay_transform_errors_total",
                "Events a step failed on (parked, retried from that step)",
                labels,
            ),
        }
        stopped = gauge(
            "walrelay_transform_stopped",
            "1 while a schema change stopped delivery to the destination",
            ["destination"],
        )
        router = self.services.engine.stats.router
        if router is not None:
            for name, chain in router.chains.items():
                for step in chain.steps:
                    labels_of = [name, str(step.index + 1), step.kind]
                    fams["events_in"].add_metric(labels_of, float(step.events_in))
                    fams["dropped"].add_metric(labels_of, float(step.dropped))
                    fams["errors"].add_metric(labels_of, float(step.errors))
                stopped.add_metric([name], 1.0 if name in router.halted else 0.0)
        yield from fams.values()
        yield stopped

    def _progress_metrics(self, gauge: Any) -> Iterator[Any]:
        """Initial snapshots and backfills: rows done of estimated, rate, ETA."""
        labels = ["kind", "table", "id"]
        fams = {
            "rows_done": gauge("walrelay_snapshot_rows_done", "Rows read so far", labels),
            "rows_estimated": gauge(
                "walrelay_snapshot_rows_estimated", "Rows expected (pg_class.reltuples)", labels
            ),
            "rate": gauge("walrelay_snapshot_rows_per_second", "Rows read per second", labels),
            "eta_seconds": gauge("walrelay_snapshot_eta_seconds", "Estimated seconds left", labels),
        }
        for p in self.services.engine.progress.values():
            doc = p.to_dict()
            ident = str(doc["backfill_id"]) if doc["backfill_id"] is not None else ""
            for key, fam in fams.items():
                if doc[key] is not None:
                    fam.add_metric([doc["kind"], doc["table"], ident], float(doc[key]))
        yield from fams.values()

    def _slot_metrics(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        svc = self.services
        snap = svc.monitor.snapshot if svc.monitor is not None else None
        labels = ["slot", "database", "owned"]
        active = GaugeMetricFamily(
            "walrelay_slot_active", "1 if the slot has a consumer", labels=labels
        )
        retained = GaugeMetricFamily(
            "walrelay_slot_retained_wal_bytes",
            "WAL retained: current LSN - restart_lsn",
            labels=labels,
        )
        pending = GaugeMetricFamily(
            "walrelay_slot_pending_wal_bytes",
            "WAL not yet confirmed: current LSN - confirmed_flush_lsn",
            labels=labels,
        )
        safe = GaugeMetricFamily(
            "walrelay_slot_safe_wal_size_bytes",
            "Bytes of WAL that can still be written before the slot is lost",
            labels=labels,
        )
        inactive = GaugeMetricFamily(
            "walrelay_slot_inactive_seconds", "How long the slot has had no consumer", labels=labels
        )
        wal_status = GaugeMetricFamily(
            "walrelay_slot_wal_status", "1 for the slot's wal_status", labels=[*labels, "status"]
        )
        spill_bytes = CounterMetricFamily(
            "walrelay_slot_spill_bytes_total", "Reorder buffer bytes spilled to disk", labels=labels
        )
        spill_txns = CounterMetricFamily(
            "walrelay_slot_spill_txns_total", "Transactions spilled to disk", labels=labels
        )
        sent_lag = GaugeMetricFamily(
            "walrelay_walsender_sent_lag_bytes",
            "Current LSN - the walsender's sent_lsn",
            labels=labels,
        )
        pg_wal = GaugeMetricFamily("walrelay_pg_wal_bytes", "Size of pg_wal (needs pg_monitor)")
        disk = GaugeMetricFamily(
            "walrelay_pg_wal_disk_used_ratio", "Usage of the filesystem holding pg_wal (0..1)"
        )
        oldest = GaugeMetricFamily(
            "walrelay_oldest_transaction_seconds", "Age of the oldest open transaction"
        )
        cpu = GaugeMetricFamily(
            "walrelay_walsender_cpu_ratio",
            "CPU of the slot's walsender, share of one core (database on this host only)",
            labels=labels,
        )
        write_lag = GaugeMetricFamily(
            "walrelay_walsender_write_lag_seconds",
            "pg_stat_replication.write_lag of the slot's walsender",
            labels=labels,
        )
        flush_lag = GaugeMetricFamily(
            "walrelay_walsender_flush_lag_seconds",
            "pg_stat_replication.flush_lag of the slot's walsender",
            labels=labels,
        )
        keep = GaugeMetricFamily(
            "walrelay_max_slot_wal_keep_size_bytes", "max_slot_wal_keep_size (absent: unlimited)"
        )
        max_wal = GaugeMetricFamily("walrelay_max_wal_size_bytes", "max_wal_size")
        cpu_ratio = svc.walsender_cpu()
        if snap is not None:
            for row in svc.slot_rows():
                values = [row["name"], row["database"] or "", "true" if row["owned"] else "false"]
                active.add_metric(values, 1.0 if row["active"] else 0.0)
                for fam, key in (
                    (retained, "retained_bytes"),
                    (pending, "pending_bytes"),
                    (safe, "safe_wal_size"),
                    (spill_bytes, "spill_bytes"),
                    (spill_txns, "spill_txns"),
                    (sent_lag, "sent_lag_bytes"),
                    (write_lag, "write_lag"),
                    (flush_lag, "flush_lag"),
                ):
                    if row.get(key) is not None:
                        fam.add_metric(values, float(row[key]))
                inactive.add_metric(values, float(row["inactive_seconds"] or 0.0))
                if row["name"] in cpu_ratio:
                    cpu.add_metric(values, cpu_ratio[row["name"]])
                if row["wal_status"]:
                    wal_status.add_metric([*values, row["wal_status"]], 1.0)
            server = snap.server
            if server.pg_wal_bytes is not None:
                pg_wal.add_metric([], float(server.pg_wal_bytes))
            if server.disk_used_percent is not None:
                disk.add_metric([], server.disk_used_percent / 100.0)
            tx = server.oldest_transaction
            oldest.add_metric([], tx.seconds if tx is not None else 0.0)
            if server.max_slot_wal_keep_size is not None:
                keep.add_metric([], float(server.max_slot_wal_keep_size))
            if server.max_wal_size is not None:
                max_wal.add_metric([], float(server.max_wal_size))
        yield from (
            active,
            retained,
            pending,
            safe,
            inactive,
            wal_status,
            spill_bytes,
            spill_txns,
            sent_lag,
            pg_wal,
            disk,
            oldest,
            cpu,
            write_lag,
            flush_lag,
            keep,
            max_wal,
        )

    def _alert_metrics(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        svc = self.services
        alerts = svc.open_alerts()
        by_sev = GaugeMetricFamily("walrelay_alerts_open", "Open alerts", labels=["severity"])
        for sev in ("warn", "page"):
            by_sev.add_metric([sev], float(sum(1 for a in alerts if a.severity.value == sev)))
        yield by_sev
        each = GaugeMetricFamily(
            "walrelay_alert", "1 per open alert", labels=["rule", "object", "severity"]
        )
        for a in alerts:
            each.add_metric([a.rule, a.object, a.severity.value], 1.0)
        yield each
        last = GaugeMetricFamily(
            "walrelay_monitor_last_check_timestamp_seconds", "Time of the last successful check"
        )
        errors = CounterMetricFamily("walrelay_monitor_errors_total", "Monitor checks that failed")
        if svc.monitor is not None:
            if svc.monitor.snapshot is not None:
                last.add_metric([], svc.monitor.snapshot.taken_at)
            errors.add_metric([], float(svc.monitor.errors_total))
        yield last
        yield errors


def render_metrics(services: MetricsSource) -> tuple[bytes, str]:
    """The exposition text and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = services.metrics_registry
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(MetricsCollector(services))
        services.metrics_registry = registry
    return generate_latest(registry), CONTENT_TYPE_LATEST
