"""The history checker judges lost, duplicated, reordered, aborted, LSN backwards."""

from __future__ import annotations

from walrelay.testing.checker import Change, Delivery, check


def changes(*uids: tuple[str, int]) -> list[Change]:
    return [Change(uid=u, key=u[0], order=u[1]) for u in uids]


def seen(*items: tuple[str, int] | tuple[str, int, str]) -> list[Delivery]:
    out = []
    for item in items:
        key, order = item[0], item[1]
        out.append(
            Delivery(uid=(key, order), key=key, order=order, id=item[2] if len(item) > 2 else None)
        )
    return out


def test_clean_history() -> None:
    r = check(changes(("a", 1), ("a", 2), ("b", 1)), seen(("a", 1), ("b", 1), ("a", 2)))
    assert r.ok() and r.unique == 3 and r.duplicates == 0
    assert "OK" in r.summary()


def test_lost_duplicated_reordered() -> None:
    r = check(
        changes(("a", 1), ("a", 2), ("a", 3), ("b", 1)),
        seen(("a", 2), ("a", 1), ("a", 2), ("b", 1)),
    )
    assert r.lost == [("a", 3)]
    assert r.duplicated == {("a", 2): 1}
    assert r.reordered == [("a", ("a", 1), 2)]
    assert not r.ok()
    assert not r.ok(allow_duplicates=True)  # still lost and reordered
    assert set(r.to_json()) >= {"lost", "duplicates", "reordered", "aborted"}


def test_duplicates_allowed_only_with_the_same_id() -> None:
    want = changes(("a", 1), ("a", 2))
    same = check(want, seen(("a", 1, "x1"), ("a", 1, "x1"), ("a", 2, "x2")))
    assert same.ok(allow_duplicates=True) and not same.ok() and same.duplicates == 1
    other = check(want, seen(("a", 1, "x1"), ("a", 1, "zz"), ("a", 2, "x2")))
    assert other.id_changed == [("a", 1)] and not other.ok(allow_duplicates=True)
    collide = check(want, seen(("a", 1, "x1"), ("a", 2, "x1")))
    assert collide.id_collisions == ["x1"]


def test_aborted_unexpected_and_lsn() -> None:
    r = check(
        changes(("a", 1)),
        seen(("a", 1), ("a", -5), ("c", 9)),
        aborted={("a", -5)},
        confirmed_lsns=[10, 20, 20, 15, 30],
    )
    assert r.aborted == [("a", -5)] and r.unexpected == [("c", 9)]
    assert r.lsn_backwards == [(20, 15)]
    assert len(r.problems()) == 3
