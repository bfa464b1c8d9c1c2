"""The monitor's rules on hand-made snapshots, and their configuration."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from walrelay.config import parse_config
from walrelay.errors import ConfigError
from walrelay.monitor.doctor import DiskFacts
from walrelay.monitor.probe import ServerState, SlotState, Snapshot, TransactionState
from walrelay.monitor.rules import RuleState, evaluate_engine, evaluate_snapshot
from walrelay.monitor.service import thresholds_from_config
from walrelay.monitor.thresholds import GiB, MiB, Severity, Thresholds

T = Thresholds(
    retained_wal_warn_bytes=1 * MiB,
    retained_wal_page_bytes=5 * MiB,
    slot_inactive_warn_seconds=1.0,
    slot_inactive_page_seconds=2.0,
    oldest_transaction_warn_seconds=10.0,
    delivery_lag_warn_seconds=1.0,
    delivery_lag_page_seconds=5.0,
)


def slot(name: str = "walrelay", **kw: Any) -> SlotState:
    base: dict[str, Any] = {
        "name": name,
        "slot_type": "logical",
        "plugin": "pgoutput",
        "database": "app",
        "active": True,
        "active_pid": 42,
        "temporary": False,
        "wal_status": "reserved",
        "safe_wal_size": None,
        "restart_lsn": "0/1000",
        "confirmed_flush_lsn": "0/2000",
        "retained_bytes": 1000,
        "pending_bytes": 10,
        "server_inactive_seconds": None,
        "walsender_state": "streaming",
        "sent_lsn": "0/2000",
        "sent_lag_bytes": 0,
        "write_lag": None,
        "flush_lag": None,
        "replay_lag": None,
        "spill_txns": 0,
        "spill_count": 0,
        "spill_bytes": 0,
        "stream_txns": 0,
        "total_txns": 0,
        "total_bytes": 0,
    }
    base.update(kw)
    return SlotState(**base)


def snap(*slots: SlotState, disk: DiskFacts | None = None, **server: Any) -> Snapshot:
    srv: dict[str, Any] = {
        "server_version_num": 150000,
        "current_lsn": "0/3000",
        "max_slot_wal_keep_size": None,
        "pg_wal_bytes": 16 * MiB,
        "disk": disk,
        "oldest_transaction": None,
    }
    srv.update(server)
    return Snapshot(0.0, ServerState(**srv), list(slots))


def run(s: Snapshot, state: RuleState, now: float, **kw: Any) -> dict[str, Severity]:
    conds = evaluate_snapshot(s, own_slot="walrelay", thresholds=T, state=state, now=now, **kw)
    return {c.key: c.severity for c in conds}


def test_inactive_measured_from_first_sight_warn_then_page_then_gone() -> None:
    state = RuleState()
    inactive = slot(active=False, active_pid=None, walsender_state=None)
    assert run(snap(inactive), state, 100.0) == {}
    assert run(snap(inactive), state, 100.9) == {}
    assert run(snap(inactive), state, 101.0) == {"slot_inactive:slot walrelay": Severity.WARN}
    assert run(snap(inactive), state, 102.5) == {"slot_inactive:slot walrelay": Severity.PAGE}
    assert run(snap(slot()), state, 103.0) == {}
    # Inactive again: counted afresh.
    assert run(snap(inactive), state, 200.0) == {}
    assert run(snap(inactive), state, 201.5) == {"slot_inactive:slot walrelay": Severity.WARN}


def test_inactive_since_from_the_server_wins_when_present() -> None:
    state = RuleState()
    s = slot("other", active=False, server_inactive_seconds=3.0)
    out = evaluate_snapshot(snap(slot(), s), own_slot="walrelay", thresholds=T, state=state, now=0)
    (c,) = out
    assert c.severity is Severity.PAGE and "looks orphaned" in c.message
    assert "pg_drop_replication_slot('other')" in (c.fix or "")


def test_own_slot_message_says_why_walrelay_is_not_streaming() -> None:
    state = RuleState()
    s = slot(active=False)
    run(snap(s), state, 0.0)
    (c,) = evaluate_snapshot(
        snap(s), own_slot="walrelay", thresholds=T, state=state, now=1.5, own_detail="reconnecting"
    )
    assert "walrelay is not streaming: reconnecting" in c.message


def test_other_slots_only_when_watched_and_temporary_slots_never() -> None:
    state = RuleState()
    other = slot("other", active=False, retained_bytes=10 * MiB)
    temp = slot("tmp", active=False, temporary=True, retained_bytes=10 * MiB)
    run(snap(slot(), other, temp), state, 0.0)
    got = run(snap(slot(), other, temp), state, 5.0)
    assert got == {
        "slot_inactive:slot other": Severity.PAGE,
        "slot_retained_wal:slot other": Severity.PAGE,
    }
    assert run(snap(slot(), other), RuleState(), 5.0, watch_other_slots=False) == {}


def test_retained_wal_warn_page_and_keep_size() -> None:
    state = RuleState()
    assert run(snap(slot(retained_bytes=MiB - 1)), state, 0) == {}
    assert run(snap(slot(retained_bytes=MiB)), state, 0) == {
        "slot_retained_wal:slot walrelay": Severity.WARN
    }
    assert run(snap(slot(retained_bytes=5 * MiB)), state, 0) == {
        "slot_retained_wal:slot walrelay": Severity.PAGE
    }
    # 50% of max_slot_wal_keep_size = 2 MiB pages earlier than 5 MiB.
    got = run(snap(slot(retained_bytes=2 * MiB), max_slot_wal_keep_size=4 * MiB), state, 0)
    assert got == {"slot_retained_wal:slot walrelay": Severity.PAGE}


def test_lost_and_unreserved_page_and_missing_own_slot_pages() -> None:
    state = RuleState()
    got = run(snap(slot(wal_status="unreserved"), slot("x", wal_status="lost")), state, 0)
    assert got == {
        "slot_wal_status:slot walrelay": Severity.PAGE,
        "slot_wal_status:slot x": Severity.PAGE,
    }
    assert run(snap(slot("x")), RuleState(), 0) == {"slot_missing:slot walrelay": Severity.PAGE}


def test_spill_warns_when_sustained_and_pages_near_free_disk() -> None:
    state = RuleState()
    disk = DiskFacts("/pg_wal", total=100 * MiB, used=50 * MiB, free=50 * MiB)

    def check(spilled: int) -> dict[str, Severity]:
        return run(snap(slot(spill_bytes=spilled, spill_txns=1), disk=disk), state, 0)

    assert check(0) == {}
    assert check(MiB) == {}
    assert check(2 * MiB) == {}
    assert check(3 * MiB) == {"slot_spill:slot walrelay": Severity.WARN}
    assert check(3 * MiB) == {}  # no growth: not sustained any more
    check(4 * MiB)
    check(15 * MiB)
    assert check(30 * MiB) == {"slot_spill:slot walrelay": Severity.PAGE}  # 27 MiB >= 50% of 50


def test_disk_and_oldest_transaction() -> None:
    disk = DiskFacts("/pg_wal", total=100, used=85, free=15)
    tx = TransactionState(7, "app", "db", "psql", "idle in transaction", 11.0)
    got = run(snap(slot(), disk=disk, oldest_transaction=tx), RuleState(), 0)
    assert got == {
        "pg_wal_disk:pg_wal": Severity.PAGE,
        "oldest_transaction:transactions": Severity.WARN,
    }


def test_delivery_lag() -> None:
    conds = evaluate_engine({"a": 0.5, "b": 2.0, "c": 9.0}, thresholds=T)
    assert {c.object: c.severity for c in conds} == {
        "destination b": Severity.WARN,
        "destination c": Severity.PAGE,
    }


def test_replication_paused_pages() -> None:
    (c,) = evaluate_engine({}, thresholds=T, replication_paused=True, slot="walrelay")
    assert c.rule == "replication_paused" and c.severity is Severity.PAGE
    assert c.object == "slot walrelay"
    assert evaluate_engine({}, thresholds=T) == []


def base_config(**extra: Any) -> dict[str, Any]:
    return {
        "source": {"dsn": "host=x", "tables": ["t"]},
        "destinations": [{"name": "f", "sink": {"type": "stdout"}}],
        **extra,
    }


def test_config_defaults_and_threshold_overrides() -> None:
    cfg = parse_config(base_config())
    assert cfg.monitor.enabled and cfg.monitor.interval == 10.0
    assert cfg.http.listen == "127.0.0.1" and cfg.http.port == 8080
    assert cfg.alerts.webhooks == []
    assert thresholds_from_config(cfg.monitor) == Thresholds()
    cfg = parse_config(
        base_config(
            monitor={
                "interval": "500ms",
                "thresholds": {
                    "retained_wal_warn_bytes": "1MiB",
                    "slot_inactive_warn_seconds": "1s",
                    "slot_inactive_page_seconds": "2m",
                },
            },
            alerts={"webhooks": [{"url_env": "HOOK", "min_severity": "page"}]},
            http={"port": 0, "token_env": "TOKEN"},
        )
    )
    t = thresholds_from_config(cfg.monitor)
    assert cfg.monitor.interval == 0.5
    assert t == replace(
        Thresholds(),
        retained_wal_warn_bytes=MiB,
        slot_inactive_warn_seconds=1.0,
        slot_inactive_page_seconds=120.0,
    )
    assert t.retained_wal_page_bytes == 5 * GiB


def test_config_rejects_bad_monitor_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="unknown setting"):
        parse_config(base_config(monitor={"thresholds": {"retained_wal_warn": 1}}))
    with pytest.raises(ConfigError, match="exactly one of url and url_env"):
        parse_config(base_config(alerts={"webhooks": [{"min_severity": "page"}]}))
    cfg = parse_config(base_config(alerts={"webhooks": [{"url_env": "WALRELAY_TEST_HOOK"}]}))
    monkeypatch.delenv("WALRELAY_TEST_HOOK", raising=False)
    with pytest.raises(ConfigError, match="WALRELAY_TEST_HOOK is not set"):
        cfg.alerts.webhooks[0].url_value()
    cfg = parse_config(base_config(alerts={"webhooks": [{"url": "https://h/s3cret"}]}))
    assert "s3cret" not in repr(cfg)


def test_fix_texts_quote_an_awkward_slot_name() -> None:
    s = slot("it's", active=False, server_inactive_seconds=3.0, retained_bytes=6 * MiB)
    out = evaluate_snapshot(
        snap(slot(), s), own_slot="walrelay", thresholds=T, state=RuleState(), now=0
    )
    fixes = {c.key: c.fix or "" for c in out}
    assert "SELECT pg_drop_replication_slot('it''s');" in fixes["slot_inactive:slot it's"]
    assert "SELECT pg_drop_replication_slot('it''s');" in fixes["slot_retained_wal:slot it's"]
    message = next(c.message for c in out if c.key == "slot_retained_wal:slot it's")
    assert "retains 6.0 MB of WAL (warn at 1.0 MB, page at 5.0 MB)" in message
