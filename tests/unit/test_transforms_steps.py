"""Each transform step on the envelope, and what must never leak."""

from __future__ import annotations

import hmac
from decimal import Decimal
from hashlib import sha256

import orjson
import pytest

from tests.unit import transform_hooks
from tests.unit.transforms_support import BEGIN, chain, env, event
from walrelay.errors import ConfigError
from walrelay.model import Change, Column, Event, Relation
from walrelay.pipeline.envelope import KEY_SEPARATOR, EnvelopeBuilder
from walrelay.source.types import TypeRegistry


@pytest.mark.parametrize("op", ["insert", "update", "delete", "read"])
def test_exclude_removes_the_column_from_record_old_and_key(op: str) -> None:
    out = env(
        chain({"exclude": {"tables": ["customers"], "columns": ["ssn", "id"]}}).apply(event(op))
    )
    for part in ("record", "old", "key"):
        if out[part] is not None:
            assert "ssn" not in out[part] and "id" not in out[part], part
    assert b"123-45-6789" not in orjson.dumps(out)


def test_include_keeps_only_the_columns() -> None:
    out = env(chain({"include": ["id", "region"]}).apply(event("update")))
    assert out["record"] == {"id": 1, "region": "eu"}
    assert out["old"] == {"id": 1, "region": "eu"}


def test_rename_renames_everywhere_and_keeps_order() -> None:
    out = env(
        chain({"rename": {"columns": {"email": "mail", "id": "customer"}}}).apply(event("update"))
    )
    assert list(out["record"]) == ["customer", "mail", "ssn", "region", "amount"]
    assert out["old"]["mail"] == "ann@example.com"
    assert out["key"] == {"customer": 1}


@pytest.mark.parametrize("value", [None, "****"])
def test_mask_writes_a_fixed_value(value: str | None) -> None:
    out = env(chain({"mask": {"columns": ["ssn"], "with": value}}).apply(event("delete")))
    assert out["old"]["ssn"] == value
    assert out["record"] is None


def test_hash_is_hmac_sha256_hex_with_the_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PII_KEY", "s3cret")
    c = chain({"hash": {"columns": ["email"], "key_env": "PII_KEY"}})
    out = env(c.apply(event("update")))
    expected = hmac.new(b"s3cret", b"ann@example.com", sha256).hexdigest()
    assert out["record"]["email"] == expected == out["old"]["email"]
    assert "s3cret" not in repr(c.steps[0])


def test_hash_key_from_a_file_and_a_missing_key_is_a_config_error(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "key"
    key.write_text("filekey\n")
    out = env(chain({"hash": {"columns": ["email"], "key_file": str(key)}}).apply(event()))
    assert out["record"]["email"] == hmac.new(b"filekey", b"ann@example.com", sha256).hexdigest()
    monkeypatch.delenv("NOPE", raising=False)
    with pytest.raises(ConfigError, match=r"step 1 \(hash\): environment variable NOPE"):
        chain({"hash": {"columns": ["email"], "key_env": "NOPE"}})


def test_cast_numeric_to_number_and_timestamp_to_epoch_ms() -> None:
    c = chain(
        {"cast": {"columns": {"amount": "number", "id": "string"}}},
        {"set": {"meta": {"at": "committed_at"}}},
        {"cast": {"columns": {"at": "epoch_ms"}}},
    )
    out = env(c.apply(event()))
    assert out["record"]["amount"] == 12.5
    assert out["record"]["id"] == "1"
    assert out["record"]["at"] == 1704153600000  # 2024-01-02T00:00:00Z


def test_cast_failure_fails_the_event_naming_the_column() -> None:
    out = chain({"cast": {"columns": {"email": "number"}}}).apply(event())
    assert isinstance(out, Event) and out.failure is not None
    assert "column email of public.customers: cannot cast" in out.failure


def test_set_adds_constants_and_metadata() -> None:
    c = chain(
        {"set": {"fields": {"source": "billing"}, "meta": {"t": "table", "o": "op", "l": "lsn"}}}
    )
    out = env(c.apply(event()))
    assert out["record"]["source"] == "billing"
    assert (out["record"]["t"], out["record"]["o"], out["record"]["l"]) == (
        "public.customers",
        "insert",
        "0/1000",
    )
    deleted = env(c.apply(event("delete")))
    assert deleted["old"]["source"] == "billing"


def test_flatten_sends_the_row_and_rewrites_deletes() -> None:
    c = chain({"exclude": ["ssn"]}, {"flatten": {"fields": ["op", "table"]}})
    assert env(c.apply(event())) == {
        "id": 1,
        "email": "ann@example.com",
        "region": "eu",
        "amount": "12.50",
        "__op": "insert",
        "__table": "public.customers",
        "__deleted": False,
    }
    assert env(c.apply(event("delete")))["__deleted"] is True
    assert chain({"flatten": {"deletes": "drop"}}).apply(event("delete")) is None


def test_filter_cel_keeps_and_drops_and_counts() -> None:
    c = chain({"filter": "op != 'delete' && record.region == 'eu'"})
    assert c.apply(event(region="eu")) is not None
    assert c.apply(event(region="us")) is None
    assert c.apply(event("delete")) is None
    step = c.steps[0]
    assert (step.events_in, step.dropped, step.errors) == (3, 2, 0)


def test_filter_sees_changed_columns() -> None:
    c = chain({"filter": "changed.exists(c, c == 'email')"})
    assert c.apply(event("update", email="ann@example.com")) is None  # same as old
    assert c.apply(event("update", email="new@example.com")) is not None


@pytest.mark.parametrize(
    ("expr", "message"),
    [("record.region ==", "not a valid CEL expression"), ("nope == 1", "unknown variable")],
)
def test_filter_errors_are_config_errors_naming_the_step(expr: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"transforms step 2 .filter.: filter .*{message}"):
        chain({"exclude": ["ssn"]}, {"filter": expr})


def test_filter_failing_on_an_event_fails_it() -> None:
    out = chain({"filter": "record.nope == 1"}).apply(event())
    assert isinstance(out, Event) and out.failure is not None and "filter" in out.failure


def test_route_sets_the_topic_and_the_message_key() -> None:
    c = chain({"key": {"columns": ["region"]}}, {"route": {"to": "crm.{table}.{record.region}"}})
    out = c.apply(event())
    assert isinstance(out, Event) and out.route is not None
    assert out.route.topic == "crm.public.customers.eu"
    assert out.route.key == '{"region":"eu"}'
    assert out.route.value == out.body


def test_key_changes_the_grouping_key_and_key_json() -> None:
    c = chain({"key": ["region"]})
    out = c.apply(event(region="eu"))
    assert isinstance(out, Event)
    assert out.key_json == b'{"region":"eu"}'
    assert out.keys == ("public.customers" + KEY_SEPARATOR + '{"region":"eu"}',)
    moved = c.apply(event("update", region="us"))  # old row is in "eu"
    assert isinstance(moved, Event) and len(moved.keys) == 2


def test_a_null_key_column_fails_the_event_naming_the_row() -> None:
    out = chain({"key": ["region"]}).apply(event(i=42, region=""))
    assert isinstance(out, Event) and out.failure is None  # empty string is a value
    c = chain({"mask": {"columns": ["region"]}}, {"key": ["region"]})
    failed = c.apply(event(i=42))
    assert isinstance(failed, Event) and failed.failure is not None
    assert "key column region is null" in failed.failure and '{"id":42}' in failed.failure


def test_scoping_by_table_glob_and_other_tables_pass_untouched() -> None:
    c = chain({"exclude": {"tables": ["public.cust*"], "columns": ["ssn"]}})
    assert "ssn" not in env(c.apply(event()))["record"]
    c2 = chain({"exclude": {"tables": ["orders"], "columns": ["status"]}})
    e = event()
    assert c2.apply(e) is e  # no step for this table: not decoded, the same object


def test_unchanged_toast_columns_follow_exclude_and_rename() -> None:
    from tests.unit.transforms_support import _BUILDER, BEGIN, CUSTOMERS, row
    from walrelay.model import UNCHANGED_TOAST, Change, RawTuple

    new: RawTuple = (*row(1)[:2], UNCHANGED_TOAST, *row(1)[3:])
    e = _BUILDER.build(BEGIN, Change(op="update", relation=CUSTOMERS, new=new), 0)
    assert orjson.loads(e.body)["unchanged"] == ["ssn"]
    assert env(chain({"exclude": ["ssn"]}).apply(e))["unchanged"] == []
    assert env(chain({"rename": {"columns": {"ssn": "tax_id"}}}).apply(e))["unchanged"] == [
        "tax_id"
    ]


def test_a_hashed_key_column_leaves_no_raw_value_in_the_grouping_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PII_KEY", "k")
    c = chain({"hash": {"columns": ["id"], "key_env": "PII_KEY"}})
    out = c.apply(event(i=12345))
    assert isinstance(out, Event)
    assert all("12345" not in k for k in out.keys)
    assert out.keys == (
        "public.customers" + KEY_SEPARATOR + orjson.dumps(env(out)["key"]).decode(),
    )


# A jsonb column as PostgreSQL prints it: a >64-bit integer, a decimal of more
# than 17 significant digits, 1e400 (jsonb prints its 401 digits), a trailing zero.
DOCS = Relation(
    oid=2,
    schema="public",
    name="docs",
    replica_identity="f",
    columns=(
        Column("id", 23, -1, True),
        Column("doc", 3802, -1, False),
        Column("raw", 114, -1, False),
        Column("amount", 1700, -1, False),
    ),
)
BIG_DOC = (
    '{"n": %d, "big": 12345678901234567890123, "dec": 0.1000000000000000000000001, '
    '"exp": 1' + "0" * 400 + ', "scaled": 1.50}'
)
BIG_RAW = '{"exp": 1e400, "dec": 0.1000000000000000000000001}'
BIG_AMOUNT = "12345678901234567890.123456789012345678901234567890"


def doc_event(n: int, op: str = "insert") -> Event:
    new = (b"1", (BIG_DOC % n).encode(), BIG_RAW.encode(), BIG_AMOUNT.encode())
    builder = EnvelopeBuilder(TypeRegistry())
    if op == "update":
        change = Change(op="update", relation=DOCS, new=new, old=new, old_kind="O")
    else:
        change = Change(op="insert", relation=DOCS, new=new)
    return builder.build(BEGIN, change, 0)


def test_json_numbers_keep_every_digit_through_filter_rename_set_and_cast() -> None:
    c = chain(
        {"filter": "record.doc.n == 7 && record.doc.big > 1.0e22 && record.doc.exp > 1.0e300"},
        {"rename": {"columns": {"doc": "document"}}},
        {"set": {"fields": {"source_system": "billing"}}},
        {"cast": {"columns": {"amount": "number"}}},
        catalog={"public.docs": ("id", "doc", "raw", "amount")},
    )
    assert c.apply(doc_event(8)) is None  # the filter read the json field
    # As the Router sets it: the table's columns say it has json values.
    c.relation = {"public.docs": DOCS}.get
    for op in ("insert", "update"):
        out = c.apply(doc_event(7, op))
        assert isinstance(out, Event) and out.failure is None
        body = out.body.decode()
        assert '"document":' + (BIG_DOC % 7).replace(": ", ":").replace(", ", ",") in body
        assert '"raw":' + BIG_RAW.replace(": ", ":").replace(", ", ",") in body  # 1e400 as written
        assert '"amount":' + BIG_AMOUNT + "," in body  # a JSON number with every digit
        assert '"source_system":"billing"' in body
        if op == "update":  # the old row's json keeps every digit too
            assert body.count('"big":12345678901234567890123,') == 2


def test_cast_to_number_keeps_digits_and_never_nulls_nan() -> None:
    c = chain({"cast": {"columns": {"amount": "number"}}})
    for text, token in (("12.50", b"12.50"), ("0.1", b"0.1"), ("NaN", b'"NaN"')):
        e = event()
        e.body = e.body.replace(b'"amount":"12.50"', b'"amount":"' + text.encode() + b'"')
        out = c.apply(e)
        assert isinstance(out, Event)
        assert b'"amount":' + token + b"}" in out.body


def test_a_python_hook_sees_exact_numbers_and_returns_them_intact() -> None:
    transform_hooks.SEEN.clear()
    c = chain(
        {"python": "tests.unit.transform_hooks:record_doc_types"},
        catalog={"public.docs": ("id", "doc", "raw", "amount")},
    )
    out = c.apply(doc_event(7))
    assert isinstance(out, Event) and out.failure is None
    # An int of any size; a Decimal (JsonNumber) where a double would lose digits.
    assert [("int", "JsonNumber", Decimal("1.000000000000000000000001"))] == transform_hooks.SEEN
    assert '"doc":' + (BIG_DOC % 7).replace(": ", ":").replace(", ", ",") in out.body.decode()
