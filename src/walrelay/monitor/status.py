"""``walrelay status``: the running engine's status as a table (or JSON).

It asks the engine's HTTP API (``http.listen``/``http.port`` from the
config, the token as :mod:`walrelay.web.auth` finds it). When no engine
answers -- not running, the HTTP server disabled, another walrelay on that
port, the token unreadable -- it says why and falls back to reading the
slot state straight from PostgreSQL (read-only), judged by the same rules
the engine's monitor uses.

Exit codes: 0 the engine is streaming and nothing pages; 1 it is not
streaming, is not running, or something pages; 2 neither the engine nor
PostgreSQL could be asked.
"""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import click
import orjson

from walrelay.config import Config
from walrelay.dsn import scrub
from walrelay.errors import WalrelayError
from walrelay.units import format_bytes, format_duration

__all__ = ["fetch_engine_status", "read_database_status", "render_status", "status_command"]


def _engine_url(config: Config) -> str | None:
    http = config.http
    if not http.enabled or http.port == 0:
        return None
    host = http.listen
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if http.tls_cert_file else "http"
    return f"{scheme}://{host}:{http.port}"


# A status document is a few kB; an answer larger than this is not one.
_MAX_STATUS_BYTES = 16 * 1024 * 1024


def fetch_engine_status(config: Config, timeout: float = 3.0) -> tuple[dict[str, Any] | None, str]:
    """``(status, where)`` from the running engine, or ``(None, why not)``."""
    from walrelay.web.auth import resolve_token

    url = _engine_url(config)
    if url is None:
        why = "http is disabled" if not config.http.enabled else "http.port is 0 (random)"
        return None, f"{why} in the config, so the engine cannot be asked"
    try:
        token, _ = resolve_token(config.http, config.source.slot, create=False)
    except WalrelayError as e:
        return None, str(e) if str(e).startswith("no API token") else f"no API token: {e}"
    request = urllib.request.Request(
        f"{url}/api/status", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        context = config.http.client_ssl_context() if url.startswith("https:") else None
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            raw = resp.read(_MAX_STATUS_BYTES + 1)
        if len(raw) > _MAX_STATUS_BYTES:
            return None, f"{url} answered with more than a status document"
        doc = orjson.loads(raw)
    except urllib.error.HTTPError as e:
        if e.code == 401:
            return None, f"the engine at {url} rejected the token"
        return None, f"the engine at {url} answered HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return None, f"no walrelay answers at {url} ({reason})"
    except orjson.JSONDecodeError:
        return None, f"{url} did not answer with walrelay's status"
    if not isinstance(doc, dict) or doc.get("slot") != config.source.slot:
        return None, f"the walrelay at {url} streams another slot"
    return doc, url


async def read_database_status(config: Config) -> dict[str, Any]:
    """A status document built from PostgreSQL alone (no engine)."""
    from walrelay.monitor.alerts import AlertManager
    from walrelay.monitor.probe import Probe
    from walrelay.monitor.rules import RuleState, evaluate_snapshot
    from walrelay.monitor.service import (
        instance_name,
        server_dict,
        slot_rows,
        thresholds_from_config,
    )

    dsn = (
        config.monitor.dsn.get_secret_value()
        if config.monitor.dsn is not None
        else config.source.dsn_value
    )
    probe = Probe(dsn, application_name="walrelay status")
    try:
        snap = await probe.read()
    finally:
        await probe.close()
    state = RuleState()
    conditions = evaluate_snapshot(
        snap,
        own_slot=config.source.slot,
        thresholds=thresholds_from_config(config.monitor),
        state=state,
        now=time.monotonic(),
        watch_other_slots=config.monitor.watch_other_slots,
        own_detail="walrelay is not running",
    )
    alerts = AlertManager(instance_name(config))
    alerts.update(conditions)
    own = snap.slot(config.source.slot)
    return {
        "source": "database",
        "instance": alerts.instance,
        "time": snap.taken_at,
        "state": "not running" if own is None or not own.active else "slot in use",
        "slot": config.source.slot,
        "publication": config.source.publication,
        "confirmed_lsn": own.confirmed_flush_lsn if own is not None else None,
        "destinations": [],
        "slots": slot_rows(snap, config.source.slot, state),
        "server": server_dict(snap),
        "monitor": {"notes": snap.notes},
        "alerts": [a.to_dict() for a in alerts.open],
    }


def _b(n: Any) -> str:
    return "-" if n is None else format_bytes(int(n))


def _s(x: Any) -> str:
    return "-" if x is None else format_duration(float(x))


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def render_status(doc: dict[str, Any], where: str) -> str:
    out: list[str] = []
    if doc.get("source") == "engine":
        out.append(f"walrelay status: engine at {where}: {doc['state']}")
        out.append(
            f"slot {doc['slot']}, publication {doc['publication']}, confirmed LSN "
            f"{doc['confirmed_lsn']}, last commit {doc.get('last_commit_lsn') or '-'}"
        )
        out.append(
            f"received {doc.get('events_in', 0)} events in {doc.get('transactions_in', 0)} "
            f"transactions; reconnects {doc.get('reconnects', 0)}; heartbeat lag "
            f"{_s(doc.get('heartbeat_lag'))}"
        )
    else:
        out.append(f"walrelay status: {where}")
        out.append("showing the slot state read directly from PostgreSQL")
        out.append(f"slot {doc['slot']}: {doc['state']}, confirmed LSN {doc['confirmed_lsn']}")
    dests = doc.get("destinations") or []
    if dests:
        out.append("")
        out += _table(
            [
                "DESTINATION",
                "SINK",
                "IN",
                "DELIVERED",
                "LAG",
                "IN FLIGHT",
                "BUFFERED",
                "PARKED",
                "DEAD",
                "FAILURES",
                "LAST ERROR",
            ],
            [
                [
                    d["name"],
                    d["sink"],
                    str(d["events_in"]),
                    str(d["events_out"]),
                    _s(d["lag"]),
                    str(d["in_flight"]),
                    str(d["buffered"]),
                    str(d["parked"]),
                    str(d["dead"]),
                    str(d["failures"]),
                    (d.get("last_error") or "")[:60],
                ]
                for d in dests
            ],
        )
        out += [d["not_ready"] for d in dests if d.get("not_ready")]
    progress = doc.get("progress") or []
    if progress:
        out.append("")
        out += _table(
            ["LOAD", "TABLE", "DESTINATIONS", "STATE", "ROWS", "RATE", "ETA"],
            [
                [
                    p["kind"] + (f" #{p['backfill_id']}" if p.get("backfill_id") else ""),
                    p["table"],
                    ",".join(p["destinations"]),
                    p["state"],
                    f"{p['rows_done']}/~{max(p['rows_estimated'], p['rows_done'])}",
                    f"{p['rate']:.0f}/s",
                    "-" if p["state"] != "running" else _s(p.get("eta_seconds")),
                ]
                for p in progress
            ],
        )
    slots = doc.get("slots") or []
    out.append("")
    if slots:
        out += _table(
            [
                "SLOT",
                "DATABASE",
                "OURS",
                "ACTIVE",
                "WAL_STATUS",
                "RETAINED",
                "UNCONFIRMED",
                "SAFE_WAL_SIZE",
                "INACTIVE",
                "SPILLED",
                "WALSENDER",
            ],
            [
                [
                    s["name"],
                    s.get("database") or "-",
                    "yes" if s["owned"] else "",
                    "yes" if s["active"] else "no",
                    s.get("wal_status") or "-",
                    _b(s.get("retained_bytes")),
                    _b(s.get("pending_bytes")),
                    _b(s.get("safe_wal_size")),
                    "-" if s["active"] else _s(s.get("inactive_seconds")),
                    _b(s.get("spill_bytes")),
                    s.get("walsender_state") or "-",
                ]
                for s in slots
            ],
        )
    else:
        out.append("slots: not read yet")
    server = doc.get("server")
    if server:
        tx = server.get("oldest_transaction")
        disk = server.get("pg_wal_disk_used_percent")
        keep = server.get("max_slot_wal_keep_size")
        out.append("")
        out.append(
            f"server: pg_wal {_b(server.get('pg_wal_bytes'))}, disk "
            f"{'unknown' if disk is None else f'{disk:.0f}% used'}, max_slot_wal_keep_size "
            f"{'unlimited' if keep is None else _b(keep)}, oldest transaction "
            f"{'none' if tx is None else _s(tx['seconds']) + ' (pid ' + str(tx['pid']) + ')'}"
        )
    for note in (doc.get("monitor") or {}).get("notes") or []:
        out.append(f"note: {note}")
    alerts = doc.get("alerts") or []
    out.append("")
    out.append(f"alerts: {len(alerts) if alerts else 'none'}")
    for a in alerts:
        line = f"  {a['severity'].upper():<4}  {a['object']}: {a['message']}"
        if a.get("fix"):
            line += f"  | fix: {a['fix']}"
        out.append(line)
    return "\n".join(out)


def exit_code(doc: dict[str, Any]) -> int:
    if doc.get("source") != "engine" or doc.get("state") != "streaming":
        return 1
    return 1 if any(a["severity"] == "page" for a in doc.get("alerts") or []) else 0


@click.command("status")
@click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False), help="walrelay.yaml"
)
@click.option("--json", "as_json", is_flag=True, help="print the status document as JSON")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.001, max=3600),
    default=3.0,
    show_default=True,
    help="seconds to wait for the engine",
)
def status_command(config_path: str, as_json: bool, timeout: float) -> None:
    """Show the running engine's status (or, if it is not running, the slot's)."""
    from walrelay.config import load_config

    try:
        config = load_config(config_path)
    except WalrelayError as e:
        click.echo(f"walrelay: error: {e}", err=True)
        sys.exit(e.exit_code)
    doc, where = fetch_engine_status(config, timeout)
    if doc is None:
        why = where
        try:
            doc = asyncio.run(read_database_status(config))
        except Exception as e:
            msg = scrub(str(e), config.source.dsn_value).replace(config.source.dsn_value, "***")
            click.echo(
                f"walrelay status: {why}; and cannot read PostgreSQL ({config.source.masked_dsn}):"
                f" {type(e).__name__}: {msg}",
                err=True,
            )
            sys.exit(2)
        doc["engine"] = f"not reachable: {why}"
        where = f"{why}; walrelay does not seem to be running"
    if as_json:
        click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    else:
        click.echo(render_status(doc, where))
    sys.exit(exit_code(doc))
