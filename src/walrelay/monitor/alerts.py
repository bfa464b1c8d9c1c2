"""Alerts: conditions in, notifications out, once per firing.

The monitor evaluates its rules into :class:`Condition` s at every check;
:class:`AlertManager` turns the stream of conditions into firings:

* a condition at ``warn`` or ``page`` that was not firing -> one ``firing``
  notification;
* a firing alert whose severity rises above what was already notified
  (warn -> page) -> one ``escalated`` notification; falling back from page
  to warn notifies nothing (the alert stays open, at warn);
* a firing alert whose condition is gone (or ``ok``) -> one ``resolved``
  notification, and the alert closes.

A rule that could not be evaluated this time (say the monitor lost its
connection) is left out of ``rules=`` so its open alerts neither resolve nor
change.

:class:`Notifier` sends notifications to the log and to every
:class:`NotificationTarget` (Slack-compatible webhooks, ``POST {"text": ...}``;
PagerDuty Events v2 in :mod:`walrelay.monitor.alert_targets`), from a
background task so a slow or dead receiver never holds up a check.
Alertmanager is not notified per change but kept in sync with the open
alerts (:class:`walrelay.monitor.alert_targets.AlertmanagerTarget`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import urlsplit

import orjson

from walrelay.monitor.thresholds import Severity
from walrelay.units import format_duration

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "Alert",
    "AlertManager",
    "Condition",
    "Notification",
    "NotificationTarget",
    "Notifier",
    "WebhookTarget",
    "format_notification",
]

log = logging.getLogger("walrelay.alerts")

NotificationKind = Literal["firing", "escalated", "resolved"]


@dataclass(frozen=True)
class Condition:
    """What one rule says about one object right now."""

    rule: str  # e.g. "slot_inactive"
    object: str  # e.g. "slot walrelay"
    severity: Severity  # ok (or info) means "not firing"
    message: str
    fix: str | None = None

    @property
    def key(self) -> str:
        return f"{self.rule}:{self.object}"

    @property
    def firing(self) -> bool:
        return self.severity.rank >= Severity.WARN.rank


@dataclass
class Alert:
    """An open (firing) alert."""

    rule: str
    object: str
    severity: Severity
    message: str
    fix: str | None
    since: float  # wall clock, seconds since the epoch
    notified: Severity  # the highest severity notified so far
    resolved_at: float | None = None

    @property
    def key(self) -> str:
        return f"{self.rule}:{self.object}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "rule": self.rule,
            "object": self.object,
            "severity": self.severity.value,
            "message": self.message,
            "fix": self.fix,
            "since": self.since,
        }


@dataclass(frozen=True)
class Notification:
    kind: NotificationKind
    alert: Alert  # a snapshot, not the live alert
    instance: str
    text: str = ""


def format_notification(kind: NotificationKind, alert: Alert, instance: str, now: float) -> str:
    """One line of plain text (Slack renders it as is)."""
    if kind == "resolved":
        return (
            f"[RESOLVED] {instance}: {alert.rule} on {alert.object} is back to normal after "
            f"{format_duration(max(0.0, now - alert.since))} (was {alert.notified.value.upper()}): "
            f"{alert.message}"
        )
    text = f"[{alert.severity.value.upper()}] {instance}: {alert.object}: {alert.message}"
    if alert.fix:
        text += f" | fix: {alert.fix}"
    return text


class AlertManager:
    """Open alerts, keyed by (rule, object). Pure bookkeeping: no I/O."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self._alerts: dict[str, Alert] = {}
        self.fired_total = 0
        self.resolved_total = 0

    @property
    def open(self) -> list[Alert]:
        """Open alerts, worst first, then oldest first."""
        return sorted(self._alerts.values(), key=lambda a: (-a.severity.rank, a.since, a.key))

    def get(self, rule: str, obj: str) -> Alert | None:
        return self._alerts.get(f"{rule}:{obj}")

    def update(
        self,
        conditions: Iterable[Condition],
        *,
        rules: Collection[str] | None = None,
        now: float | None = None,
    ) -> list[Notification]:
        """Apply one check's conditions; return what to notify.

        ``rules``: the rules that were evaluated in this check (default: all).
        Open alerts of other rules are kept as they are.
        """
        at = time.time() if now is None else now
        out: list[Notification] = []
        seen: set[str] = set()
        for cond in conditions:
            if not cond.firing:
                continue
            key = cond.key
            if key in seen:  # two conditions for one key: keep the first (worst first)
                continue
            seen.add(key)
            alert = self._alerts.get(key)
            if alert is None:
                alert = Alert(
                    cond.rule, cond.object, cond.severity, cond.message, cond.fix, at, cond.severity
                )
                self._alerts[key] = alert
                self.fired_total += 1
                out.append(self._notification("firing", alert, at))
                continue
            alert.severity = cond.severity
            alert.message = cond.message
            alert.fix = cond.fix
            if cond.severity.rank > alert.notified.rank:
                alert.notified = cond.severity
                out.append(self._notification("escalated", alert, at))
        for key, alert in list(self._alerts.items()):
            if key in seen or (rules is not None and alert.rule not in rules):
                continue
            del self._alerts[key]
            alert.resolved_at = at
            self.resolved_total += 1
            out.append(self._notification("resolved", alert, at))
        return out

    def _notification(self, kind: NotificationKind, alert: Alert, now: float) -> Notification:
        snapshot = replace(alert)
        return Notification(
            kind, snapshot, self.instance, format_notification(kind, snapshot, self.instance, now)
        )


class NotificationTarget(Protocol):
    """Where the :class:`Notifier` posts a notification (JSON over HTTP)."""

    @property
    def url(self) -> str: ...
    @property
    def timeout(self) -> float: ...
    @property
    def display(self) -> str:
        """Safe for logs (no secret)."""
        ...

    @property
    def headers(self) -> dict[str, str]: ...

    def wants(self, notification: Notification) -> bool: ...
    def body(self, notification: Notification) -> bytes: ...


@dataclass(frozen=True)
class WebhookTarget:
    url: str = field(repr=False)
    min_severity: Severity = Severity.WARN
    timeout: float = 5.0

    @property
    def display(self) -> str:
        """Scheme and host only: a Slack webhook's path is its secret."""
        parts = urlsplit(self.url)
        return (
            f"{parts.scheme}://{parts.hostname or '?'}{':' + str(parts.port) if parts.port else ''}"
        )

    @property
    def headers(self) -> dict[str, str]:
        return {}

    def wants(self, notification: Notification) -> bool:
        return wants(notification, self.min_severity)

    def body(self, notification: Notification) -> bytes:
        return orjson.dumps({"text": notification.text})


def wants(notification: Notification, min_severity: Severity) -> bool:
    """A resolve goes where its highest notified severity went."""
    level = notification.alert.notified if notification.kind == "resolved" else None
    if level is None:
        level = notification.alert.severity
    return level.rank >= min_severity.rank


class Notifier:
    """Logs every notification and posts it to the webhooks that want it."""

    def __init__(
        self,
        webhooks: Sequence[NotificationTarget] = (),
        *,
        queue_size: int = 1000,
        attempts: int = 3,
    ) -> None:
        self.webhooks: list[NotificationTarget] = list(webhooks)
        self.attempts = attempts
        self.sent_total = 0
        self.failed_total = 0
        self._queue: asyncio.Queue[tuple[NotificationTarget, bytes]] = asyncio.Queue(queue_size)
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def notify(self, notifications: Iterable[Notification]) -> None:
        for n in notifications:
            if n.kind == "resolved":
                level = logging.INFO
            elif n.alert.severity.rank >= Severity.PAGE.rank:
                level = logging.ERROR
            else:
                level = logging.WARNING
            log.log(level, "alert %s: %s", n.kind, n.text)
            for target in self.webhooks:
                if not target.wants(n):
                    continue
                self.send(target, target.body(n))

    def send(self, target: NotificationTarget, body: bytes) -> None:
        """Queue one POST of ``body`` to ``target`` (retried, never blocking)."""
        try:
            self._queue.put_nowait((target, body))
        except asyncio.QueueFull:
            self.failed_total += 1
            log.warning("alert queue full; not sending to %s", target.display)
        else:
            self._ensure_task()

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._sender(), name="walrelay-alert-webhooks"
            )

    async def _sender(self) -> None:
        while True:
            target, body = await self._queue.get()
            try:
                await self._post(target, body)
            finally:
                self._queue.task_done()

    async def _post(self, target: NotificationTarget, body: bytes) -> None:
        # Imported here: aiohttp (and the SSL context it builds on import) costs
        # ~0.3 s of CPU at every start, and most runs never send an alert.
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        error = ""
        for attempt in range(1, self.attempts + 1):
            try:
                async with self._session.post(
                    target.url,
                    data=body,
                    headers={"content-type": "application/json", **target.headers},
                    timeout=aiohttp.ClientTimeout(total=target.timeout),
                ) as resp:
                    # The status is the answer; of the body at most a little is read
                    # (an unread rest closes the connection instead of filling memory).
                    await resp.content.read(64 * 1024)
                    if resp.status < 300:
                        self.sent_total += 1
                        return
                    error = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as e:
                error = f"{type(e).__name__}: {e}"
            if attempt < self.attempts:
                await asyncio.sleep(0.5 * 2 ** (attempt - 1))  # backoff between attempts
        self.failed_total += 1
        log.warning(
            "alert webhook %s failed after %d attempts: %s", target.display, self.attempts, error
        )

    async def flush(self, timeout: float = 3.0) -> bool:  # noqa: ASYNC109
        """Wait until queued webhook posts are done; False on timeout."""
        if self._task is None:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._queue.join()
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 3.0) -> None:  # noqa: ASYNC109
        """Send what is queued (up to ``timeout``), then stop."""
        await self.flush(timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
