"""Standard Webhooks signing and verification."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from walrelay.sinks.signing import (
    SignatureError,
    secret_key,
    sign,
    signature_headers,
    verify,
)

# The reference test vector of the Standard Webhooks project (its Python
# library's test_sign_function): secret, id, timestamp, payload -> signature.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TS = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

# Changes a signed request's headers and body.
Tamper = Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]]


def test_spec_test_vector() -> None:
    assert sign(secret_key(SPEC_SECRET), SPEC_ID, SPEC_TS, SPEC_BODY) == SPEC_SIGNATURE


def test_spec_vector_verifies() -> None:
    headers = {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": str(SPEC_TS),
        "webhook-signature": SPEC_SIGNATURE,
    }
    verify(secret_key(SPEC_SECRET), headers, SPEC_BODY, now=SPEC_TS + 10)


def test_secret_forms() -> None:
    raw = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert secret_key(SPEC_SECRET) == raw
    assert secret_key(raw) == raw
    assert secret_key("plain secret") == b"plain secret"
    # Unpadded base64 after whsec_ is accepted.
    assert secret_key("whsec_" + base64.b64encode(b"abcd").decode().rstrip("=")) == b"abcd"
    with pytest.raises(ValueError, match="empty"):
        secret_key("")
    with pytest.raises(ValueError, match="base64") as info:
        secret_key("whsec_not*base64!")
    assert "not*base64" not in str(info.value)


def _headers(key: bytes, body: bytes, ts: int = 1_700_000_000) -> dict[str, str]:
    return signature_headers(key, "00000000016B3748/3", body, timestamp=ts)


def test_roundtrip_and_case_insensitive_headers() -> None:
    key = secret_key("s3cret")
    body = b'{"id":"00000000016B3748/3"}'
    headers = _headers(key, body)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    verify(key, headers, body, now=1_700_000_000)
    verify(key, {k.title(): v for k, v in headers.items()}, body, now=1_700_000_000)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, b: (h, b + b" "),
        lambda h, b: ({**h, "webhook-id": "00000000016B3748/4"}, b),
        lambda h, b: ({**h, "webhook-timestamp": "1700000001"}, b),
        lambda h, b: ({**h, "webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()}, b),
        lambda h, b: ({**h, "webhook-signature": h["webhook-signature"].replace("v1,", "v2,")}, b),
        lambda h, b: ({**h, "webhook-signature": "garbage"}, b),
        lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b),
        lambda h, b: ({k: v for k, v in h.items() if k != "webhook-id"}, b),
        lambda h, b: ({**h, "webhook-timestamp": "17e8"}, b),
    ],
)
def test_tampering_is_rejected(tamper: Tamper) -> None:
    key = secret_key("s3cret")
    body = b'{"a":1}'
    headers, body2 = tamper(_headers(key, body), body)
    with pytest.raises(SignatureError):
        verify(key, headers, body2, now=1_700_000_000)


def test_wrong_key_rejected() -> None:
    body = b"{}"
    headers = _headers(secret_key("one"), body)
    with pytest.raises(SignatureError, match="no matching"):
        verify(secret_key("two"), headers, body, now=1_700_000_000)


def test_any_of_several_signatures_may_match() -> None:
    key = secret_key("new")
    body = b"{}"
    headers = _headers(key, body)
    old = sign(secret_key("old"), headers["webhook-id"], 1_700_000_000, body)
    headers["webhook-signature"] = f"{old} v1a,AAAA {headers['webhook-signature']}"
    verify(key, headers, body, now=1_700_000_000)


def test_timestamp_tolerance() -> None:
    key = secret_key("k")
    body = b"{}"
    headers = _headers(key, body, ts=1_000_000)
    verify(key, headers, body, now=1_000_300)
    verify(key, headers, body, now=999_700)
    with pytest.raises(SignatureError, match="too old"):
        verify(key, headers, body, now=1_000_301)
    with pytest.raises(SignatureError, match="future"):
        verify(key, headers, body, now=999_699)
    verify(key, headers, body, tolerance=10_000, now=1_005_000)


def test_unsigned_headers_without_key() -> None:
    headers = signature_headers(None, "0000000000000001/0", b"{}", timestamp=5)
    assert headers == {"webhook-id": "0000000000000001/0", "webhook-timestamp": "5"}


def test_secret_key_accepts_padded_base64() -> None:
    # 11 bytes -> base64 with one "=" of padding, as most generators print it.
    padded = "whsec_" + base64.b64encode(b"abcdefghijk").decode()
    assert padded.endswith("=")
    assert secret_key(padded) == b"abcdefghijk"
