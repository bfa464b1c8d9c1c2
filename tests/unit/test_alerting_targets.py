"""PagerDuty Events v2 bodies and Alertmanager API v2 sync (walrelay.monitor.alert_targets)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from walrelay.config import parse_config
from walrelay.errors import ConfigError
from walrelay.monitor.alert_targets import AlertmanagerTarget, PagerDutyTarget
from walrelay.monitor.alerts import AlertManager, Condition
from walrelay.monitor.thresholds import Severity

INSTANCE = "walrelay slot orders @ db:5432/app"


def lag(sev: Severity) -> Condition:
    return Condition("delivery_lag", "destination hook", sev, "hook is 90s behind", "see status")


def test_pagerduty_triggers_escalates_and_resolves_one_incident() -> None:
    am = AlertManager(INSTANCE)
    pd = PagerDutyTarget("R0UTINGKEY", "orders", Severity.WARN)
    bodies = [
        orjson.loads(pd.body(n))
        for step in ([lag(Severity.WARN)], [lag(Severity.PAGE)], [])
        for n in am.update(step, now=100.0)
        if pd.wants(n)
    ]
    assert [b["event_action"] for b in bodies] == ["trigger", "trigger", "resolve"]
    assert len({b["dedup_key"] for b in bodies}) == 1
    assert [b["payload"]["severity"] for b in bodies[:2]] == ["warning", "critical"]
    details = bodies[1]["payload"]["custom_details"]
    assert details["slot"] == "orders" and details["destination"] == "hook"
    assert all(b["routing_key"] == "R0UTINGKEY" for b in bodies)
    assert "R0UTINGKEY" not in repr(pd)
    # the default: pages only
    only_pages = PagerDutyTarget("k", "orders")
    assert [
        n.kind for n in AlertManager(INSTANCE).update([lag(Severity.WARN)]) if only_pages.wants(n)
    ] == []


def test_alertmanager_sync_resends_resolves_and_replaces_on_escalation() -> None:
    am = AlertManager(INSTANCE)
    target = AlertmanagerTarget(
        "http://am:9093/", slot="orders", instance=INSTANCE, extra_labels={"team": "db"}
    )
    assert target.url == "http://am:9093/api/v2/alerts"
    am.update([lag(Severity.WARN)], now=1000.0)
    [firing] = orjson.loads(target.payload(am.open, now=1000.0) or b"[]")
    assert firing["labels"] == {
        "alertname": "walrelay_delivery_lag",
        "severity": "warn",
        "slot": "orders",
        "destination": "hook",
        "object": "destination hook",
        "instance": INSTANCE,
        "team": "db",
    }
    assert firing["endsAt"] > firing["startsAt"]
    assert target.payload(am.open, now=1010.0) is None  # unchanged, told 10 s ago
    assert target.payload(am.open, now=1061.0) is not None  # re-sent every minute
    am.update([lag(Severity.PAGE)], now=1062.0)
    posted = orjson.loads(target.payload(am.open, now=1062.0) or b"[]")
    by_sev = {a["labels"]["severity"]: a for a in posted}
    assert by_sev["page"]["endsAt"] == "1970-01-01T00:22:42Z"  # firing: now + 5 min
    assert by_sev["warn"]["endsAt"] == "1970-01-01T00:17:42Z"  # the warn label set resolved
    am.update([], now=1070.0)
    [resolved] = orjson.loads(target.payload(am.open, now=1070.0) or b"[]")
    assert resolved["labels"]["severity"] == "page"
    assert resolved["endsAt"] == "1970-01-01T00:17:50Z"
    assert target.payload(am.open, now=1071.0) is None


def test_alert_secrets_from_env_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "pd.key"
    key.write_text("FROMFILE\n")
    monkeypatch.setenv("WALRELAY_TEST_SLACK", "https://hooks.slack.example/T/B/x")
    cfg = parse_config(
        {
            "source": {"dsn": "host=x", "tables": ["public.t"]},
            "destinations": [{"name": "f", "sink": {"type": "file", "path": "/dev/null"}}],
            "alerts": {
                "slack": [{"url_env": "WALRELAY_TEST_SLACK"}],
                "pagerduty": [{"routing_key_file": str(key)}],
                "alertmanager": [{"url": "http://am:9093", "labels": {"team": "db"}}],
            },
        }
    )
    assert cfg.alerts.pagerduty[0].routing_key_value() == "FROMFILE"
    assert cfg.alerts.slack[0].url_value().endswith("/x")
    with pytest.raises(ConfigError, match="exactly one of routing_key"):
        parse_config(
            {
                "source": {"dsn": "host=x", "tables": ["public.t"]},
                "destinations": [{"name": "f", "sink": {"type": "file", "path": "/dev/null"}}],
                "alerts": {"pagerduty": [{}]},
            }
        )
    missing = parse_config(
        {
            "source": {"dsn": "host=x", "tables": ["public.t"]},
            "destinations": [{"name": "f", "sink": {"type": "file", "path": "/dev/null"}}],
            "alerts": {"pagerduty": [{"routing_key_file": str(tmp_path / "nope")}]},
        }
    )
    with pytest.raises(ConfigError, match="cannot read"):
        missing.alerts.pagerduty[0].routing_key_value()
