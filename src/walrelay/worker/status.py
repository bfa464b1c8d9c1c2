"""A worker's status: the document behind ``/api/status`` and ``walrelay status``,
its Prometheus metrics (``/metrics``), and the text ``walrelay status`` prints.

Served by the same :class:`walrelay.web.server.HttpServer` as the engine's
(``http:`` in the worker's file; the token as :mod:`walrelay.web.auth` finds
it, keyed by the group name). Under ``--processes N`` process *i* listens on
``http.port + i``.

Metrics (per partition: ``group``, ``topic``, ``partition``):

=================================================  =====================================
``walrelay_worker_assigned_partitions{group}``     partitions this member owns
``walrelay_worker_partition_lag_records{...}``     high watermark - safe offset
``walrelay_worker_partition_lag_seconds{...}``     age of the oldest unfinished record
``walrelay_worker_partition_safe_offset{...}``     offset that is safe to commit
``walrelay_worker_partition_committed_offset{...}``  last committed offset
``walrelay_worker_partition_records_total{...}``   records read in this assignment
``walrelay_worker_group_lag_records{...}``         the group's lag, every partition (any owner)
``walrelay_worker_trim_floor_lsn{group}``         dedup rows are trimmed below this commit LSN
``walrelay_worker_rebalances_total{group}``        assignments and revocations seen
``walrelay_worker_abandoned_events_total{group}``  revoked partitions' events dropped
``walrelay_events_out_total{destination}``         events delivered (as ``walrelay run``)
``walrelay_events_parked_total{destination}``      events moved to parking
``walrelay_delivery_failures_total{destination}``  failed delivery attempts
``walrelay_in_flight_events{destination}``         handed to the sink, not finished
``walrelay_buffered_events{destination}``          waiting in the buffer
=================================================  =====================================
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from walrelay.units import format_duration

if TYPE_CHECKING:
    import asyncio

    from prometheus_client.registry import Collector

    from walrelay.engine.delivery import Destinations
    from walrelay.worker.config import WorkerFileConfig, WorkerKafkaConfig

__all__ = ["WorkerStatus", "WorkerView", "fetch_worker_status", "render_worker_status"]


class WorkerView(Protocol):
    """What the status reads of a worker (:class:`walrelay.worker.runner.Worker`)."""

    name: str
    kafka: WorkerKafkaConfig
    started: asyncio.Event
    member_id: str | None
    rebalances: int
    abandoned: int
    not_envelopes: int
    tombstones: int
    destinations: Destinations

    @property
    def stopping(self) -> bool: ...

    def partitions_status(self) -> list[dict[str, Any]]: ...

    def group_lag_status(self) -> dict[str, Any] | None: ...

    def trim_status(self) -> dict[str, Any] | None: ...


class WorkerStatus:
    """What the HTTP server shows for one worker (a ``StatusSource``)."""

    def __init__(self, worker: WorkerView) -> None:
        self.worker = worker
        self.started_at = time.time()
        self._registry: Any = None

    def health(self) -> tuple[bool, dict[str, Any]]:
        ok = self.worker.started.is_set() and not self.worker.stopping
        return ok, {"state": "running" if ok else "stopping"}

    def status(self) -> dict[str, Any]:
        worker = self.worker
        kafka = worker.kafka
        dests = []
        for dest in worker.destinations.by_name.values():
            dests.append(
                {
                    "name": dest.name,
                    "delivered": dest.delivered_total,
                    "events_out": dest.delivered_total,  # the key `run` uses (dashboard)
                    "parked": dest.parked_total,
                    "failures": dest.failures_total,
                    "in_flight": dest.in_flight,
                    "buffered": dest.buffered_events,
                    "last_error": dest.last_error,
                }
            )
        return {
            "source": "worker",
            "time": time.time(),
            "started_at": self.started_at,
            "state": "stopping" if worker.stopping else "running",
            "name": worker.name,
            "group": kafka.group,
            "member_id": worker.member_id,
            "topics": list(kafka.topics),
            "partitions": worker.partitions_status(),
            # The whole group (every member, every partition), read from the cluster.
            "group_lag": worker.group_lag_status(),
            # The ledger / applied_events trim floor (walrelay.worker.trim).
            "trim": worker.trim_status(),
            "rebalances": worker.rebalances,
            "abandoned_events": worker.abandoned,
            "skipped_records": worker.not_envelopes,
            "tombstones": worker.tombstones,
            "destinations": dests,
        }

    def metrics(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(_collector(self.worker))
        return generate_latest(self._registry), CONTENT_TYPE_LATEST


def _collector(worker: WorkerView) -> Collector:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

    class _WorkerCollector:
        def collect(self) -> Iterator[Metric]:
            group = worker.kafka.group
            parts = worker.partitions_status()
            labels = ["group", "topic", "partition"]
            assigned = GaugeMetricFamily(
                "walrelay_worker_assigned_partitions", "partitions owned", labels=["group"]
            )
            assigned.add_metric([group], len(parts))
            yield assigned
            gauges = {
                "lag_records": ("walrelay_worker_partition_lag_records", "records not finished"),
                "lag_seconds": ("walrelay_worker_partition_lag_seconds", "oldest unfinished age"),
                "safe_offset": ("walrelay_worker_partition_safe_offset", "safe to commit"),
                "committed_offset": ("walrelay_worker_partition_committed_offset", "committed"),
            }
            for field, (name, doc) in gauges.items():
                family = GaugeMetricFamily(name, doc, labels=labels)
                for p in parts:
                    if p[field] is not None:
                        family.add_metric([group, p["topic"], str(p["partition"])], p[field])
                yield family
            records = CounterMetricFamily(
                "walrelay_worker_partition_records", "records read", labels=labels
            )
            for p in parts:
                records.add_metric([group, p["topic"], str(p["partition"])], p["consumed_total"])
            yield records
            group_lag = worker.group_lag_status()
            if group_lag is not None and group_lag["partitions"]:
                whole = GaugeMetricFamily(
                    "walrelay_worker_group_lag_records",
                    "the group's end - committed offset, every partition",
                    labels=labels,
                )
                for p in group_lag["partitions"]:
                    whole.add_metric([group, p["topic"], str(p["partition"])], p["lag_records"])
                yield whole
            trim = worker.trim_status()
            if trim is not None and trim["floor_lsn"] is not None:
                floor = GaugeMetricFamily(
                    "walrelay_worker_trim_floor_lsn",
                    "dedup rows are trimmed below this commit LSN",
                    labels=["group"],
                )
                floor.add_metric([group], trim["floor_lsn"])
                yield floor
            for name, doc, value in (
                ("walrelay_worker_rebalances", "rebalances seen", worker.rebalances),
                ("walrelay_worker_abandoned_events", "revoked events dropped", worker.abandoned),
                (
                    "walrelay_worker_skipped_records",
                    "records that are no event",
                    worker.not_envelopes,
                ),
                ("walrelay_worker_tombstones", "tombstones read (no event)", worker.tombstones),
            ):
                counter = CounterMetricFamily(name, doc, labels=["group"])
                counter.add_metric([group], value)
                yield counter
            dests = list(worker.destinations.by_name.values())
            for name, doc, attr, kind in (
                ("walrelay_events_out", "events delivered", "delivered_total", "c"),
                ("walrelay_events_parked", "events parked", "parked_total", "c"),
                ("walrelay_delivery_failures", "failed attempts", "failures_total", "c"),
                ("walrelay_in_flight_events", "in flight", "in_flight", "g"),
                ("walrelay_buffered_events", "waiting", "buffered_events", "g"),
            ):
                fam: Metric = (
                    CounterMetricFamily(name, doc, labels=["destination"])
                    if kind == "c"
                    else GaugeMetricFamily(name, doc, labels=["destination"])
                )
                for dest in dests:
                    fam.add_metric([dest.name], getattr(dest, attr))  # type: ignore[attr-defined]
                yield fam

    return _WorkerCollector()


# -- `walrelay status` for a worker's file -------------------------------------------


def fetch_worker_status(
    config: WorkerFileConfig, timeout: float = 3.0
) -> tuple[list[dict[str, Any]], str]:
    """The status of every worker process of this file on this host
    (``http.port``, ``+1``, ... while they answer), and a note on why not."""
    from walrelay.errors import WalrelayError
    from walrelay.web.auth import resolve_token

    http = config.http
    if not http.enabled or http.port == 0:
        return [], "http is disabled (or port 0) in the worker's config, so it cannot be asked"
    host = "127.0.0.1" if http.listen in ("", "0.0.0.0") else http.listen
    docs: list[dict[str, Any]] = []
    why = ""
    for i in range(256):
        try:
            token, _ = resolve_token(http, config.worker.kafka.group, create=False)
        except WalrelayError as e:
            return [], f"no API token: {e}"
        url = f"http://{host}:{http.port + i}/api/status"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                doc = orjson.loads(resp.read())
        except (urllib.error.URLError, OSError, orjson.JSONDecodeError) as e:
            why = f"no worker answers at {url} ({getattr(e, 'reason', e)})"
            break
        if not isinstance(doc, dict) or doc.get("group") != config.worker.kafka.group:
            why = f"{url} is not a worker of group {config.worker.kafka.group}"
            break
        docs.append(doc)
    return docs, why


def render_worker_status(docs: list[dict[str, Any]]) -> str:
    """The table ``walrelay status`` prints for a worker's file: each local
    process, then the whole group's lag (the latest reading any of them has)."""
    out: list[str] = []
    for doc in docs:
        out.append(
            f"worker {doc['name']} of group {doc['group']} ({doc['state']}):"
            f" {len(doc['partitions'])} partition(s), {doc['rebalances']} rebalance(s),"
            f" {doc['abandoned_events']} abandoned event(s)"
        )
        out.append(f"  {'partition':<40} {'safe':>10} {'committed':>10} {'lag':>8} {'lag time':>9}")
        for p in doc["partitions"]:
            seconds = p["lag_seconds"]
            out.append(
                f"  {p['topic'] + '[' + str(p['partition']) + ']':<40}"
                f" {_n(p['safe_offset']):>10} {_n(p['committed_offset']):>10}"
                f" {_n(p['lag_records']):>8}"
                f" {'?' if seconds is None else format_duration(seconds):>9}"
            )
        for d in doc["destinations"]:
            out.append(
                f"  destination {d['name']}: {d['delivered']} delivered, {d['parked']} parked,"
                f" {d['in_flight']} in flight, {d['buffered']} buffered"
                + (f"; last error: {d['last_error']}" if d["last_error"] else "")
            )
        trim = doc.get("trim")
        if trim is not None:
            out.append(f"  dedup rows: {_trim_line(trim)}")
    readings = [d["group_lag"] for d in docs if d.get("group_lag")]
    if readings:
        owners = {(p["topic"], p["partition"]): d["name"] for d in docs for p in d["partitions"]}
        lag = max(readings, key=lambda r: r["as_of"] or 0)
        out += _render_group_lag(docs[0]["group"], lag, owners)
    return "\n".join(out)


def _render_group_lag(
    group: str, lag: dict[str, Any], owners: dict[tuple[str, int], str]
) -> list[str]:
    parts = lag["partitions"]
    when = (
        "" if lag["as_of"] is None else f", read {format_duration(time.time() - lag['as_of'])} ago"
    )
    out = [
        f"group {group}: lag {lag['lag_records']} record(s) over {len(parts)} partition(s){when}"
    ]
    if lag["error"]:
        out.append(f"  last reading failed: {lag['error']}")
    if parts:
        out.append(f"  {'partition':<40} {'committed':>10} {'end':>10} {'lag':>8}  owner")
    for p in parts:
        out.append(
            f"  {p['topic'] + '[' + str(p['partition']) + ']':<40}"
            f" {_n(p['committed']):>10} {p['end']:>10} {p['lag_records']:>8}"
            f"  {owners.get((p['topic'], p['partition']), '(not on this host)')}"
        )
    return out


def _trim_line(trim: dict[str, Any]) -> str:
    held = format_duration(trim["retention"])
    if trim["floor"] is not None:
        return (
            f"trimmed below {trim['floor']} (the group's replay floor"
            f" {trim['replay_floor'] or '?'}, held {held})"
        )
    why = trim["blocked"] or trim["error"]
    return f"not trimmed yet: {why or f'the floor is held {held} after the group commits'}"


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)
