"""walrelay.exact_json: numbers a double cannot hold come back as written;
everything else is orjson's own reading (the fast path)."""

from __future__ import annotations

import json

import cel
import orjson
import pytest

from walrelay import exact_json
from walrelay.exact_json import JsonNumber
from walrelay.pipeline.envelope import encode_json

# What PostgreSQL prints for jsonb '{"big": 12345678901234567890123, ...}':
# jsonb keeps numbers as numeric (1e400 is printed as its 401 digits), spaced.
JSONB_TEXT = (
    '{"big": 12345678901234567890123, "dec": 0.1000000000000000000000001, '
    '"exp": 1' + "0" * 400 + ', "tiny": 0.' + "0" * 399 + '1, "scaled": 1.50, '
    '"neg": -9223372036854775809, "u64": 18446744073709551615, "f": 2.5}'
)


@pytest.mark.parametrize(
    "token",
    [
        "12345678901234567890123",
        "-98765432109876543210",
        "18446744073709551616",
        "0.1000000000000000000000001",
        "1e400",
        "1E+400",
        "1e-400",
        "1.50",
        "1.0E+2",
        "123456789.123456789",
    ],
)
def test_a_number_a_double_would_change_is_written_back_as_it_was(token: str) -> None:
    body = f'{{"record":{{"doc":{{"n":{token},"list":[1, {token}]}}}}}}'.encode()
    value = exact_json.loads(body)
    assert exact_json.dumps(value) == body.replace(b", ", b",")
    assert encode_json(value) == body.replace(b", ", b",")  # the envelope's encoder too


def test_jsonb_text_spliced_in_an_envelope_keeps_every_digit() -> None:
    body = ('{"id":"1","record":{"id":1,"doc":' + JSONB_TEXT + "}}").encode()
    value = exact_json.loads(body)
    doc = value["record"]["doc"]
    assert doc["big"] == 12345678901234567890123 and type(doc["big"]) is int
    assert doc["dec"] == JsonNumber("0.1000000000000000000000001")
    assert doc["exp"] == 10**400 and doc["u64"] == 2**64 - 1
    assert type(doc["f"]) is float  # a double holds 2.5 as written
    assert isinstance(doc["scaled"], JsonNumber) and doc["scaled"].text == "1.50"
    # Written back compact: the same tokens, without jsonb's spaces.
    assert exact_json.dumps(value) == body.replace(b": ", b":").replace(b", ", b",")


def test_the_fast_path_is_orjsons_reading() -> None:
    typical = (
        b'{"id":"0000000000001000/0000000000","op":"insert","table":"public.t","key":{"id":1},'
        b'"record":{"id":1,"f":0.30000000000000004,"ts":"2024-01-02T03:04:15.123+00:00",'
        b'"doc":{"a": [1.5, 2], "s": "x:1.25,"}},"old":null}'
    )
    value = exact_json.loads(typical)
    assert value == orjson.loads(typical)
    assert type(value["record"]["f"]) is float and type(value["record"]["doc"]["a"][0]) is float


def test_not_json_raises_orjsons_error() -> None:
    for bad in (b"nope", b'{"a": NaN}', b'{"a": Infinity}', b"{"):
        with pytest.raises(orjson.JSONDecodeError):
            exact_json.loads(bad)


def test_cel_compares_big_numbers_as_doubles() -> None:
    doc = exact_json.loads(JSONB_TEXT.encode())
    program = cel.compile("doc.big > 1.0e22 && doc.dec < 0.2 && doc.scaled == 1.5")
    assert program.execute({"doc": {k: doc[k] for k in ("big", "dec", "scaled")}}) is True


def test_a_key_given_twice_is_kept_with_every_pair_in_order() -> None:
    text = b'{"r":{"a":1,"b":[{"c":1,"c":1.50}],"a":"x"},"n":true}'
    value = exact_json.loads(text)
    inner = value["r"]
    assert isinstance(inner, exact_json.JsonObject)
    assert inner["a"] == "x"  # as a dict: the last value, as ::jsonb keeps
    assert [k for k, _ in inner.items()] == ["a", "b", "a"]
    assert exact_json.dumps(value) == text
    assert encode_json(value) == text
    twice = exact_json.loads(b'{"a":1,"a":2}')
    assert json.dumps(twice, separators=(",", ":")) == '{"a":1,"a":2}'  # the Debezium format
    # Not only compact text: jsonb-spaced and json-with-whitespace too.
    spaced = b'{"a": 1, "a": 2}'
    assert exact_json.dumps(exact_json.loads(spaced)) == b'{"a":1,"a":2}'


def test_an_object_without_a_repeated_key_is_a_plain_dict() -> None:
    value = exact_json.loads(b'{"a": 1.50, "b": {"c": 2}}')
    assert type(value) is dict and type(value["b"]) is dict
