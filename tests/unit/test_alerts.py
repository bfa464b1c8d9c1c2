"""AlertManager (once per firing, escalation, resolution) and the webhook Notifier."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp import web

from walrelay.monitor.alerts import (
    AlertManager,
    Condition,
    Notifier,
    WebhookTarget,
)
from walrelay.monitor.thresholds import Severity
from walrelay.testing.pgcluster import free_port


def cond(
    sev: Severity, obj: str = "slot a", rule: str = "slot_inactive", msg: str = "m"
) -> Condition:
    return Condition(rule, obj, sev, msg, "do x")


def test_fires_once_per_firing_escalates_and_resolves() -> None:
    am = AlertManager("walrelay test")
    first = am.update([cond(Severity.WARN, msg="inactive 1s")], now=100.0)
    assert [n.kind for n in first] == ["firing"]
    assert first[0].text.startswith("[WARN] walrelay test: slot a: inactive 1s")
    assert "fix: do x" in first[0].text
    # The same condition again: nothing new, the message is refreshed.
    assert am.update([cond(Severity.WARN, msg="inactive 2s")], now=101.0) == []
    open_ = am.get("slot_inactive", "slot a")
    assert open_ is not None and open_.message == "inactive 2s"
    # warn -> page: one escalation.
    up = am.update([cond(Severity.PAGE, msg="inactive 5m")], now=102.0)
    assert [n.kind for n in up] == ["escalated"]
    assert up[0].text.startswith("[PAGE]")
    # page -> warn: no message, the alert stays open at warn.
    assert am.update([cond(Severity.WARN)], now=103.0) == []
    alert = am.get("slot_inactive", "slot a")
    assert alert is not None and alert.severity is Severity.WARN
    # and back to page does not notify again (already paged for this firing)
    assert am.update([cond(Severity.PAGE)], now=103.5) == []
    # Gone: resolved once.
    done = am.update([], now=110.0)
    assert [n.kind for n in done] == ["resolved"]
    assert done[0].text.startswith("[RESOLVED] walrelay test: slot_inactive on slot a")
    assert "after 10.0s" in done[0].text and "(was PAGE)" in done[0].text
    assert am.update([], now=111.0) == []
    assert am.open == []
    # A new firing after resolution notifies again.
    assert [n.kind for n in am.update([cond(Severity.WARN)], now=120.0)] == ["firing"]
    assert am.fired_total == 2 and am.resolved_total == 1


def test_ok_conditions_do_not_fire_and_resolve_open_ones() -> None:
    am = AlertManager("x")
    assert am.update([cond(Severity.OK), cond(Severity.INFO, obj="b")]) == []
    am.update([cond(Severity.WARN)])
    assert [n.kind for n in am.update([cond(Severity.OK)])] == ["resolved"]


def test_rules_not_evaluated_keep_their_alerts() -> None:
    am = AlertManager("x")
    am.update([cond(Severity.WARN), cond(Severity.PAGE, obj="d", rule="delivery_lag")])
    # The database could not be read: only engine rules were evaluated.
    out = am.update([cond(Severity.PAGE, obj="d", rule="delivery_lag")], rules={"delivery_lag"})
    assert out == []
    assert {a.rule for a in am.open} == {"slot_inactive", "delivery_lag"}
    out = am.update([], rules={"slot_inactive"})
    assert [(n.kind, n.alert.rule) for n in out] == [("resolved", "slot_inactive")]


def test_open_sorted_worst_first() -> None:
    am = AlertManager("x")
    am.update([cond(Severity.WARN, obj="a")], now=1.0)
    am.update([cond(Severity.WARN, obj="a"), cond(Severity.PAGE, obj="b")], now=2.0)
    assert [a.object for a in am.open] == ["b", "a"]
    assert am.open[0].to_dict()["severity"] == "page"


def test_webhook_target_hides_the_secret_path() -> None:
    t = WebhookTarget("https://hooks.slack.com/services/T000/B000/XXXXSECRET")
    assert t.display == "https://hooks.slack.com"
    assert "SECRET" not in repr(t)


class Peer:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail_first = 0
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=500)
        self.bodies.append(orjson.loads(await request.read()))
        return web.Response(text="ok")

    async def __aenter__(self) -> Peer:
        app = web.Application()
        app.router.add_post("/hook/secret", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook/secret"


async def test_notifier_posts_slack_json_with_severity_routing_and_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with Peer() as everything, Peer() as pager:
        everything.fail_first = 1  # one retry
        notifier = Notifier(
            [WebhookTarget(everything.url), WebhookTarget(pager.url, Severity.PAGE)]
        )
        am = AlertManager("inst")
        with caplog.at_level("INFO", logger="walrelay.alerts"):
            notifier.notify(am.update([cond(Severity.WARN)]))
            notifier.notify(am.update([cond(Severity.PAGE)]))
            notifier.notify(am.update([]))
            assert await notifier.flush(10)
        await notifier.close()
        texts = [b["text"] for b in everything.bodies]
        assert [t.split("]")[0] for t in texts] == ["[WARN", "[PAGE", "[RESOLVED"]
        assert all(set(b) == {"text"} for b in everything.bodies)
        # The pager only hears about page-level firings, and their resolution.
        assert [b["text"].split("]")[0] for b in pager.bodies] == ["[PAGE", "[RESOLVED"]
        assert notifier.sent_total == 5 and notifier.failed_total == 0
        levels = [r.levelname for r in caplog.records]
        assert levels == ["WARNING", "ERROR", "INFO"]


async def test_notifier_gives_up_on_a_dead_webhook_without_blocking(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notifier = Notifier(
        [WebhookTarget(f"http://127.0.0.1:{free_port()}/x", timeout=1.0)], attempts=2
    )
    try:
        am = AlertManager("inst")
        notifier.notify(am.update([cond(Severity.PAGE)]))  # returns at once
        await asyncio.wait_for(notifier.flush(10), 10)
    finally:
        await notifier.close()
    assert notifier.failed_total == 1
    assert any("alert webhook http://127.0.0.1" in r.getMessage() for r in caplog.records)
