"""The sync doctor's sequence finding and its fix (pure)."""

from __future__ import annotations

from walrelay.sync.catalog import SequenceRange
from walrelay.sync.config import parse_sync_config
from walrelay.sync.doctor import disjoint_restarts, sequence_findings

MAX = 2**63 - 1


def seq(node: str, last: int | None, *, identity: bool = False, inc: int = 1, start: int = 1):
    return SequenceRange(node, "public.t", "id", "t_id_seq", start, inc, 1, MAX, identity, last)


def settings(*nodes: str):
    return parse_sync_config(
        {
            "sync": {
                "name": "x",
                "nodes": {n: {"dsn": "postgresql://h/db"} for n in nodes},
                "tables": ["public.t"],
            }
        }
    )


def test_restarts_are_past_every_used_value_and_congruent_to_the_node() -> None:
    ranges = [seq("a", 10), seq("b", None), seq("c", 4)]
    assert disjoint_restarts(ranges, ["a", "b", "c"]) == {"a": 12, "b": 13, "c": 14}
    assert disjoint_restarts([seq("a", None), seq("b", None)], ["a", "b"]) == {"a": 2, "b": 3}


def test_an_identity_column_gets_alter_table_and_disjoint_ranges_no_finding() -> None:
    found = sequence_findings(settings("a", "b"), [seq("a", 3, identity=True), seq("b", 5)])
    assert len(found) == 1
    fix = found[0].fix or ""
    assert (
        "on node a: ALTER TABLE public.t ALTER COLUMN id SET INCREMENT BY 2 RESTART WITH 6" in fix
    )
    assert "on node b: ALTER SEQUENCE t_id_seq INCREMENT BY 2 START WITH 7 RESTART WITH 7" in fix
    disjoint = [seq("a", 3, inc=2, start=2), seq("b", 5, inc=2, start=1)]
    assert sequence_findings(settings("a", "b"), disjoint) == []
