"""Debezium records -> events (worker.kafka.format: debezium).

The fixtures are what real Debezium 3.6.1 (PostgreSQL connector, pgoutput)
emitted for tests/data/debezium/{setup,snapshot,stream}.sql through
JsonConverter: ``golden.jsonl`` with ``schemas.enable=false``,
``golden-schemas.jsonl`` with ``schemas.enable=true``
(scripts/debezium-golden/run.py [--schemas]).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from walrelay.errors import ConfigError
from walrelay.format_config import DebeziumOptions
from walrelay.model import Event, format_event_id
from walrelay.pipeline.formats.debezium_schema import column_schema
from walrelay.pipeline.formats.debezium_values import value_converter as encoder
from walrelay.worker.config import parse_worker_config
from walrelay.worker.debezium_records import derive_id, event_from_debezium
from walrelay.worker.debezium_values import UNAVAILABLE, row_converter
from walrelay.worker.debezium_values import value_converter as decoder
from walrelay.worker.records import NotAnEnvelope

DATA = Path(__file__).resolve().parent.parent / "data" / "debezium"


def _records(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines()]


def _decode(record: dict[str, Any], *, partition: int = 0, offset: int = 0) -> Event | None:
    value = None if record["value"] is None else json.dumps(record["value"]).encode()
    key = None if record["key"] is None else json.dumps(record["key"]).encode()
    return event_from_debezium(value, key, None, partition=partition, offset=offset)


def _all(name: str) -> list[tuple[dict[str, Any], Event | None]]:
    return [(r, _decode(r, offset=i)) for i, r in enumerate(_records(name))]


def _body(event: Event | None) -> dict[str, Any]:
    assert event is not None
    body: dict[str, Any] = orjson.loads(event.body)
    return body


@pytest.mark.parametrize("name", ["golden.jsonl", "golden-schemas.jsonl"])
def test_every_debezium_record_decodes_with_unique_ids_in_topic_order(name: str) -> None:
    decoded = _all(name)
    tombstones = [r for r, e in decoded if e is None]
    assert tombstones and all(r["value"] is None for r in tombstones)
    events = [e for _, e in decoded if e is not None]
    assert {e.op for e in events} == {"read", "insert", "update", "delete", "truncate", "message"}
    ids = [(e.commit_lsn, e.seq) for e in events]
    assert len(set(ids)) == len(ids)
    # Written in commit order, so ids grow: per partition and per key.
    assert ids == sorted(ids)
    for e in events:
        assert 0 <= e.seq < 2**31 and 0 <= e.commit_lsn < 2**63  # parking stores int4/int8
        assert _body(e)["id"] == e.id


@pytest.mark.parametrize("name", ["golden.jsonl", "golden-schemas.jsonl"])
def test_envelope_fields_keys_and_ops(name: str) -> None:
    decoded = [e for _, e in _all(name) if e is not None]
    first = decoded[0]
    assert first.op == "read" and first.table == "public.plain"
    assert first.keys == ('public.plain\x1f{"id":1}',)
    assert _body(first)["record"] == {"id": 1, "v": "snap one", "n": 1}
    assert first.key_json == b'{"id":1}'
    composite = decoded[2]
    assert composite.keys == ('public.two_keys\x1f{"a":1,"b":"x"}',)
    # The key-changing UPDATE of plain (id 2 -> 10): d of the old key, c of the new,
    # at one LSN; the c sorts after.
    delete = next(e for e in decoded if e.op == "delete" and e.keys[0].endswith('{"id":2}'))
    create = next(e for e in decoded if e.op == "insert" and e.keys[0].endswith('{"id":10}'))
    assert (delete.commit_lsn, delete.seq) < (create.commit_lsn, create.seq)
    assert _body(delete)["old"]["id"] == 2 and _body(delete)["record"] is None
    truncate = next(e for e in decoded if e.op == "truncate")
    assert truncate.keys == () and truncate.table == "public.plain"
    assert _body(truncate)["tables"] == ["public.plain"]
    messages = [e for e in decoded if e.op == "message"]
    assert [_body(m)["content"] for m in messages] == [
        "transactional message",
        "non-transactional message",
    ]
    assert all(m.keys == ("message\x1fgolden",) for m in messages)
    # An UPDATE that did not touch a TOASTed column: left out, listed as unchanged.
    toasted = next(e for e in decoded if e.op == "update" and e.table == "public.toasted")
    assert _body(toasted)["unchanged"] == ["big"]
    assert "big" not in _body(toasted)["record"]
    # The commit time and xid come from source.
    insert = next(e for e in decoded if e.op == "insert")
    assert insert.xid == 728 and _body(insert)["xid"] == 728
    assert insert.committed_at.year >= 2024


def test_values_are_converted_by_their_schema() -> None:
    events = [e for _, e in _all("golden-schemas.jsonl") if e is not None]
    row = _body(events[3])["record"]
    assert row == {
        **row,
        "c_bit10": "1010000011",
        "c_int8": 9223372036854775807,
        "c_num": "123456789.125",
        "c_numv": "12345678901234567890.0000000001",
        "c_money": "1234.56",
        "c_bytea": "\\x00ff10",
        "c_date": "2024-02-29",
        "c_time": "13:14:15.123456",
        "c_time3": "13:14:15.123000",
        "c_timetz": "07:44:15.500000+00:00",
        "c_ts": "2024-01-02T03:04:05.123456",
        "c_ts3": "2024-01-02T03:04:05.123000",
        "c_tstz": "2024-01-02T01:04:05.123456+00:00",
        "c_interval": "PT273906.5S",
        "c_json": {"a": 1, "b": [True, None, 2.5]},
        "c_jsonb": {"a": 1, "b": [True, None]},
        "c_point": "(1.5,-2)",
        "c_text_arr": ["a b", "c"],
        "c_num_arr": ["1.50", None],
        "c_bytea_arr": ["\\x0102"],
        "c_date_arr": ["2024-01-01"],
        "c_ts_arr": ["2024-01-02T03:04:05.500000"],
        "c_tstz_arr": ["2024-01-02T03:04:05.500000+00:00"],
        "c_tstz3": "2024-01-02T03:04:05.123000+00:00",
        "c_time0": "13:14:15",
        "c_ts0": "2024-01-02T03:04:05",
        "c_uuid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "c_enum": "happy",
    }
    negative = _body(events[5])["record"]
    assert negative["c_num"] == "-0.500" and negative["c_numv"] == "-7"
    assert negative["c_date"] == "1969-12-31"
    assert negative["c_ts"] == "1969-12-31T23:59:59.999999"
    assert negative["c_interval"] == "PT-259201S"


def test_without_a_schema_values_pass_as_they_are() -> None:
    events = [e for _, e in _all("golden.jsonl") if e is not None]
    row = _body(events[3])["record"]
    assert row["c_num"] == "HL6ZGoU=" and row["c_date"] == 19782
    assert row["c_jsonb"] == '{"a": 1, "b": [true, null]}'
    assert row["c_text_arr"] == ["a b", "c"]


def test_a_replayed_record_gets_the_same_id_and_snapshot_rows_differ_by_partition() -> None:
    records = _records("golden-schemas.jsonl")
    for offset, record in enumerate(records):
        if record["value"] is None:
            continue
        once = _decode(record, partition=3, offset=offset)
        again = _decode(record, partition=3, offset=offset)
        assert once is not None and again is not None and once.id == again.id
        assert once.body == again.body
    snapshot_row = records[0]
    ids = {_decode(snapshot_row, partition=p, offset=0).id for p in range(12)}  # type: ignore[union-attr]
    assert len(ids) == 12
    # A streamed change's id does not depend on where it was read.
    change = records[3]
    assert _decode(change, partition=0, offset=3).id == _decode(change, partition=5, offset=99).id  # type: ignore[union-attr]


def test_walrelay_id_header_wins() -> None:
    record = _records("golden.jsonl")[3]
    ident = format_event_id(0x16B3748, 4)
    value = json.dumps(record["value"]).encode()
    event = event_from_debezium(value, b'{"id":1}', [("id", ident.encode())], partition=0, offset=0)
    assert event is not None and event.id == ident
    # Not walrelay's form: derived as for any Debezium record.
    other = event_from_debezium(value, b'{"id":1}', [("id", b"abc/1")], partition=0, offset=0)
    assert other is not None and other.id != ident


def test_a_truncate_from_walrelay_names_its_topics_table() -> None:
    record = next(r for r in _records("golden.jsonl") if r["value"] and r["value"]["op"] == "t")
    value = json.dumps(record["value"]).encode()
    headers = [("id", format_event_id(0x100, 0).encode()), ("table", b"public.other")]
    event = event_from_debezium(value, None, headers, partition=0, offset=0)
    assert event is not None and event.table == "public.other"
    assert _body(event)["tables"] == ["public.other"]


def test_derive_id_regions() -> None:
    seq = '["1000","1040"]'
    near = derive_id("u", {"lsn": 1040, "sequence": seq}, 0, 0, "public.t")
    create = derive_id("c", {"lsn": 1040, "sequence": seq}, 0, 0, "public.t")
    assert near[0] == 1000 and create == (1000, near[1] + 1)
    # A change before the last commit (its transaction began earlier) still sorts inside it.
    early = derive_id("u", {"lsn": 900, "sequence": seq}, 0, 0, "public.t")
    assert early[0] == 1000 and early[1] < near[1]
    far = derive_id("u", {"lsn": 1000 + 2**29, "sequence": seq}, 0, 0, "public.t")
    assert far == (1000 + 2**29, 3 * 2**29)
    no_sequence = derive_id("d", {"lsn": 5000}, 0, 0, "public.t")
    assert no_sequence[0] == 5000
    truncates = {derive_id("t", {"lsn": 7000, "sequence": seq}, 0, 0, t) for t in ("a.x", "a.y")}
    assert len(truncates) == 2
    for _, s in truncates:
        assert 3 * 2**29 + 2 <= s < 2**31
    assert derive_id("r", {"lsn": 70000}, 2, 2**29 + 5, "a.x") == (69998, 5)
    # Snapshot rows of two topics at the same partition and offset differ.
    assert derive_id("r", {"lsn": 70000}, 2, 5, "a.x", 1) == (70000 - 1024 - 2, 5)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (b"not json", "the value is not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"before": null, "after": {"id": 1}}', "no op field"),
        (b'{"op": "x", "source": {}}', "unknown op 'x'"),
        (b'{"op": "c", "after": {"id": 1}}', "no source block"),
        (b'{"op": "c", "source": {"schema": "public", "table": "t"}}', "no source.lsn"),
        (b'{"op": "c", "source": {"lsn": 5}}', "no source.schema/source.table"),
    ],
)
def test_records_that_are_no_debezium_event_say_why(value: bytes, why: str) -> None:
    with pytest.raises(NotAnEnvelope, match=why) as info:
        event_from_debezium(value, None, None, partition=0, offset=0)
    assert "\n" not in str(info.value)


def test_tombstones_are_no_events() -> None:
    assert event_from_debezium(None, b'{"id":1}', None, partition=0, offset=0) is None
    wrapped = b'{"schema": null, "payload": null}'
    assert event_from_debezium(wrapped, b'{"id":1}', None, partition=0, offset=0) is None


def test_config_takes_the_debezium_format() -> None:
    base = {
        "worker": {"kafka": {"bootstrap": "k:9092", "group": "g", "topics": ["t"]}},
        "destinations": [{"name": "d", "sink": {"type": "stdout"}}],
        "state": {"dsn": "postgresql://u@h/db"},
    }
    base["worker"]["kafka"]["format"] = "debezium"  # type: ignore[index]
    assert parse_worker_config(base).worker.kafka.format == "debezium"
    base["worker"]["kafka"]["format"] = "avro"  # type: ignore[index]
    with pytest.raises(ConfigError, match="format"):
        parse_worker_config(base)


# (type oid, typmod, envelope value, what comes back when the text differs)
_ROUND_TRIP: list[tuple[int, int, Any, Any]] = [
    (1700, (12 << 16 | 3) + 4, "-123456789.125", None),
    (1700, -1, "12345678901234567890.0000000001", None),
    (1700, -1, "-0.5", None),
    (1700, (6 << 16 | 2) + 4, "0.00", None),
    (1184, -1, "2024-01-02T03:04:05.123456+00:00", None),
    (1184, 3, "1969-12-31T23:59:59.999000+00:00", None),
    (1184, -1, "2024-01-02T03:04:05+00:00", None),
    (1082, -1, "2024-02-29", None),
    (1082, -1, "1900-01-01", None),
    (1114, -1, "1969-12-31T23:59:59.999999", None),
    (1114, 3, "2024-01-02T03:04:05.123000", None),
    (1083, -1, "13:14:15.123456", None),
    (1083, 3, "13:14:15.123000", None),
    (17, -1, "\\x00ff10", None),
    (17, -1, "\\x", None),
    (3802, -1, {"big": 12345678901234567890123, "x": [1.5, None]}, None),
    (1009, -1, ["a b", None, 'c"d'], None),
    (1231, (6 << 16 | 2) + 4, ["1.50", None], None),
    (1186, -1, "P3DT4H5M6.5S", "PT273906.5S"),
    (1560, 10, "1010000011", None),
    (600, -1, "(1.5,-2)", None),
    (790, -1, "$1,234.56", "1234.56"),
    (2950, -1, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", None),
    (20, -1, -9223372036854775808, None),
]


@pytest.mark.parametrize(("oid", "typmod", "value", "back"), _ROUND_TRIP)
def test_walrelays_debezium_values_come_back_by_their_schema(
    oid: int, typmod: int, value: Any, back: Any
) -> None:
    """format: debezium with schemas.enable writes a value and its schema; the
    worker reads the value back as walrelay's envelope had it."""
    options = DebeziumOptions()
    written = encoder(oid, typmod, options)(value)
    schema = column_schema(oid, typmod, options)
    wire = orjson.loads(orjson.dumps({"v": written}))["v"]  # through JSON, as on Kafka
    assert decoder(schema)(wire) == (value if back is None else back)


def test_debeziums_toast_placeholders_become_unchanged_columns() -> None:
    struct = {
        "fields": [
            {"type": "bytes", "field": "b"},
            {"type": "array", "items": {"type": "string"}, "field": "tags"},
            {"type": "array", "items": {"type": "int32"}, "field": "ints"},
            {"type": "string", "field": "t"},
            {"type": "int32", "field": "id"},
        ]
    }
    row = {
        "b": base64.b64encode(UNAVAILABLE.encode()).decode(),
        "tags": [UNAVAILABLE],
        "ints": list(UNAVAILABLE.encode()),
        "t": UNAVAILABLE,
        "id": 1,
    }
    assert row_converter(struct)(row) == ({"id": 1}, ["b", "tags", "ints", "t"])
    assert row_converter(None)({"t": UNAVAILABLE, "id": 1}) == ({"id": 1}, ["t"])
