"""A running sync's status: the document behind ``/api/status`` (and
``walrelay status --config sync.yaml``), ``/healthz`` and ``/metrics``, served
by the same :class:`walrelay.web.server.HttpServer` as ``walrelay run``
(``http:`` in the ``sync:`` mapping; the token as :mod:`walrelay.web.auth`
finds it, keyed ``sync-<name>``).

The document has the engine's shape where the dashboard reads it (each
direction is a row of ``destinations``, each node's slot a row of ``slots``)
and a ``sync`` section with what only a sync has: per direction the lag in
bytes and seconds, the counts applied and the conflicts by kind.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Any

import orjson

from walrelay.model import format_lsn
from walrelay.sync.config import SyncSettings
from walrelay.sync.view import SyncView, direction_lag
from walrelay.units import format_bytes, format_duration

__all__ = ["SyncStatus", "fetch_sync_status", "render_sync_status"]

_MAX_STATUS_BYTES = 16 * 1024 * 1024


class SyncStatus:
    """What the HTTP server shows for one sync (a ``StatusSource``)."""

    def __init__(self, runner: SyncView) -> None:
        self.runner = runner
        self.started_at = time.time()
        self._registry: Any = None

    def health(self) -> tuple[bool, dict[str, Any]]:
        r = self.runner
        ok = r.ready.is_set() and not r.stopping
        readers = {n: x.connected for n, x in r.readers.items()}
        directions = {d.name: d.stats.connected for d in r.directions.values()}
        state = "running" if ok else ("stopping" if r.stopping else "starting")
        return ok, {"state": state, "readers": readers, "directions": directions}

    def status(self) -> dict[str, Any]:
        r = self.runner
        s = r.settings
        directions = []
        dests = []
        for (src, _), d in r.directions.items():
            reader = r.readers.get(src)
            lag_bytes, lag_seconds = direction_lag(d, reader)
            st = d.stats
            directions.append(
                {
                    "direction": d.name,
                    "source": d.source,
                    "target": d.target,
                    "connected": st.connected,
                    "applied_transactions": st.transactions,
                    "applied_changes": st.changes,
                    "replays_skipped": st.replays_skipped,
                    "conflicts": dict(st.conflicts),
                    "conflicts_total": sum(st.conflicts.values()),
                    "lag_bytes": lag_bytes,
                    "lag_seconds": lag_seconds,
                    "queued": d.queue.qsize(),
                    "applied_lsn": format_lsn(d.applied_end) if d.applied_end else None,
                    "source_lsn": format_lsn(reader.wal_end) if reader and reader.wal_end else None,
                }
            )
            dests.append(
                {
                    "name": d.name,
                    "sink": "postgres (sync)",
                    "events_in": st.changes,
                    "events_out": st.changes,
                    "lag": lag_seconds,
                    "last_latency": None,
                    "in_flight": 0,
                    "buffered": d.queue.qsize(),
                    "parked": 0,
                    "dead": 0,
                    "failures": 0,
                    "last_error": None if st.connected else f"waiting for node {d.target}",
                }
            )
        nodes: list[dict[str, Any]] = [
            {
                "node": n,
                "slot": s.slot(n),
                "connected": x.connected,
                "wal_lsn": format_lsn(x.wal_end) if x.wal_end else None,
                "transactions_read": x.transactions,
                "echoes_dropped": x.echoes_dropped,
            }
            for n, x in r.readers.items()
        ]
        slots = [
            {
                "name": n["slot"],
                "database": f"node {n['node']}",
                "owned": True,
                "active": n["connected"],
            }
            for n in nodes
        ]
        state = "stopping" if r.stopping else ("streaming" if r.ready.is_set() else "starting")
        return {
            "source": "sync",
            "time": time.time(),
            "started_at": self.started_at,
            "state": state,
            "instance": f"sync {s.name}",
            "slot": ", ".join(n["slot"] for n in nodes),
            "publication": s.publication,
            "destinations": dests,
            "slots": slots,
            "alerts": [],
            "paused": {},
            "confirmed_lsn": "-",
            "server": {},
            "monitor": {"error": None, "last_check": None, "notes": []},
            "events_in": sum(x.transactions for x in r.readers.values()),
            "transactions_in": sum(x.transactions for x in r.readers.values()),
            "reconnects": None,
            "heartbeat_lag": None,
            "sync": {"name": s.name, "directions": directions, "nodes": nodes},
        }

    def metrics(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        from walrelay.sync.metrics import SyncCollector

        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(SyncCollector(self.runner))
        return generate_latest(self._registry), CONTENT_TYPE_LATEST


def render_sync_status(doc: dict[str, Any]) -> str:
    """The table ``walrelay status`` prints for a sync's file."""
    sync = doc["sync"]
    out = [f"sync {sync['name']} ({doc['state']})"]
    for n in sync["nodes"]:
        out.append(
            f"  node {n['node']:<10} {'connected' if n['connected'] else 'waiting':<10}"
            f" slot {n['slot']}  WAL at {n['wal_lsn'] or '-'}  {n['transactions_read']} read,"
            f" {n['echoes_dropped']} echoes dropped"
        )
    out.append(
        f"  {'direction':<16} {'state':<10} {'applied':>9} {'changes':>9}"
        f" {'lag':>10} {'lag time':>9}  conflicts"
    )
    for d in sync["directions"]:
        lag = "?" if d["lag_bytes"] is None else format_bytes(d["lag_bytes"])
        conflicts = ", ".join(f"{k} {v}" for k, v in sorted(d["conflicts"].items())) or "none"
        out.append(
            f"  {d['direction']:<16} {'connected' if d['connected'] else 'waiting':<10}"
            f" {d['applied_transactions']:>9} {d['applied_changes']:>9}"
            f" {lag:>10} {format_duration(d['lag_seconds']):>9}  {conflicts}"
        )
    return "\n".join(out)


def fetch_sync_status(
    settings: SyncSettings, timeout: float = 3.0
) -> tuple[dict[str, Any] | None, str]:
    """``(status, url)`` from the running ``walrelay sync``, or ``(None, why not)``."""
    from walrelay.errors import WalrelayError
    from walrelay.web.auth import resolve_token

    http = settings.http
    if not http.enabled or http.port == 0:
        why = "sync.http is not enabled" if not http.enabled else "sync.http.port is 0 (random)"
        return None, f"{why} in the config, so the sync cannot be asked"
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(http.listen, http.listen)
    host = f"[{host}]" if ":" in host else host
    url = f"{'https' if http.tls_cert_file else 'http'}://{host}:{http.port}"
    try:
        token, _ = resolve_token(http, settings.token_key, create=False)
    except WalrelayError as e:
        return None, str(e) if str(e).startswith("no API token") else f"no API token: {e}"
    request = urllib.request.Request(
        f"{url}/api/status", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        context = http.client_ssl_context() if url.startswith("https:") else None
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            doc = orjson.loads(resp.read(_MAX_STATUS_BYTES + 1))
    except urllib.error.HTTPError as e:
        return None, f"the sync at {url} answered HTTP {e.code}" + (
            " (the token was rejected)" if e.code == 401 else ""
        )
    except (urllib.error.URLError, OSError) as e:
        return None, f"no walrelay sync answers at {url} ({getattr(e, 'reason', e)})"
    except orjson.JSONDecodeError:
        return None, f"{url} did not answer with walrelay's status"
    if not isinstance(doc, dict) or (doc.get("sync") or {}).get("name") != settings.name:
        return None, f"the walrelay at {url} is not sync {settings.name}"
    return doc, url
