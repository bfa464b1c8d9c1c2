"""Prometheus metrics of a running sync, read from its counters at scrape time.

==============================================================  ===============================
``walrelay_sync_connected{direction}``                          1 while the applier is connected
``walrelay_sync_applied_transactions_total{direction}``         source transactions applied
``walrelay_sync_applied_changes_total{direction}``              their changes
``walrelay_sync_replays_skipped_total{direction}``              already applied (after a restart)
``walrelay_sync_conflicts_total{direction,conflict}``           conflicts detected, by kind
``walrelay_sync_lag_seconds{direction}``                        now - the source commit time the
                                                                direction has passed, while it
                                                                is behind; 0 when caught up
``walrelay_sync_lag_bytes{direction}``                          source WAL not yet applied or
                                                                passed (once the source is heard)
``walrelay_sync_queued_transactions{direction}``                read, not yet applied
``walrelay_sync_echoes_dropped_total{node}``                    transactions of our origins dropped
==============================================================  ===============================
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from walrelay.sync.view import SyncView, direction_lag

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["SyncCollector", "serve_metrics"]


class SyncCollector:
    """A prometheus-client collector over a :class:`SyncRunner`'s counters."""

    def __init__(self, runner: SyncView) -> None:
        self.runner = runner

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        d = ["direction"]
        connected = GaugeMetricFamily("walrelay_sync_connected", "applier connected", labels=d)
        txs = CounterMetricFamily(
            "walrelay_sync_applied_transactions", "source transactions applied", labels=d
        )
        changes = CounterMetricFamily("walrelay_sync_applied_changes", "changes applied", labels=d)
        replays = CounterMetricFamily(
            "walrelay_sync_replays_skipped", "transactions already applied", labels=d
        )
        conflicts = CounterMetricFamily(
            "walrelay_sync_conflicts", "conflicts detected", labels=["direction", "conflict"]
        )
        lag = GaugeMetricFamily("walrelay_sync_lag_seconds", "apply lag", labels=d)
        lag_bytes = GaugeMetricFamily(
            "walrelay_sync_lag_bytes", "source WAL not yet applied", labels=d
        )
        queued = GaugeMetricFamily(
            "walrelay_sync_queued_transactions", "read, not yet applied", labels=d
        )
        for (src, _), direction in self.runner.directions.items():
            name = [direction.name]
            st = direction.stats
            connected.add_metric(name, 1.0 if st.connected else 0.0)
            txs.add_metric(name, st.transactions)
            changes.add_metric(name, st.changes)
            replays.add_metric(name, st.replays_skipped)
            for kind, n in st.conflicts.items():
                conflicts.add_metric([direction.name, kind], n)
            queued.add_metric(name, direction.queue.qsize())
            behind_bytes, behind = direction_lag(direction, self.runner.readers.get(src))
            lag.add_metric(name, behind)
            if behind_bytes is not None:
                lag_bytes.add_metric(name, behind_bytes)
        echoes = CounterMetricFamily(
            "walrelay_sync_echoes_dropped", "our own applied transactions dropped", labels=["node"]
        )
        for node, reader in self.runner.readers.items():
            echoes.add_metric([node], reader.echoes_dropped)
        yield from (connected, txs, changes, replays, conflicts, lag, lag_bytes, queued, echoes)


def serve_metrics(runner: SyncView, host: str, port: int) -> None:
    """``/metrics`` on ``host:port`` (prometheus-client's own HTTP server thread)."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        from walrelay.errors import ConfigError

        raise ConfigError(
            "--metrics-port needs prometheus-client", fix="pip install 'walrelay[metrics]'"
        ) from None
    registry = CollectorRegistry()
    registry.register(SyncCollector(runner))
    start_http_server(port, addr=host, registry=registry)
