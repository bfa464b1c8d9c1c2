"""Helpers of the transforms' unit tests: envelopes built by the real builder."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from walrelay.config import DestinationConfig
from walrelay.model import Begin, Change, Column, Event, Relation
from walrelay.pipeline.envelope import EnvelopeBuilder
from walrelay.pipeline.transforms import Catalog, TransformChain, build_chain
from walrelay.source.types import TypeRegistry

INT4, TEXT, NUMERIC, TIMESTAMPTZ = 23, 25, 1700, 1184
BEGIN = Begin(xid=7, commit_lsn=0x1000, committed_at=datetime(2024, 1, 2, tzinfo=UTC))
COLUMNS = ("id", "email", "ssn", "region", "amount")
CUSTOMERS = Relation(
    oid=1,
    schema="public",
    name="customers",
    replica_identity="f",
    columns=(
        Column("id", INT4, -1, True),
        Column("email", TEXT, -1, False),
        Column("ssn", TEXT, -1, False),
        Column("region", TEXT, -1, False),
        Column("amount", NUMERIC, -1, False),
    ),
)
CATALOG: Catalog = {"public.customers": COLUMNS, "public.orders": ("id", "status", "customer_id")}
_BUILDER = EnvelopeBuilder(TypeRegistry(), key_columns={"public.customers": ["id"]})


def row(i: int, email: str = "ann@example.com", region: str = "eu") -> tuple[bytes, ...]:
    return (str(i).encode(), email.encode(), b"123-45-6789", region.encode(), b"12.50")


def event(op: str = "insert", i: int = 1, seq: int = 0, **kw: Any) -> Event:
    new = row(i, **kw)
    if op == "insert":
        change = Change(op="insert", relation=CUSTOMERS, new=new)
    elif op == "read":
        change = Change(op="read", relation=CUSTOMERS, new=new)
    elif op == "update":  # REPLICA IDENTITY FULL: the whole old row
        change = Change(op="update", relation=CUSTOMERS, new=new, old=row(i), old_kind="O")
    else:
        change = Change(op="delete", relation=CUSTOMERS, old=new, old_kind="O")
    return _BUILDER.build(BEGIN, change, seq)


def chain(*steps: dict[str, Any], catalog: Catalog | None = CATALOG) -> TransformChain:
    dcfg = DestinationConfig.model_validate(
        {"name": "crm", "sink": {"type": "stdout"}, "transforms": list(steps)}
    )
    built = build_chain(dcfg, catalog)
    assert built is not None
    return built


def env(e: Event | list[Event] | None) -> dict[str, Any]:
    assert isinstance(e, Event)
    value = orjson.loads(e.body)
    assert isinstance(value, dict)
    return value
