"""Conflict policies: who wins, ties, custom functions (pure, no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from walrelay.errors import ConfigError
from walrelay.sync.conflicts import Conflict, Version, load_resolver

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def conflict(
    local_at: datetime | None, remote_at: datetime, local_prio: int = 2, remote_prio: int = 1
) -> Conflict:
    return Conflict(
        "public.t",
        "update_origin_differs",
        {"id": "1"},
        Version({"id": "1", "v": "local"}, "us", local_at, local_prio),
        Version({"id": "1", "v": "remote"}, "eu", remote_at, remote_prio),
    )


def test_last_write_wins_takes_the_newer_commit() -> None:
    lww = load_resolver("last_write_wins")
    assert lww(conflict(T0, T0 + timedelta(microseconds=1))).apply_remote
    assert not lww(conflict(T0 + timedelta(microseconds=1), T0)).apply_remote


def test_last_write_wins_breaks_a_tie_by_priority_the_same_way_on_both_sides() -> None:
    lww = load_resolver("last_write_wins")
    # On us: remote eu (priority 1) against local us (2): eu wins.
    assert lww(conflict(T0, T0, local_prio=2, remote_prio=1)).apply_remote
    # On eu: remote us (2) against local eu (1): eu keeps its own. Never a swap.
    assert not lww(conflict(T0, T0, local_prio=1, remote_prio=2)).apply_remote


def test_last_write_wins_applies_when_nothing_is_known_locally() -> None:
    c = Conflict(
        "public.t",
        "update_missing",
        {"id": "1"},
        Version(None, None, None, 1 << 30),
        Version({"id": "1"}, "eu", T0, 1),
    )
    assert load_resolver("last_write_wins")(c).apply_remote


def test_priority_ignores_time_and_falls_back_to_time_on_equal_priority() -> None:
    prio = load_resolver("priority")
    assert prio(conflict(T0 + timedelta(hours=1), T0, local_prio=2, remote_prio=1)).apply_remote
    assert not prio(conflict(T0, T0 + timedelta(hours=1), local_prio=1, remote_prio=2)).apply_remote
    assert prio(conflict(T0, T0 + timedelta(seconds=1), local_prio=3, remote_prio=3)).apply_remote


def test_keep_local_and_apply_remote() -> None:
    c = conflict(T0, T0 + timedelta(seconds=1))
    assert not load_resolver("keep_local")(c).apply_remote
    assert load_resolver("apply_remote")(c).apply_remote
    assert load_resolver("keep_local")(c).label == "keep_local"


def test_a_python_policy_returns_the_row_to_keep_or_none_to_delete() -> None:
    merge = load_resolver("python:tests.integration.sync_policies:add_up")
    c = Conflict(
        "public.t",
        "insert_exists",
        {"id": "1"},
        Version({"id": "1", "v": "a", "n": "1"}, "a", T0, 1),
        Version({"id": "1", "v": "b", "n": "2"}, "b", T0, 2),
    )
    d = merge(c)
    assert d.custom and d.row == {"id": "1", "v": "sum", "n": 3} and d.label == "custom_row"


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("python:no_such_module_xyz:f", "cannot import module no_such_module_xyz"),
        ("python:tests.integration.sync_policies:nope", "has no function nope"),
    ],
)
def test_a_bad_python_policy_fails_at_start_up(policy: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        load_resolver(policy)
    assert e.value.exit_code == 2


def test_sequences_overlap_unless_starts_and_steps_keep_them_apart() -> None:
    from walrelay.sync.catalog import SequenceRange, overlapping_sequences

    def seq(node: str, start: int, inc: int, lo: int = 1, hi: int = 2**63 - 1) -> SequenceRange:
        return SequenceRange(node, "public.t", "id", f"s_{node}", start, inc, lo, hi)

    assert len(overlapping_sequences([seq("a", 1, 1), seq("b", 1, 1)])) == 1
    assert overlapping_sequences([seq("a", 1, 2), seq("b", 2, 2)]) == []
    assert len(overlapping_sequences([seq("a", 1, 2), seq("b", 3, 2)])) == 1
    assert overlapping_sequences([seq("a", 1, 1, 1, 1000), seq("b", 1001, 1, 1001, 2000)]) == []
    assert overlapping_sequences([seq("a", 1, 3), seq("b", 2, 3), seq("c", 3, 3)]) == []
