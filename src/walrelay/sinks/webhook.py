"""HTTP webhook sink, signed per Standard Webhooks (https://www.standardwebhooks.com).

Every event is one ``POST`` of ``event.body`` (``Content-Type:
application/json``; an output format may set another, and CloudEvents binary
mode adds its ``ce-`` headers: :mod:`walrelay.sinks.rendered`) with the headers

- ``webhook-id``: the event id ``<commit_lsn>/<seq>``, identical on every
  retry: receivers use it as their idempotency key;
- ``webhook-timestamp``: this attempt's time, integer Unix seconds;
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256>`` over
  ``{id}.{timestamp}.{body}`` (see :mod:`walrelay.sinks.signing`, which also
  has ``verify`` for receivers). Omitted when no secret is configured.

Outcomes: ``2xx`` delivered. ``408``, ``429`` and ``5xx`` raise a retryable
:class:`~walrelay.errors.SinkError` (``retry_after`` from a ``Retry-After``
header, seconds or HTTP date). Redirects are not followed (the spec: fix
the URL instead) and, like every other ``4xx`` (``410 Gone`` included),
raise a permanent ``SinkError``. Timeouts and connection failures raise
:class:`~walrelay.errors.SinkUnavailable`.

With ``batch_size > 1`` the events of one ``deliver`` call are POSTed
concurrently; if any fails, ``deliver`` raises and the pipeline retries the
*whole* batch. Events that had succeeded are sent again with the same
``webhook-id``, which the receiver drops as a duplicate. The error is
retryable if any failure was; permanent only if all failures were (the policy
in :mod:`walrelay.sinks.base`).

The URL may carry credentials (``https://user:pass@host/path?token=...``):
they are used (basic auth, query string) but never appear in errors or
logs, which name the URL without user info, query and fragment.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import importlib.metadata
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import aiohttp
from yarl import URL

from walrelay.errors import ConfigError, SinkError, SinkUnavailable
from walrelay.model import Event
from walrelay.sinks.common import batch_error, safe_url
from walrelay.sinks.rendered import http_headers
from walrelay.sinks.signing import SECRET_PREFIX, secret_key, signature_headers

if TYPE_CHECKING:
    from walrelay.config import WebhookSinkConfig
    from walrelay.sinks.base import SinkContext

__all__ = ["WebhookSink", "safe_url"]

log = logging.getLogger("walrelay.sinks.webhook")

_BODY_EXCERPT = 200
# Of a 2xx answer's body, read at most this much (to reuse the connection); a
# longer body closes the connection instead of being read.
MAX_RESPONSE_BYTES = 64 * 1024
_RETRYABLE_4XX = frozenset({408, 429})

try:
    _USER_AGENT = f"walrelay/{importlib.metadata.version('walrelay')}"
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source checkout
    _USER_AGENT = "walrelay"


class WebhookSink:
    """POSTs each event to ``url``; see the module docstring."""

    ordered = False
    # A receiver may act on a resend: the engine puts its dedup ledger in front.
    transactional = False

    def __init__(
        self,
        config: WebhookSinkConfig,
        *,
        secret: bytes | str | None,
    ) -> None:
        url = config.url.get_secret_value()
        try:
            parsed: URL | None = URL(url)
        except (TypeError, ValueError):
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.raw_host:
            shown = safe_url(parsed) if parsed is not None else "(unparsable)"
            raise ConfigError(
                f"webhook sink: URL {shown} is not an absolute http(s) URL",
                fix="set the webhook url to e.g. https://example.com/hooks/walrelay",
            )
        if config.timeout <= 0:
            raise ConfigError(
                f"webhook sink: timeout must be > 0 seconds, got {config.timeout}",
                fix="set timeout to e.g. 10 (Standard Webhooks suggests 15-30 s)",
            )
        static: dict[str, str] = {}
        for name, value in config.headers.items():
            if name.lower().startswith("webhook-"):
                raise ConfigError(
                    f"webhook sink: header {name!r} is reserved for the Standard Webhooks "
                    "signature",
                    fix="remove it from the sink's headers",
                )
            static[name] = value
        lowered = {n.lower() for n in static}
        if "content-type" not in lowered:
            static["Content-Type"] = "application/json"
        if "user-agent" not in lowered:
            static["User-Agent"] = _USER_AGENT
        if isinstance(secret, str) and not secret.startswith(SECRET_PREFIX):
            # The official Standard Webhooks libraries read any string secret as
            # base64; a raw string signed as its bytes would never verify there.
            raise ConfigError(
                f"webhook sink {safe_url(parsed)}: the secret is not in the Standard Webhooks"
                " format whsec_<base64>, so receivers using the official libraries could not"
                " verify its signatures",
                fix="set it to whsec_ + base64 of the key; to keep this key as it is:"
                ' whsec_$(printf %s "$OLD_SECRET" | base64 -w0)',
            )
        try:
            self._key: bytes | None = None if secret is None else secret_key(secret)
        except ValueError as exc:
            raise ConfigError(
                f"webhook sink {safe_url(parsed)}: {exc}",
                fix="set the secret to whsec_ + standard base64 (A-Z a-z 0-9 + /), e.g."
                " whsec_$(head -c 32 /dev/urandom | base64 -w0)",
            ) from None
        # ConfigError (exit 2) here, at start, when a certificate file does not load.
        self._ssl = config.tls.ssl_context() if config.tls is not None else None
        self._url = parsed
        self.url = safe_url(parsed)
        self.timeout = config.timeout
        self.max_connections = config.max_connections
        self.batch_size = config.batch_size
        self._headers = static
        self._session: aiohttp.ClientSession | None = None
        self._scrub = _scrub_list(parsed)

    @classmethod
    def from_config(cls, config: WebhookSinkConfig, context: SinkContext) -> WebhookSink:
        """The signing secret is read here, from ``secret_env`` or ``secret_file``."""
        return cls(config, secret=config.secret())

    def __repr__(self) -> str:
        return f"WebhookSink({self.url!r})"

    async def open(self) -> None:
        if self._session is not None:
            return
        await self._probe()
        if self._key is None:
            log.warning(
                "webhook sink %s: no secret configured; requests are NOT signed and the "
                "receiver cannot tell them from forged ones",
                self.url,
            )
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=self.max_connections, ssl=self._ssl if self._ssl is not None else True
            ),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers=self._headers,
        )

    async def _probe(self) -> None:
        """A TCP connection to the receiver, closed at once (no request is
        sent): a receiver down at start is then reported as not reachable yet
        (walrelay.engine.waiting_sink) instead of as failing deliveries."""
        url = self._url
        host = url.raw_host or ""
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), timeout=self.timeout
            )
        except (OSError, TimeoutError) as exc:
            raise SinkUnavailable(
                f"webhook sink {self.url}: cannot connect to {host}:{port}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def deliver(self, events: Sequence[Event]) -> None:
        session = self._session
        if session is None:
            raise SinkError(f"webhook sink {self.url}: deliver() before open() or after close()")
        if len(events) == 1:
            await self._send(session, events[0])
            return
        if not events:
            return
        results = await asyncio.gather(
            *(self._send(session, e) for e in events), return_exceptions=True
        )
        failures: list[SinkError] = []
        for r in results:
            if isinstance(r, SinkError):
                failures.append(r)
            elif isinstance(r, BaseException):
                raise r
        if failures:
            raise batch_error(failures, len(events), "webhook deliveries")

    async def _send(self, session: aiohttp.ClientSession, event: Event) -> None:
        body = event.body
        msg_id = event.id
        headers = signature_headers(self._key, msg_id, body)
        if event.rendering is not None:  # CloudEvents: ce- headers, the body's media type
            headers.update(http_headers(event))
        try:
            async with session.post(
                self._url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                status = resp.status
                if 200 <= status < 300:
                    # The status is the acknowledgement. A short body is drained so
                    # the connection can be reused; a long one is not read at all.
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        if not await _drain(resp, MAX_RESPONSE_BYTES):
                            resp.close()
                    return
                excerpt = await _excerpt(resp)
                retry_after_header = resp.headers.get("Retry-After")
                reason = resp.reason or ""
        except TimeoutError:
            raise SinkUnavailable(
                f"webhook {self.url}: no response within {self.timeout:g} s for event {msg_id}"
            ) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            raise SinkUnavailable(
                f"webhook {self.url}: {self._describe(exc)} for event {msg_id}"
            ) from None
        except aiohttp.ClientError as exc:
            raise SinkError(
                f"webhook {self.url}: {self._describe(exc)} for event {msg_id}"
            ) from None

        what = f"webhook {self.url} answered {status} {reason}".rstrip()
        detail = (
            f"{what} for event {msg_id}: {excerpt!r}" if excerpt else f"{what} for event {msg_id}"
        )
        if status >= 500 or status in _RETRYABLE_4XX:
            raise SinkError(
                detail, permanent=False, retry_after=_parse_retry_after(retry_after_header)
            )
        if 300 <= status < 400:
            detail += " (redirects are not followed: set the webhook url to the final address)"
        raise SinkError(detail, permanent=True)

    def _describe(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        for secret in self._scrub:
            text = text.replace(secret, "***")
        return text


def _scrub_list(url: URL) -> list[str]:
    """Strings that must never appear in a message: the raw URL and its secret parts."""
    items = {str(url), url.human_repr()}
    for part in (url.raw_user, url.user, url.raw_password, url.password):
        if part:
            items.add(part)
    if url.raw_query_string:
        items.add(url.raw_query_string)
        items.add(url.query_string)
        for value in url.query.values():
            if len(value) >= 4:
                items.add(value)
    if url.raw_fragment:
        items.add(url.raw_fragment)
    # Longest first so a URL is replaced whole before its parts.
    return sorted((i for i in items if i), key=len, reverse=True)


async def _drain(resp: aiohttp.ClientResponse, limit: int) -> bool:
    """Read and drop the body up to ``limit`` bytes; False if it is longer."""
    read = 0
    while read <= limit:
        chunk = await resp.content.read(16 * 1024)
        if not chunk:
            return True
        read += len(chunk)
    return False


async def _excerpt(resp: aiohttp.ClientResponse) -> str:
    try:
        raw = await resp.content.read(_BODY_EXCERPT * 4)
    except (aiohttp.ClientError, TimeoutError):
        return ""
    text = " ".join(raw.decode("utf-8", "replace").split())
    return text[:_BODY_EXCERPT]


def _parse_retry_after(value: str | None) -> float | None:
    """``Retry-After``: delay seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
