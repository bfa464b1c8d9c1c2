"""Where walrelay's own alerts go, the way operators run them.

* :class:`PagerDutyTarget`: PagerDuty Events API v2 (``POST /v2/enqueue``):
  ``trigger`` when an alert fires or escalates, ``resolve`` when it closes,
  one ``dedup_key`` per alert so PagerDuty keeps one incident
  (https://developer.pagerduty.com/docs/events-api-v2/trigger-events/).
* :class:`AlertmanagerTarget`: Alertmanager API v2 (``POST /api/v2/alerts``).
  Alertmanager expects clients to re-send firing alerts (it resolves an
  alert whose ``endsAt`` passes), so it is kept in *sync* with the open
  alerts rather than told about changes: every open alert is posted with
  ``endsAt`` a few minutes ahead, at least every minute, and an alert that
  closed (or changed severity, which is a different label set) is posted
  once with ``endsAt`` = now, which resolves it.
* Slack: :class:`~walrelay.monitor.alerts.WebhookTarget` (``{"text": ...}``).

Every alert carries the labels ``alertname`` (``walrelay_<rule>``),
``severity`` (warn | page), ``slot``, ``destination`` (when it is about one),
``object`` and ``instance``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from walrelay.monitor.alerts import Alert, Notification, Notifier, wants
from walrelay.monitor.thresholds import Severity

__all__ = ["AlertmanagerTarget", "PagerDutyTarget", "alert_labels"]

RESEND_SECONDS = 60.0
"""Open alerts are posted to Alertmanager again at least this often."""
ENDS_AHEAD_SECONDS = 300.0
"""``endsAt`` of a firing alert: Alertmanager resolves it if walrelay goes quiet."""


def alert_labels(alert: Alert, *, slot: str, instance: str) -> dict[str, str]:
    """The labels every delivery of ``alert`` carries."""
    labels = {
        "alertname": f"walrelay_{alert.rule}",
        "severity": alert.severity.value,
        "slot": slot,
        "object": alert.object,
        "instance": instance,
    }
    kind, _, name = alert.object.partition(" ")
    if kind == "slot" and name:
        labels["slot"] = name  # another slot of the cluster
    elif kind == "destination" and name:
        labels["destination"] = name
    return labels


def _display(url: str) -> str:
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or '?'}{port}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class PagerDutyTarget:
    """PagerDuty Events v2; the routing key is the secret."""

    routing_key: str = field(repr=False)
    slot: str
    min_severity: Severity = Severity.PAGE
    url: str = "https://events.pagerduty.com/v2/enqueue"
    timeout: float = 5.0

    @property
    def display(self) -> str:
        return _display(self.url)

    @property
    def headers(self) -> dict[str, str]:
        return {}

    def wants(self, notification: Notification) -> bool:
        return wants(notification, self.min_severity)

    def body(self, notification: Notification) -> bytes:
        alert = notification.alert
        labels = alert_labels(alert, slot=self.slot, instance=notification.instance)
        event: dict[str, Any] = {
            "routing_key": self.routing_key,
            "dedup_key": f"{notification.instance}/{alert.key}",
        }
        if notification.kind == "resolved":
            event["event_action"] = "resolve"
        else:
            event["event_action"] = "trigger"
            event["payload"] = {
                "summary": notification.text[:1024],
                "source": notification.instance,
                "severity": "critical" if alert.severity is Severity.PAGE else "warning",
                "component": labels["slot"],
                "group": labels.get("destination", labels["slot"]),
                "class": alert.rule,
                "custom_details": {**labels, "fix": alert.fix or ""},
            }
        return orjson.dumps(event)


class AlertmanagerTarget:
    """One Alertmanager, kept in sync with the open alerts (see the module doc)."""

    def __init__(
        self,
        url: str,
        *,
        slot: str,
        instance: str,
        min_severity: Severity = Severity.WARN,
        extra_labels: Mapping[str, str] | None = None,
        bearer_token: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self.slot = slot
        self.instance = instance
        self.min_severity = min_severity
        self.extra_labels = dict(extra_labels or {})
        self.timeout = timeout
        self.headers = {"authorization": f"Bearer {bearer_token}"} if bearer_token else {}
        # What Alertmanager was last told is firing: key -> (labels, annotations, since)
        self._firing: dict[str, tuple[dict[str, str], dict[str, str], float]] = {}
        self._last_post = 0.0

    def __repr__(self) -> str:
        return f"<AlertmanagerTarget {self.display}>"

    @property
    def display(self) -> str:
        return _display(self.url)

    def wants(self, notification: Notification) -> bool:
        return False  # never per notification: see sync()

    def body(self, notification: Notification) -> bytes:  # pragma: no cover - unused
        return b"[]"

    def payload(self, alerts: Iterable[Alert], now: float | None = None) -> bytes | None:
        """What to post now to bring Alertmanager in line with ``alerts``
        (None: nothing changed and it was told less than a minute ago)."""
        at = time.time() if now is None else now
        firing: dict[str, tuple[dict[str, str], dict[str, str], float]] = {}
        for alert in alerts:
            if alert.severity.rank < self.min_severity.rank:
                continue
            labels = {
                **self.extra_labels,
                **alert_labels(alert, slot=self.slot, instance=self.instance),
            }
            annotations = {"summary": alert.message, "fix": alert.fix or ""}
            key = "\0".join(f"{k}={v}" for k, v in sorted(labels.items()))
            firing[key] = (labels, annotations, alert.since)
        gone = [v for k, v in self._firing.items() if k not in firing]
        changed = bool(gone) or firing.keys() != self._firing.keys()
        if not changed and at - self._last_post < RESEND_SECONDS:
            return None
        self._firing = firing
        self._last_post = at
        body = [
            {
                "labels": labels,
                "annotations": annotations,
                "startsAt": _iso(since),
                "endsAt": _iso(at + ENDS_AHEAD_SECONDS),
            }
            for labels, annotations, since in firing.values()
        ]
        body += [
            {
                "labels": labels,
                "annotations": annotations,
                "startsAt": _iso(since),
                "endsAt": _iso(at),
            }
            for labels, annotations, since in gone
        ]
        if not body:
            return None
        return orjson.dumps(body)

    def sync(self, notifier: Notifier, alerts: Iterable[Alert], now: float | None = None) -> None:
        """Queue the post that brings Alertmanager in line, if any."""
        body = self.payload(alerts, now)
        if body is not None:
            notifier.send(self, body)
