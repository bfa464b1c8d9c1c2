"""Two walrelay processes (two slots, one publication) starting at once."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from walrelay.config import SourceConfig, parse_config
from walrelay.source import slot as slot_module
from walrelay.source.slot import prepare_source

from .support import wait_for


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


async def test_create_publication_waits_for_the_other_process_then_goes_on(db: str) -> None:
    # The other process's CREATE PUBLICATION is not yet committed when this
    # one's check runs (it sees none) and its own CREATE waits for the other's
    # transaction; on that commit the server answers UniqueViolation on the
    # catalog's index, not DuplicateObject: this one must look again and go on.
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("create table t (id int primary key)")
    with psycopg.connect(db) as other:
        other.execute("create publication shared for table t")
        task = asyncio.create_task(_prepare(db, "waiting_slot"))

        async def blocked_on_the_other() -> bool:
            async with await psycopg.AsyncConnection.connect(db, autocommit=True) as look:
                cur = await look.execute(
                    "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
                    " and query like 'CREATE PUBLICATION%%'"
                )
                row = await cur.fetchone()
            return row is not None and row[0] == 1

        await wait_for(blocked_on_the_other, what="CREATE PUBLICATION to wait on the other")
        other.commit()
    info = await task
    assert not info.publication_created  # the other one made it
    assert info.slot_created


async def test_two_slots_on_one_publication_start_together(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("create table t (id int primary key)")
    first, second = await asyncio.gather(_prepare(db, "slot_a"), _prepare(db, "slot_b"))
    assert first.slot_created and second.slot_created
    assert [first.publication_created, second.publication_created].count(True) <= 1
