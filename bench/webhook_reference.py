"""The webhook case of bench/brokers.py: its receiver and its reference.

The receiver (bench/webhook_receiver.py) is a separate process, started by
pid and stopped by pid, so it shares no GIL with the sender being timed.
walrelay POSTs to ``/walrelay``, the reference to ``/ref``. The reference is
a bare aiohttp client sending what walrelay's webhook sink sends: the same
body per event, ``Content-Type``, the three Standard Webhooks headers
(HMAC-SHA256 signature with the same key), one event per POST, as many
POSTs in flight as walrelay's ``max_in_flight`` (32 by default).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from broker_references import Payload
from walrelay.testing.pgcluster import free_port

# The sink's defaults (WebhookSinkConfig): POSTs in flight, pooled connections.
MAX_IN_FLIGHT = 32
MAX_CONNECTIONS = 64
# The signing key both sides use (the sink reads it as whsec_<base64>).
KEY = b"bench-webhook-signing-key-32-bytes!"
SECRET = "whsec_" + base64.b64encode(KEY).decode()


class WebhookReceiver:
    """bench/webhook_receiver.py on a free port, as a context manager."""

    def __init__(self) -> None:
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def count(self, path: str) -> int:
        with urllib.request.urlopen(self.url(f"count/{path}"), timeout=10) as resp:
            return int(resp.read())

    def __enter__(self) -> WebhookReceiver:
        script = Path(__file__).with_name("webhook_receiver.py")
        self._proc = subprocess.Popen([sys.executable, str(script), str(self.port)])
        deadline = time.monotonic() + 60
        while True:
            try:
                self.count("ready")
                return self
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError("the webhook receiver did not start") from None
                time.sleep(0.05)  # polling the port until the receiver listens

    def __exit__(self, *_: Any) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def sink(server: WebhookReceiver, workdir: Path) -> dict[str, Any]:
    secret_file = workdir / "webhook.secret"
    secret_file.write_text(SECRET)
    os.chmod(secret_file, 0o600)
    return {"type": "webhook", "url": server.url("walrelay"), "secret_file": str(secret_file)}


def count(server: WebhookReceiver, _: Path) -> int:
    return server.count("walrelay")


def reference(server: WebhookReceiver, payloads: Sequence[Payload]) -> float:
    """``MAX_IN_FLIGHT`` workers, each POSTing one signed event at a time."""
    import aiohttp

    async def go() -> float:
        connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS)
        headers = {"Content-Type": "application/json", "User-Agent": "walrelay-bench-reference"}
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=10), headers=headers
        ) as session:
            url = server.url("ref")
            todo = iter(payloads)

            async def worker() -> None:
                for p in todo:
                    ts = str(int(time.time()))
                    mac = hmac.new(KEY, f"{p.id}.{ts}.".encode(), hashlib.sha256)
                    mac.update(p.body)
                    signed = {
                        "webhook-id": p.id,
                        "webhook-timestamp": ts,
                        "webhook-signature": "v1," + base64.b64encode(mac.digest()).decode(),
                    }
                    async with session.post(
                        url, data=p.body, headers=signed, allow_redirects=False
                    ) as resp:
                        await resp.read()
                        if resp.status >= 300:
                            raise RuntimeError(f"webhook reference: answer {resp.status}")

            t0 = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(MAX_IN_FLIGHT)))
            elapsed = time.monotonic() - t0
        got = server.count("ref")
        if got != len(payloads):
            raise RuntimeError(f"webhook reference: the receiver has {got} of {len(payloads)}")
        return elapsed

    return asyncio.run(go())
