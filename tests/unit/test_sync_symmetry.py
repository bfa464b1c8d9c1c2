"""Two nodes resolving the same conflict from both sides pick the same winner
(pure: the detection rule and the policies, no database)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from walrelay.sync.conflicts import (
    Conflict,
    Overwritten,
    Version,
    load_resolver,
    overrides_unseen,
)
from walrelay.sync.reader import replication_options

T0 = datetime(2030, 1, 1, tzinfo=UTC)
TIMES = (T0, T0 + timedelta(microseconds=1), T0 + timedelta(hours=1))


def winner(policy: str, local: Version, remote: Version) -> str | None:
    """The node whose version stays where ``local`` is held."""
    d = load_resolver(policy)(Conflict("public.t", "update_origin_differs", {}, local, remote))
    return remote.node if d.apply_remote else local.node


def versions() -> list[tuple[Version, Version]]:
    """Every pair of a node's and b node's versions: times before, equal and
    after, priorities lower, equal and higher, rows and deletes."""
    pairs = []
    for ta, tb, pa, pb, a_deleted in itertools.product(TIMES, TIMES, (1, 2), (1, 2), (0, 1)):
        a = Version(None if a_deleted else {"v": "a"}, "a", ta, pa)
        b = Version({"v": "b"}, "b", tb, pb)
        pairs.append((a, b))
    return pairs


@pytest.mark.parametrize("policy", ["last_write_wins", "priority"])
def test_both_sides_pick_the_same_winner(policy: str) -> None:
    for a, b in versions():
        on_a = winner(policy, local=a, remote=b)
        on_b = winner(policy, local=b, remote=a)
        assert on_a == on_b, (policy, a, b)


def test_last_write_wins_picks_the_newer_then_the_lower_priority_number() -> None:
    for a, b in versions():
        expected = (
            "a" if (a.committed_at, -a.priority, "a") > (b.committed_at, -b.priority, "b") else "b"
        )
        assert winner("last_write_wins", a, b) == expected


def test_priority_picks_the_lower_number_whatever_the_times() -> None:
    for a, b in versions():
        if a.priority != b.priority:
            assert winner("priority", a, b) == ("a" if a.priority < b.priority else "b")


@pytest.mark.parametrize(("policy", "kept"), [("keep_local", "local"), ("apply_remote", "remote")])
def test_keep_local_and_apply_remote_are_one_sided_on_purpose(policy: str, kept: str) -> None:
    # Documented: the two nodes end different (keep_local) or swapped (apply_remote).
    for a, b in versions():
        on_a, on_b = winner(policy, local=a, remote=b), winner(policy, local=b, remote=a)
        assert (on_a, on_b) == (("a", "b") if kept == "local" else ("b", "a"))


# -- detection: the same verdict both ways ------------------------------------

BASE = Overwritten("a", T0)  # the version both nodes had before


def test_concurrent_writes_conflict_on_both_nodes_whichever_is_newer() -> None:
    ta, tb = T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)
    a = Version({"v": "a"}, "a", ta, 1)  # older, a's
    b = Version({"v": "b"}, "b", tb, 2)  # newer, b's
    # On a, b's change replaced the base version, not a's: concurrent, though b's is newer.
    assert overrides_unseen(a, "b", tb, BASE)
    # On b, a's change replaced the base too.
    assert overrides_unseen(b, "a", ta, BASE)


def test_a_change_made_over_the_local_version_is_an_ordinary_update() -> None:
    ta = T0 + timedelta(seconds=1)
    a = Version({"v": "a"}, "a", ta, 1)
    # b wrote after it had applied a's version: even with b's clock behind a's.
    for b_time in (T0 + timedelta(seconds=2), T0):
        assert not overrides_unseen(a, "b", b_time, Overwritten("a", ta))


def test_without_a_note_the_newer_local_version_conflicts() -> None:
    local = Version({"v": "a"}, "a", T0 + timedelta(seconds=1), 1)
    assert overrides_unseen(local, "b", T0, None)
    assert overrides_unseen(local, "b", T0 + timedelta(seconds=1), None)  # a tie
    assert not overrides_unseen(local, "b", T0 + timedelta(seconds=2), None)


def test_the_source_own_version_or_an_unknown_one_never_conflicts() -> None:
    mine = Version({"v": "b"}, "b", T0 + timedelta(seconds=5), 2)
    assert not overrides_unseen(mine, "b", T0, BASE)
    unknown = Version({"v": "?"}, None, None, 1 << 30)
    assert not overrides_unseen(unknown, "b", T0, BASE)
    assert not overrides_unseen(None, "b", T0, BASE)


# -- what the reader asks the server for -----------------------------------------


def test_origin_none_is_asked_for_from_postgresql_16_only() -> None:
    pg15 = replication_options("pub", 150010)
    assert "origin" not in pg15  # 15 rejects the option: echoes are dropped by Origin message
    assert pg15 == {"proto_version": "1", "publication_names": "pub", "messages": "true"}
    for version in (160000, 160004, 170002, 180000):
        assert replication_options("pub", version)["origin"] == "none"
