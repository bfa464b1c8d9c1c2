"""Two walrelay processes (two slots, one publication) starting at once."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from walrelay.config import SourceConfig, parse_config
from walrelay.source import slot as slot_module
from walrelay.source.slot import prepare_source


def _source(db: str, slot: str) -> SourceConfig:
    config = parse_config(
        {
            "source": {"dsn": db, "tables": ["public.t"], "publication": "shared", "slot": slot},
            "destinations": [{"name": "out", "sink": {"type": "stdout"}}],
        },
        "(test)",
    )
    return config.source


async def _prepare(db: str, slot: str) -> slot_module.SourceInfo:
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        return await prepare_source(_source(db, slot), conn)


async def test_publication_created_meanwhile_by_another_process(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The other process creates the publication between this one's check and
    # its CREATE PUBLICATION: the server answers DuplicateObject, and this one
    # looks again and goes on (it used to exit: "publication already exists").
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("create table t (id int primary key)")
    checked = slot_module._check_publication

    async def check_then_lose_the_race(*args: object) -> list[str] | None:
        found = await checked(*args)  # type: ignore[arg-type]
        if found is None:
            with psycopg.connect(db, autocommit=True) as conn:
                conn.execute("create publication shared for table t")
        return found

    monkeypatch.setattr(slot_module, "_check_publication", check_then_lose_the_race)
    info = await _prepare(db, "late_slot")
    assert not info.publication_created  # the other one made it
    assert info.slot_created
    with psycopg.connect(db) as conn:
        tables = conn.execute(
            "select tablename from pg_publication_tables where pubname = 'shared'"
        ).fetchall()
    assert tables == [("t",)]


async def test_two_slots_on_one_publication_start_together(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("create table t (id int primary key)")
    first, second = await asyncio.gather(_prepare(db, "slot_a"), _prepare(db, "slot_b"))
    assert first.slot_created and second.slot_created
    assert [first.publication_created, second.publication_created].count(True) <= 1
