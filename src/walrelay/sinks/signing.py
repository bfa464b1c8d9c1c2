"""Standard Webhooks signatures (https://www.standardwebhooks.com), symmetric scheme.

A delivery carries three headers:

- ``webhook-id``: the event id (``<commit_lsn>/<seq>``), the same on every
  retry, so a receiver can use it as its idempotency key;
- ``webhook-timestamp``: the attempt's time, integer Unix seconds;
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``,
  possibly several space-separated entries (secret rotation).

Receivers written in Python can verify a request with :func:`verify`::

    from walrelay.sinks.signing import secret_key, verify, SignatureError

    KEY = secret_key("whsec_...")          # once, at start-up

    async def handle(request):
        body = await request.read()        # the raw bytes, never re-serialised JSON
        try:
            verify(KEY, request.headers, body)
        except SignatureError:
            return web.Response(status=401)
        ...                                # dedupe on request.headers["webhook-id"]

Secrets: a string ``"whsec_<base64>"`` is the spec's serialisation and its
base64 part is the HMAC key; any other string is used as its UTF-8 bytes;
``bytes`` are used as they are. The webhook sink itself signs only with a
``whsec_`` secret: the official Standard Webhooks libraries read every string
secret as base64, so only that form verifies the same everywhere.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from collections.abc import Mapping

__all__ = [
    "SECRET_PREFIX",
    "SignatureError",
    "secret_key",
    "sign",
    "signature_headers",
    "verify",
]

SECRET_PREFIX = "whsec_"
"""Prefix of a serialised symmetric secret (the rest is base64)."""

_VERSION = "v1"


class SignatureError(ValueError):
    """A webhook request is missing headers, too old/new, or not signed with the key."""


def secret_key(secret: bytes | str) -> bytes:
    """The HMAC key for ``secret``.

    ``"whsec_<base64>"`` -> the decoded bytes (padding may be omitted); any
    other ``str`` -> its UTF-8 bytes; ``bytes`` -> unchanged. Raises
    ValueError for an empty secret or an undecodable ``whsec_`` value (the
    message never contains the secret).
    """
    if isinstance(secret, str):
        if secret.startswith(SECRET_PREFIX):
            encoded = secret[len(SECRET_PREFIX) :]
            try:
                # Tolerate missing or surplus padding.
                bare = encoded.rstrip("=")
                key = base64.b64decode(bare + "=" * (-len(bare) % 4), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(
                    "webhook secret starts with 'whsec_' but the rest is not valid base64"
                ) from None
        else:
            key = secret.encode("utf-8")
    else:
        key = bytes(secret)
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def _digest(key: bytes, msg_id: str, timestamp: int | str, body: bytes) -> bytes:
    # One-shot hmac.digest (OpenSSL's HMAC in one call) costs a quarter less
    # than an HMAC object fed twice, even with the copy of the body.
    return hmac.digest(key, b"".join((f"{msg_id}.{timestamp}.".encode(), body)), "sha256")


def sign(secret_key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``"v1," + base64(HMAC-SHA256(key, id.ts.body))``."""
    return f"{_VERSION},{base64.b64encode(_digest(secret_key, msg_id, timestamp, body)).decode()}"


def signature_headers(
    secret_key: bytes | None, msg_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt (no signature without a key)."""
    ts = int(time.time()) if timestamp is None else timestamp
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(ts)}
    if secret_key is not None:
        headers["webhook-signature"] = sign(secret_key, msg_id, ts, body)
    return headers


def verify(
    secret_key: bytes,
    headers: Mapping[str, str],
    body: bytes,
    tolerance: float = 300,
    *,
    now: float | None = None,
) -> None:
    """Check a received webhook; return None if authentic, else raise SignatureError.

    ``headers`` may be any mapping (header names are matched
    case-insensitively). The timestamp must lie within ``tolerance`` seconds
    of ``now`` (default: the current time) in either direction, which stops
    replays of captured requests. Any one ``v1`` entry of the
    space-separated ``webhook-signature`` list may match; other versions
    (e.g. ``v1a``, asymmetric) are ignored. Comparison is constant-time.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    ts_text = lowered.get("webhook-timestamp")
    sig_text = lowered.get("webhook-signature")
    if not msg_id or not ts_text or not sig_text:
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature header")
    if not (ts_text.isascii() and ts_text.isdigit()):
        raise SignatureError(f"webhook-timestamp is not integer seconds: {ts_text[:40]!r}")
    timestamp = int(ts_text)
    current = time.time() if now is None else now
    if timestamp < current - tolerance:
        raise SignatureError("webhook-timestamp is too old")
    if timestamp > current + tolerance:
        raise SignatureError("webhook-timestamp is too far in the future")
    # Sign the header text exactly as received (it is what the sender signed).
    expected = _digest(secret_key, msg_id, ts_text, body)
    for entry in sig_text.split():
        version, sep, encoded = entry.partition(",")
        if not sep or version != _VERSION:
            continue
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(expected, candidate):
            return
    raise SignatureError("no matching v1 signature")
