"""``walrelay parking list|show|retry|discard``: the parked events.

They live in ``<state schema>.parked_events`` of the state database
(:mod:`walrelay.state.parking`). The commands work whether walrelay is running
or not; ``retry`` and ``discard`` notify a running walrelay, which applies the
change at once.

``walrelay failed ...`` (the old name) is a hidden alias: the same commands,
after one deprecation line on stderr.

Filters (all commands): ``--destination D``, ``--key K`` (as ``list`` shows
it, e.g. ``public.orders:7``; a bare value such as ``7`` matches that value
in any table), ``--id I`` (the event id ``<commit_lsn>/<seq>``), ``--dead``
(dead events only). ``retry`` and ``discard`` need a filter or ``--all``.
"""

from __future__ import annotations

import base64
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

import click
import orjson
import psycopg
from psycopg.rows import dict_row

from walrelay import exact_json
from walrelay.config import Config, load_config
from walrelay.dsn import connect_error, one_line
from walrelay.errors import WalrelayError
from walrelay.model import parse_event_id
from walrelay.state import parking as T
from walrelay.state.parking import OperatorConn, ParkedEventsTable, RowId
from walrelay.units import format_duration

__all__ = ["failed_alias", "parking_command"]

log = logging.getLogger("walrelay.parking")

_Row = dict[str, Any]


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"walrelay: error: {message}", err=True)
    sys.exit(code)


def _load(config_path: str) -> Config:
    from walrelay.worker.config import is_worker_file, load_worker_config

    try:
        if is_worker_file(config_path):  # a worker's parked events: the same table
            return load_worker_config(config_path).engine_config()
        return load_config(config_path)
    except WalrelayError as e:
        _fail(str(e), e.exit_code)


def _connect(config: Config) -> OperatorConn:
    try:
        return psycopg.connect(
            config.state_dsn,
            autocommit=True,
            application_name="walrelay-cli",
            connect_timeout=10,
            row_factory=dict_row,
        )
    except psycopg.Error as e:
        error = connect_error(
            "the state database", config.state_dsn, e, fix="check state.dsn (default: source.dsn)"
        )
        _fail(str(error), error.exit_code)


def _has_table(conn: OperatorConn, table: ParkedEventsTable) -> bool:
    exists, old_exists = table.exists(conn)
    if not exists and old_exists:
        schema = table.schema
        _fail(
            f"{schema}.failed_events is the parked-events table of an older walrelay;"
            f" start this walrelay once (`walrelay run`), which renames it {schema}.{T.TABLE}"
        )
    return exists


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def _state(row: _Row) -> str:
    if row["skipped"]:
        return "skipped"
    if row["dead"]:
        return "dead"
    return "parked"


def _select(
    conn: OperatorConn,
    table: ParkedEventsTable,
    *,
    destination: str | None,
    key: str | None,
    event_id: str | None,
    dead_only: bool,
    payload: bool = False,
    limit: int | None = None,
) -> list[_Row]:
    ident: tuple[int, int] | None = None
    if event_id is not None:
        try:
            ident = parse_event_id(event_id)
        except ValueError:
            _fail(f"--id {event_id!r} is not an event id (like 00000000016B3748/0)", 2)
    out: list[_Row] = []
    listed = table.listed(
        conn, destination=destination, ident=ident, dead_only=dead_only, payload=payload
    )
    for row in listed:
        row["keys"] = [T.decode_key(k) for k in row["keys"]]
        if key is not None and not T.key_matches(key, row["keys"]):
            continue
        out.append(row)
        if limit is not None and len(out) >= limit:
            break
    return out


def _summary(
    conn: OperatorConn, table: ParkedEventsTable, config: Config, destination: str | None
) -> list[_Row]:
    by_name = {r["destination"]: r for r in table.summary(conn)}
    names = [d.name for d in config.destinations]
    names += [n for n in by_name if n not in names]
    out = []
    for name in names:
        if destination is not None and name != destination:
            continue
        r = by_name.get(name)
        age = r["age"] if r is not None else None
        out.append(
            {
                "destination": name,
                "configured": name in {d.name for d in config.destinations},
                "parked": int(r["parked"]) if r else 0,
                "dead": int(r["dead"]) if r else 0,
                "skipped": int(r["skipped"]) if r else 0,
                "parked_bytes": int(r["bytes"]) if r else 0,
                "oldest_parked_age_seconds": round(float(age), 3) if age is not None else None,
            }
        )
    return out


def _event_json(row: _Row) -> dict[str, Any]:
    out: dict[str, Any] = {
        "destination": row["destination"],
        "id": row["event_id"],
        "keys": [T.display_key(k) for k in row["keys"]],
        "op": row["op"],
        "table": row["table_name"] or None,
        "xid": row["xid"],
        "committed_at": _iso(row["committed_at"]),
        "size": row["size"],
        "state": _state(row),
        "attempts": row["attempts"],
        "permanent": row["permanent"],
        "last_error": row["last_error"],
        "first_failed_at": _iso(row["first_failed_at"]),
        "last_attempt_at": _iso(row["last_attempt_at"]),
        "next_attempt_at": None if row["dead"] else _iso(row["next_attempt_at"]),
    }
    if "payload" in row:
        raw = bytes(row["payload"])
        try:
            out["payload"] = exact_json.loads(raw)
        except orjson.JSONDecodeError:
            out["payload_base64"] = base64.b64encode(raw).decode()
    return out


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(seconds)


def _echo_json(value: Any) -> None:
    click.echo(exact_json.dumps(value, option=orjson.OPT_INDENT_2).decode())


def _change_rows(
    conn: OperatorConn,
    table: ParkedEventsTable,
    rows: list[dict[str, Any]],
    change: Callable[[OperatorConn, list[RowId]], None],
) -> None:
    """Apply ``change`` (the table's ``revive`` or ``discard``) to every row, in
    one transaction, and tell a running engine to re-read the table."""
    if not rows:
        return
    with conn.transaction():
        change(conn, [(r["destination"], r["commit_lsn"], r["seq"]) for r in rows])
        table.notify(conn)


# ---------------------------------------------------------------------------- commands

_config_option = click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False), help="walrelay.yaml"
)
_destination_option = click.option("--destination", default=None, help="only this destination")
_key_option = click.option(
    "--key", default=None, help="only events with this key (e.g. public.orders:7, or 7)"
)
_id_option = click.option("--id", "event_id", default=None, help="only this event id")
_dead_option = click.option("--dead", "dead_only", is_flag=True, help="only dead events")
_json_option = click.option("--json", "as_json", is_flag=True, help="print JSON")


class _OneLineDatabaseErrors(click.Group):
    """A database error while a command works (the table locked, a permission
    missing, the server gone) is one line and exit 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except psycopg.Error as e:
            reason = one_line(e.diag.message_primary or str(e))
            _fail(f"the state database answered {type(e).__name__}: {reason}")


@click.group("parking", cls=_OneLineDatabaseErrors)
def parking_command() -> None:
    """Parked events: deliveries that failed and wait in the state database."""
    _setup_logging()


@click.group("failed", hidden=True, cls=_OneLineDatabaseErrors)
def failed_alias() -> None:
    """Deprecated: the old name of `walrelay parking`."""
    click.echo(
        "walrelay: `walrelay failed` is deprecated; use `walrelay parking` (same commands)",
        err=True,
    )
    _setup_logging()


@parking_command.command("list")
@_config_option
@_destination_option
@_key_option
@_id_option
@_dead_option
@_json_option
@click.option("--limit", default=100, show_default=True, help="at most this many events")
def list_command(
    config_path: str,
    destination: str | None,
    key: str | None,
    event_id: str | None,
    dead_only: bool,
    as_json: bool,
    limit: int,
) -> None:
    """Per destination: parked and dead counts, oldest parked age; then the events."""
    config = _load(config_path)
    table = ParkedEventsTable(config.state.schema)
    with _connect(config) as conn:
        if _has_table(conn, table):
            summary = _summary(conn, table, config, destination)
            rows = _select(
                conn,
                table,
                destination=destination,
                key=key,
                event_id=event_id,
                dead_only=dead_only,
                limit=limit,
            )
        else:
            summary = _summary_empty(config, destination)
            rows = []
    if as_json:
        _echo_json({"destinations": summary, "events": [_event_json(r) for r in rows]})
        return
    click.echo(f"{'DESTINATION':<20} {'PARKED':>8} {'DEAD':>6} {'OLDEST PARKED':>14}")
    for s in summary:
        click.echo(
            f"{s['destination']:<20} {s['parked']:>8} {s['dead']:>6}"
            f" {_age(s['oldest_parked_age_seconds']):>14}"
            + ("" if s["configured"] else "  (not in the config)")
        )
    if not rows:
        if any(s["parked"] or s["dead"] for s in summary):
            click.echo("\nno parked events match")
        return
    click.echo("")
    click.echo(
        f"{'DESTINATION':<14} {'ID':<20} {'KEY':<24} {'STATE':<8} {'TRIES':>5} "
        f"{'NEXT ATTEMPT':<20} LAST ERROR"
    )
    for r in rows:
        keys = ",".join(T.display_key(k) for k in r["keys"]) or "(all: truncate)"
        nxt = "-" if r["dead"] else r["next_attempt_at"].astimezone(UTC).strftime("%F %T")
        error = (r["last_error"] or "(waits behind an earlier event of its key)").splitlines()[0]
        click.echo(
            f"{r['destination']:<14} {r['event_id']:<20} {keys:<24} {_state(r):<8}"
            f" {r['attempts']:>5} {nxt:<20} {error[:100]}"
        )
    if len(rows) >= limit:
        click.echo(f"(first {limit}; use --limit)")


def _summary_empty(config: Config, destination: str | None) -> list[_Row]:
    return [
        {
            "destination": d.name,
            "configured": True,
            "parked": 0,
            "dead": 0,
            "skipped": 0,
            "parked_bytes": 0,
            "oldest_parked_age_seconds": None,
        }
        for d in config.destinations
        if destination is None or d.name == destination
    ]


@parking_command.command("show")
@_config_option
@_destination_option
@click.option("--id", "event_id", required=True, help="the event id")
@_json_option
def show_command(config_path: str, destination: str | None, event_id: str, as_json: bool) -> None:
    """One event in full, with its payload."""
    config = _load(config_path)
    table = ParkedEventsTable(config.state.schema)
    with _connect(config) as conn:
        rows = (
            _select(
                conn,
                table,
                destination=destination,
                key=None,
                event_id=event_id,
                dead_only=False,
                payload=True,
            )
            if _has_table(conn, table)
            else []
        )
    if not rows:
        _fail(f"no parked event {event_id}" + (f" for {destination}" if destination else ""))
    events = [_event_json(r) for r in rows]
    if as_json:
        _echo_json(events[0] if len(events) == 1 else events)
        return
    for ev in events:
        payload = ev.pop("payload", None)
        for name, value in ev.items():
            click.echo(f"{name + ':':<17} {value}")
        if payload is not None:
            click.echo("payload:")
            click.echo(exact_json.dumps(payload, option=orjson.OPT_INDENT_2).decode())
        click.echo("")


def _targets(
    conn: OperatorConn,
    table: ParkedEventsTable,
    destination: str | None,
    key: str | None,
    event_id: str | None,
    dead_only: bool,
    everything: bool,
) -> list[_Row]:
    if not everything and destination is None and key is None and event_id is None:
        _fail("name the events (--destination, --key, --id, --dead) or pass --all", 2)
    if not _has_table(conn, table):
        return []
    return _select(
        conn, table, destination=destination, key=key, event_id=event_id, dead_only=dead_only
    )


def _selection_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options that name the events ``retry`` and ``discard`` act on."""
    for option in reversed(
        (
            _config_option,
            _destination_option,
            _key_option,
            _id_option,
            _dead_option,
            click.option("--all", "everything", is_flag=True, help="every parked event"),
            _json_option,
        )
    ):
        command = option(command)
    return command


def _change_selected(
    config_path: str,
    destination: str | None,
    key: str | None,
    event_id: str | None,
    dead_only: bool,
    everything: bool,
    *,
    revive: bool,
) -> list[_Row]:
    """Revive (make due now) or discard the selected events; returns them."""
    config = _load(config_path)
    table = ParkedEventsTable(config.state.schema)
    with _connect(config) as conn:
        rows = _targets(conn, table, destination, key, event_id, dead_only, everything)
        _change_rows(conn, table, rows, table.revive if revive else table.discard)
    return rows


@parking_command.command("retry")
@_selection_options
def retry_command(
    config_path: str,
    destination: str | None,
    key: str | None,
    event_id: str | None,
    dead_only: bool,
    everything: bool,
    as_json: bool,
) -> None:
    """Make events due now (dead ones come alive again for another attempt).

    Only the oldest parked event of a key is ever attempted: the others of
    that key follow it in order.
    """
    rows = _change_selected(
        config_path, destination, key, event_id, dead_only, everything, revive=True
    )
    skipped = [r for r in rows if r["skipped"]]
    for r in skipped:
        log.warning(
            "event %s (destination %s) was skipped; later events of its key were delivered"
            " before it, so it now arrives after them",
            r["event_id"],
            r["destination"],
        )
    if as_json:
        _echo_json({"retried": [r["event_id"] for r in rows]})
    else:
        click.echo(f"{len(rows)} event(s) due now")


@parking_command.command("discard")
@_selection_options
def discard_command(
    config_path: str,
    destination: str | None,
    key: str | None,
    event_id: str | None,
    dead_only: bool,
    everything: bool,
    as_json: bool,
) -> None:
    """Delete events for good (each is logged); a key whose backlog is then
    empty flows again."""
    rows = _change_selected(
        config_path, destination, key, event_id, dead_only, everything, revive=False
    )
    for r in rows:
        log.warning(
            "discarded event %s of destination %s (key %s, %s, %d attempt(s), last error: %s)",
            r["event_id"],
            r["destination"],
            ",".join(T.display_key(k) for k in r["keys"]) or "-",
            _state(r),
            r["attempts"],
            r["last_error"],
        )
    if as_json:
        _echo_json({"discarded": [r["event_id"] for r in rows]})
    else:
        click.echo(f"discarded {len(rows)} event(s)")


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.WARNING,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        )


for _command in parking_command.commands.values():
    failed_alias.add_command(_command)
