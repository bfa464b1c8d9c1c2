"""What the webhook sink signs verifies with the official ``standardwebhooks``
library, on real requests a real aiohttp receiver got; 2xx bodies are read
only up to a bound."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import orjson
import pytest
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from walrelay.config import WebhookSinkConfig
from walrelay.errors import ConfigError
from walrelay.model import Event
from walrelay.sinks.webhook import MAX_RESPONSE_BYTES, WebhookSink

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def event(seq: int) -> Event:
    body = orjson.dumps({"seq": seq, "text": "caf\u00e9 \u2603"})
    return Event(
        commit_lsn=0x16B3748,
        seq=seq,
        op="insert",
        table="public.t",
        keys=(str(seq),),
        body=body,
        xid=1,
        committed_at=datetime(2024, 1, 1, tzinfo=UTC),
    )


async def serve(handler: Handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/hook", handler)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}/hook"


def sink(url: str, secret: str | None) -> WebhookSink:
    return WebhookSink(WebhookSinkConfig(url=url, timeout=10), secret=secret)


def whsec(key: bytes, *, padded: bool = True) -> str:
    encoded = base64.b64encode(key).decode()
    return "whsec_" + (encoded if padded else encoded.rstrip("="))


SECRETS = {
    "24-bytes": whsec(os.urandom(24)),
    "32-bytes": whsec(os.urandom(32)),
    "64-bytes": whsec(os.urandom(64)),
    "unpadded": whsec(b"0123456789abcdefghijk", padded=False),
    "binary-key": whsec(bytes(range(256))[:40]),
}


@pytest.fixture
async def official_receiver() -> AsyncIterator[tuple[str, list[tuple[str, dict[str, str], bytes]]]]:
    got: list[tuple[str, dict[str, str], bytes]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        got.append((request.query["secret"], dict(request.headers), await request.read()))
        return web.Response(status=204)

    runner, url = await serve(handle)
    try:
        yield url, got
    finally:
        await runner.cleanup()


async def test_signatures_verify_with_the_official_library(
    official_receiver: tuple[str, list[tuple[str, dict[str, str], bytes]]],
) -> None:
    url, got = official_receiver
    for name, secret in SECRETS.items():
        s = sink(f"{url}?secret={name}", secret)
        await s.open()
        try:
            await s.deliver([event(1), event(2)])
        finally:
            await s.close()
    assert len(got) == 2 * len(SECRETS)
    for name, headers, body in got:
        payload = Webhook(SECRETS[name]).verify(body, headers)
        assert payload["text"] == "caf\u00e9 \u2603"
        other = next(s for n, s in SECRETS.items() if n != name)
        with pytest.raises(WebhookVerificationError):
            Webhook(other).verify(body, headers)


@pytest.mark.parametrize(
    "secret",
    [
        "plain-secret",  # a raw string: the official libraries would base64-decode it
        base64.b64encode(b"0123456789abcdef0123").decode(),  # base64 without whsec_
        "whsec_bm90-dXJs_c2FmZQ",  # URL-safe alphabet: the libraries decode it differently
        "whsec_",
    ],
)
def test_a_secret_not_in_whsec_base64_form_is_refused_at_start(secret: str) -> None:
    with pytest.raises(ConfigError) as info:
        sink("http://127.0.0.1:1/hook", secret)
    message = str(info.value)
    assert "whsec_" in message and "fix:" in message
    assert "\n" not in message
    if len(secret) > len("whsec_"):
        assert secret.removeprefix("whsec_") not in message


async def test_a_huge_2xx_body_is_not_read() -> None:
    """A receiver answering 200 with a 64 MiB body: the sink stops reading after
    MAX_RESPONSE_BYTES and closes the connection; the receiver never gets to
    send most of it (before: the whole body was read into memory)."""
    total = 64 * 1024 * 1024
    sent = 0
    stopped = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        await request.read()
        resp = web.StreamResponse(status=200)
        resp.content_length = total
        await resp.prepare(request)
        chunk = b"x" * (256 * 1024)
        try:
            while sent < total:
                await resp.write(chunk)
                sent += len(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the client hung up: what we want
        finally:
            stopped.set()
        return resp

    runner, url = await serve(handle)
    s = sink(url, SECRETS["32-bytes"])
    await s.open()
    try:
        await asyncio.wait_for(s.deliver([event(1)]), timeout=10)
        await asyncio.wait_for(stopped.wait(), timeout=10)
    finally:
        await s.close()
        await runner.cleanup()
    # Socket buffers hold a few MiB at most; the body was 64 MiB.
    assert sent < 16 * 1024 * 1024, sent
    assert MAX_RESPONSE_BYTES <= 1024 * 1024
