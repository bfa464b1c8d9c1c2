"""A schema change that takes away a column a transform needs stops that
destination -- nothing is sent unmasked -- while the others go on; after a
restart with fixed transforms the held events are delivered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.integration.support import (
    execute,
    make_config,
    read_jsonl,
    running_engine,
    slot_state,
    wait_for,
)
from walrelay.model import parse_lsn


def destinations(tmp_path: Path, masked_column: str) -> list[dict[str, Any]]:
    return [
        {"name": "plain", "sink": {"type": "file", "path": str(tmp_path / "plain.jsonl")}},
        {
            "name": "masked",
            "sink": {"type": "file", "path": str(tmp_path / "masked.jsonl")},
            "transforms": [{"mask": {"tables": ["t"], "columns": [masked_column]}}],
        },
    ]


async def test_a_renamed_masked_column_stops_only_that_destination(db: str, tmp_path: Path) -> None:
    execute(db, "create table t (id int primary key, ssn text)")
    config = make_config(db, ["public.t"], destinations(tmp_path, "ssn"))
    async with running_engine(config) as engine:
        execute(db, "insert into t values (1, 'secret-1')")
        await wait_for(lambda: len(read_jsonl(tmp_path / "masked.jsonl")) == 1, what="row 1")
        assert read_jsonl(tmp_path / "masked.jsonl")[0]["record"]["ssn"] is None
        execute(db, "alter table t rename column ssn to social")
        execute(db, "insert into t values (2, 'secret-2')")
        await wait_for(lambda: len(read_jsonl(tmp_path / "plain.jsonl")) == 2, what="plain row 2")
        router = engine.router
        assert router is not None
        await wait_for(lambda: "masked" in router.halted, what="masked stopped")
        assert "needs column ssn of public.t" in router.halted["masked"]
        assert len(read_jsonl(tmp_path / "masked.jsonl")) == 1
        execute(db, "insert into t values (3, 'secret-3')")
        await wait_for(lambda: len(read_jsonl(tmp_path / "plain.jsonl")) == 3, what="plain row 3")
    assert "secret" not in (tmp_path / "masked.jsonl").read_text()
    row2 = parse_lsn(read_jsonl(tmp_path / "plain.jsonl")[1]["commit_lsn"])
    assert slot_state(db, "walrelay")["confirmed"] < row2  # the slot waits for the held rows

    fixed = make_config(db, ["public.t"], destinations(tmp_path, "social"))
    async with running_engine(fixed):
        await wait_for(
            lambda: len(read_jsonl(tmp_path / "masked.jsonl")) == 3, what="the held rows"
        )
    masked = read_jsonl(tmp_path / "masked.jsonl")
    assert [e["record"]["id"] for e in masked] == [1, 2, 3]
    assert [e["record"]["social"] for e in masked[1:]] == [None, None]
    assert "secret" not in (tmp_path / "masked.jsonl").read_text()
    assert len(read_jsonl(tmp_path / "plain.jsonl")) == 3  # the replay was not written twice
