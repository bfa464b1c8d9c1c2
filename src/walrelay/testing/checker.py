"""A history checker: judge what a downstream reader saw against what was committed.

Like a Jepsen checker, it looks only at the two ends: the changes the source
committed (and the ones it rolled back), and the deliveries a reader
observed, in the order it observed them. It reports

- **lost**: committed, never delivered;
- **duplicated**: delivered more than once (how often), and whether every
  repeat carried the id of the first delivery (``id_changed`` otherwise);
- **reordered**: a change delivered for the first time after a later change
  of the same key had been delivered;
- **aborted**: delivered although its transaction rolled back;
- **unexpected**: delivered, never committed at all;
- **id_collisions**: two different changes delivered under one id;
- **lsn_backwards**: the confirmed LSN, sampled over the run, went down.

A change is identified by ``uid`` (anything hashable, e.g. ``(key,
version)``), belongs to ``key``, and has an ``order`` within its key (a
per-key version). Tests and ``bench/chaos.py`` share it::

    report = check(expected, observed, aborted=rolled_back, confirmed_lsns=samples)
    assert report.ok(), report.summary()
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Change", "Delivery", "Report", "check"]


@dataclass(frozen=True, slots=True)
class Change:
    """One change the source committed (or, in ``aborted``, rolled back)."""

    uid: Hashable
    key: Hashable
    order: int


@dataclass(frozen=True, slots=True)
class Delivery:
    """One observation downstream. ``id``: the message id it carried, if any."""

    uid: Hashable
    key: Hashable
    order: int
    id: str | None = None


@dataclass
class Report:
    expected: int = 0
    observed: int = 0
    unique: int = 0
    lost: list[Hashable] = field(default_factory=list)
    duplicated: dict[Hashable, int] = field(default_factory=dict)  # uid -> extra copies
    id_changed: list[Hashable] = field(default_factory=list)
    id_collisions: list[str] = field(default_factory=list)
    reordered: list[tuple[Hashable, Hashable, int]] = field(default_factory=list)
    aborted: list[Hashable] = field(default_factory=list)
    unexpected: list[Hashable] = field(default_factory=list)
    lsn_backwards: list[tuple[int, int]] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        """Deliveries beyond the first of each change."""
        return sum(self.duplicated.values())

    def problems(self, *, allow_duplicates: bool = False) -> list[str]:
        out: list[str] = []

        def some(items: Sequence[Any]) -> str:
            shown = ", ".join(repr(i) for i in items[:5])
            return shown + (f" ... (+{len(items) - 5})" if len(items) > 5 else "")

        if self.lost:
            out.append(f"{len(self.lost)} lost: {some(self.lost)}")
        if self.duplicated and not allow_duplicates:
            out.append(
                f"{self.duplicates} duplicate deliveries of {len(self.duplicated)} changes: "
                f"{some(list(self.duplicated))}"
            )
        if self.id_changed:
            out.append(
                f"{len(self.id_changed)} redelivered under another id: {some(self.id_changed)}"
            )
        if self.id_collisions:
            out.append(
                f"{len(self.id_collisions)} ids used for two changes: {some(self.id_collisions)}"
            )
        if self.reordered:
            out.append(f"{len(self.reordered)} reordered within a key: {some(self.reordered)}")
        if self.aborted:
            out.append(f"{len(self.aborted)} from aborted transactions: {some(self.aborted)}")
        if self.unexpected:
            out.append(f"{len(self.unexpected)} never committed: {some(self.unexpected)}")
        if self.lsn_backwards:
            out.append(f"confirmed LSN went backwards {len(self.lsn_backwards)} times")
        return out

    def ok(self, *, allow_duplicates: bool = False) -> bool:
        return not self.problems(allow_duplicates=allow_duplicates)

    def summary(self, *, allow_duplicates: bool = False) -> str:
        head = (
            f"{self.expected} committed, {self.observed} delivered ({self.unique} distinct, "
            f"{self.duplicates} duplicates)"
        )
        problems = self.problems(allow_duplicates=allow_duplicates)
        return head + ("; " + "; ".join(problems) if problems else "; OK")

    def to_json(self) -> dict[str, Any]:
        return {
            "expected": self.expected,
            "observed": self.observed,
            "unique": self.unique,
            "lost": len(self.lost),
            "duplicates": self.duplicates,
            "duplicated_changes": len(self.duplicated),
            "id_changed": len(self.id_changed),
            "id_collisions": len(self.id_collisions),
            "reordered": len(self.reordered),
            "aborted": len(self.aborted),
            "unexpected": len(self.unexpected),
            "lsn_backwards": len(self.lsn_backwards),
        }


def check(
    expected: Iterable[Change],
    observed: Iterable[Delivery],
    *,
    aborted: Iterable[Hashable] = (),
    confirmed_lsns: Sequence[int] = (),
) -> Report:
    """Judge ``observed`` (in observation order) against ``expected``."""
    report = Report()
    committed: dict[Hashable, Change] = {}
    for c in expected:
        committed[c.uid] = c
    report.expected = len(committed)
    rolled_back = set(aborted)
    first_id: dict[Hashable, str | None] = {}
    id_owner: dict[str, Hashable] = {}
    copies: Counter[Hashable] = Counter()
    highest: dict[Hashable, int] = {}  # key -> highest order delivered so far
    for d in observed:
        report.observed += 1
        copies[d.uid] += 1
        if d.id is not None:
            owner = id_owner.setdefault(d.id, d.uid)
            if owner != d.uid and d.id not in report.id_collisions:
                report.id_collisions.append(d.id)
        if copies[d.uid] > 1:
            if first_id.get(d.uid) != d.id and d.uid not in report.id_changed:
                report.id_changed.append(d.uid)
            continue
        first_id[d.uid] = d.id
        if d.uid in rolled_back:
            report.aborted.append(d.uid)
            continue
        if d.uid not in committed:
            report.unexpected.append(d.uid)
            continue
        top = highest.get(d.key)
        if top is not None and d.order < top:
            report.reordered.append((d.key, d.uid, top))
        if top is None or d.order > top:
            highest[d.key] = d.order
    report.unique = len(copies)
    report.lost = [uid for uid in committed if uid not in copies]
    report.duplicated = {uid: n - 1 for uid, n in copies.items() if n > 1}
    for before, after in itertools.pairwise(confirmed_lsns):
        if after < before:
            report.lsn_backwards.append((before, after))
    return report
