"""Webhook sink against a real aiohttp server on loopback that verifies signatures."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
import pytest
from aiohttp import web

from walrelay.config import WebhookSinkConfig
from walrelay.errors import ConfigError, SinkError, SinkUnavailable
from walrelay.model import Event, format_event_id
from walrelay.sinks.base import Sink
from walrelay.sinks.common import safe_url
from walrelay.sinks.signing import SignatureError, secret_key, verify
from walrelay.sinks.webhook import WebhookSink

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def webhook(url: str, *, secret: str | None, **settings: object) -> WebhookSink:
    """A sink built as the registry builds it, with ``secret`` given directly."""
    config = WebhookSinkConfig(url=url, **settings)
    return WebhookSink(config, secret=secret)


T0 = datetime(2024, 1, 1, tzinfo=UTC)


def make_event(seq: int, mode: str = "ok", lsn: int = 0x1000) -> Event:
    eid = format_event_id(lsn, seq)
    return Event(
        commit_lsn=lsn,
        seq=seq,
        op="insert",
        table="public.t",
        keys=(str(seq),),
        body=orjson.dumps({"id": eid, "mode": mode}),
        xid=1,
        committed_at=T0,
    )


@dataclass
class Receiver:
    """A webhook receiver we control; behaviour chosen by the body's "mode"."""

    url: str
    key: bytes
    received: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    bad_signatures: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            verify(self.key, request.headers, body)
        except SignatureError as exc:
            self.bad_signatures += 1
            return web.Response(status=401, text=f"bad signature: {exc}")
        self.received.append((request.headers["webhook-id"], dict(request.headers), body))
        mode = orjson.loads(body)["mode"]
        if mode == "ok":
            return web.Response(status=204)
        if mode == "500":
            return web.Response(status=500, text="boom " + "z" * 500)
        if mode == "503-date":
            return web.Response(
                status=503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}
            )
        if mode == "400":
            return web.Response(status=400, text="field 'x' is required")
        if mode == "410":
            return web.Response(status=410)
        if mode == "302":
            return web.Response(status=302, headers={"Location": "/elsewhere"})
        if mode == "408":
            return web.Response(status=408)
        if mode == "429":
            return web.Response(status=429, headers={"Retry-After": "7"})
        if mode == "slow":
            await self.release.wait()
            return web.Response(status=200)
        raise AssertionError(mode)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver(url="", key=secret_key(SECRET))
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    rec.url = f"http://{host}:{port}/hook"
    try:
        yield rec
    finally:
        rec.release.set()
        await runner.cleanup()


@pytest.fixture
async def sink(receiver: Receiver) -> AsyncIterator[WebhookSink]:
    s = webhook(receiver.url, secret=SECRET, timeout=5)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_delivers_signed_request(receiver: Receiver, sink: WebhookSink) -> None:
    assert isinstance(sink, Sink)
    assert sink.ordered is False and sink.batch_size == 1
    ev = make_event(1)
    await sink.deliver([ev])
    assert receiver.bad_signatures == 0
    [(wid, headers, body)] = receiver.received
    assert wid == ev.id
    assert body == ev.body
    assert headers["Content-Type"] == "application/json"
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["webhook-timestamp"].isdigit()


async def test_retry_keeps_webhook_id(receiver: Receiver, sink: WebhookSink) -> None:
    ev = make_event(2)
    await sink.deliver([ev])
    await sink.deliver([ev])
    assert [r[0] for r in receiver.received] == [ev.id, ev.id]


async def test_raw_string_secret_is_refused_and_its_whsec_form_keeps_the_key(
    receiver: Receiver,
) -> None:
    with pytest.raises(ConfigError, match="whsec_") as info:
        webhook(receiver.url, secret="plain-secret")
    assert "plain-secret" not in str(info.value)
    receiver.key = b"plain-secret"
    s = webhook(receiver.url, secret="whsec_" + base64.b64encode(b"plain-secret").decode())
    await s.open()
    try:
        await s.deliver([make_event(1)])
    finally:
        await s.close()
    assert receiver.bad_signatures == 0 and len(receiver.received) == 1


async def test_wrong_secret_is_a_permanent_401(receiver: Receiver) -> None:
    s = webhook(receiver.url, secret="whsec_" + "A" * 32)
    await s.open()
    try:
        with pytest.raises(SinkError) as info:
            await s.deliver([make_event(1)])
    finally:
        await s.close()
    assert receiver.bad_signatures == 1
    assert info.value.permanent is True
    assert "401" in str(info.value)
    assert "AAAA" not in str(info.value)


async def test_500_is_retryable(sink: WebhookSink) -> None:
    ev = make_event(3, "500")
    with pytest.raises(SinkError) as info:
        await sink.deliver([ev])
    err = info.value
    assert not isinstance(err, SinkUnavailable)
    assert err.permanent is False
    assert err.retry_after is None
    msg = str(err)
    assert "500" in msg and ev.id in msg and "/hook" in msg
    excerpt = msg.split("'", 1)[1]
    assert len(excerpt) <= 202  # at most 200 chars of the body (plus quotes)


@pytest.mark.parametrize(("mode", "retry_after"), [("429", 7.0), ("408", None)])
async def test_429_and_408_are_retryable(
    sink: WebhookSink, mode: str, retry_after: float | None
) -> None:
    with pytest.raises(SinkError) as info:
        await sink.deliver([make_event(4, mode)])
    assert info.value.permanent is False
    assert info.value.retry_after == retry_after
    assert mode in str(info.value)


async def test_retry_after_http_date(sink: WebhookSink) -> None:
    with pytest.raises(SinkError) as info:
        await sink.deliver([make_event(4, "503-date")])
    assert info.value.permanent is False
    assert info.value.retry_after == 0.0  # a date in the past: retry now


@pytest.mark.parametrize("mode", ["400", "410", "302"])
async def test_other_statuses_are_permanent(
    receiver: Receiver, sink: WebhookSink, mode: str
) -> None:
    ev = make_event(5, mode)
    with pytest.raises(SinkError) as info:
        await sink.deliver([ev])
    assert info.value.permanent is True
    assert mode in str(info.value) and ev.id in str(info.value)
    if mode == "400":
        assert "field 'x' is required" in str(info.value)
    if mode == "302":
        assert "redirect" in str(info.value)
    assert len(receiver.received) == 1  # the redirect was not followed


async def test_timeout_is_unavailable(receiver: Receiver) -> None:
    s = webhook(receiver.url, secret=SECRET, timeout=0.2)
    await s.open()
    try:
        with pytest.raises(SinkUnavailable) as info:
            await s.deliver([make_event(6, "slow")])
    finally:
        await s.close()
    assert info.value.permanent is False
    assert "no response within 0.2 s" in str(info.value)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_connection_refused_hides_credentials() -> None:
    port = _closed_port()
    url = f"https://admin:hunter2pw@127.0.0.1:{port}/hook?token=qsecret123&x=1"
    s = webhook(url, secret="whsec_c2VjcmV0LXNpZ25pbmcta2V5LTEyMzQ1Njc4")
    assert "hunter2pw" not in repr(s) and "qsecret123" not in s.url
    # Refused at open (the start-up probe): the destination waits for its server.
    with pytest.raises(SinkUnavailable) as at_open:
        await s.open()
    # Refused at delivery: the receiver went away after open.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        await s.open()
    try:
        with pytest.raises(SinkUnavailable) as info:
            await s.deliver([make_event(7)])
    finally:
        await s.close()
    for text in (str(at_open.value), str(info.value)):
        assert f"127.0.0.1:{port}/hook" in text
        for secret in ("hunter2pw", "admin", "qsecret123", "token", "c2VjcmV0"):
            assert secret not in text


async def test_url_credentials_are_used_but_never_shown(receiver: Receiver) -> None:
    url = receiver.url.replace("http://", "http://admin:hunter2pw@") + "?token=qsecret123"
    s = webhook(url, secret=SECRET)
    await s.open()
    try:
        await s.deliver([make_event(8)])
        with pytest.raises(SinkError) as info:
            await s.deliver([make_event(9, "500")])
    finally:
        await s.close()
    headers = receiver.received[0][1]
    assert headers["Authorization"].startswith("Basic ")
    text = str(info.value)
    assert "hunter2pw" not in text and "qsecret123" not in text and "admin" not in text


async def test_batch_sends_concurrently_and_combines_errors(receiver: Receiver) -> None:
    s = webhook(receiver.url, secret=SECRET, batch_size=10)
    await s.open()
    try:
        await s.deliver([make_event(i) for i in range(10)])
        assert len(receiver.received) == 10

        # A transient failure wins: the batch is retried whole.
        with pytest.raises(SinkError) as info:
            await s.deliver([make_event(20), make_event(21, "400"), make_event(22, "429")])
        assert info.value.permanent is False
        assert info.value.retry_after == 7.0
        assert "2 of 3" in str(info.value)

        # Only permanent failures: permanent.
        with pytest.raises(SinkError) as info:
            await s.deliver([make_event(30), make_event(31, "400")])
        assert info.value.permanent is True
    finally:
        await s.close()


async def test_batch_with_timeout_is_unavailable(receiver: Receiver) -> None:
    s = webhook(receiver.url, secret=SECRET, batch_size=2, timeout=0.2)
    await s.open()
    try:
        with pytest.raises(SinkUnavailable):
            await s.deliver([make_event(40), make_event(41, "slow")])
    finally:
        await s.close()


async def test_unsigned_when_no_secret(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    s = webhook(receiver.url, secret=None, headers={"X-Tenant": "t1"})
    await s.open()
    try:
        with pytest.raises(SinkError) as info:
            await s.deliver([make_event(1)])
    finally:
        await s.close()
    assert info.value.permanent is True  # our receiver insists on a signature: 401
    assert any("NOT signed" in r.getMessage() for r in caplog.records)


async def test_custom_headers(receiver: Receiver) -> None:
    s = webhook(receiver.url, secret=SECRET, headers={"X-Tenant": "t1"})
    await s.open()
    try:
        await s.deliver([make_event(1)])
    finally:
        await s.close()
    assert receiver.received[0][1]["X-Tenant"] == "t1"


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="http"):
        webhook("ftp://u:pw@host/x", secret=None)
    with pytest.raises(ConfigError) as info:
        webhook("notaurl?token=abcdef", secret=None)
    assert "abcdef" not in str(info.value)
    with pytest.raises(ConfigError, match="reserved"):
        webhook("http://h/x", secret=None, headers={"Webhook-Id": "x"})
    with pytest.raises(ConfigError, match="base64") as info:
        webhook("http://h/x", secret="whsec_!!!!supersecret")
    assert "supersecret" not in str(info.value)


def test_safe_url() -> None:
    assert safe_url("https://u:p@h.example:8443/a/b?token=x#f") == "https://h.example:8443/a/b"


async def test_deliver_before_open() -> None:
    s = webhook("http://127.0.0.1:1/x", secret=None)
    with pytest.raises(SinkError, match="before open"):
        await s.deliver([make_event(1)])
