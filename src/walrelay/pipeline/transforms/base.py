"""What every step shares: the draft an event is reshaped in, the step base
class, scoping by table, and the error a step raises for one event.

A :class:`Draft` holds the decoded walrelay envelope (``record``, ``old``,
``key``, ``unchanged``, ...) of one row event while a destination's steps
run on it, plus what the steps decided beside the body: the route topic, the
grouping keys, whether the body is the flattened row.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from walrelay.model import Event

__all__ = ["ROW_OPS", "Draft", "Step", "StepFailed", "row_dicts"]

ROW_OPS = frozenset({"insert", "update", "delete", "read"})
"""Events the steps reshape; truncates and logical messages pass unchanged."""


class StepFailed(Exception):
    """A step could not handle one event (a null key column, a value ``cast``
    cannot convert, a filter that raised...): the event is parked, not sent."""


class Draft:
    """One row event while a destination's steps reshape it."""

    __slots__ = ("env", "event", "flat", "keys", "topic")

    def __init__(self, event: Event, env: dict[str, Any]) -> None:
        self.event = event
        self.env = env
        self.topic: str | None = None  # set by ``route``
        self.keys: tuple[str, ...] | None = None  # set when the key changed
        self.flat: int | None = None  # index of the ``flatten`` step that applies


def row_dicts(env: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``record``, ``old`` and ``key`` of an envelope, those that are objects:
    a column step treats them alike, so nothing it removes leaks through one."""
    for name in ("record", "old", "key"):
        value = env.get(name)
        if isinstance(value, dict):
            yield value


class Step:
    """One step of a destination's chain.

    ``run`` returns the draft (changed in place), None (drop: filtered out),
    or a list of drafts (fan out; the python hook only). It raises
    :class:`StepFailed` (or anything, for the python hook) to park the event.
    """

    kind: ClassVar[str] = ""

    def __init__(self, index: int, tables: Sequence[str] | None, columns: Sequence[str] = ()):
        self.index = index
        self.tables = tuple(tables) if tables is not None else None
        # Columns the step names: a table without one of them is a schema change.
        self.columns = tuple(columns)
        self.events_in = 0
        self.dropped = 0
        self.errors = 0

    @property
    def label(self) -> str:
        """``step 3 (mask)``: how errors and metrics name the step."""
        return f"step {self.index + 1} ({self.kind})"

    def applies_to(self, table: str) -> bool:
        if self.tables is None:
            return True
        return any(fnmatch.fnmatchcase(table, pattern) for pattern in self.tables)

    def run(self, draft: Draft) -> Draft | list[Draft] | None:
        raise NotImplementedError
