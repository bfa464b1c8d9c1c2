"""``include`` / ``exclude``: a column allow- or deny-list, on record, old and key."""

from __future__ import annotations

from collections.abc import Sequence

from walrelay.pipeline.transforms.base import Draft, Step, row_dicts

__all__ = ["ExcludeStep", "IncludeStep"]


class ExcludeStep(Step):
    """Removes the columns from ``record``, ``old``, ``key`` and ``unchanged``."""

    kind = "exclude"

    def __init__(self, index: int, tables: Sequence[str] | None, columns: Sequence[str]) -> None:
        super().__init__(index, tables, columns)
        self._drop = frozenset(columns)

    def run(self, draft: Draft) -> Draft:
        drop = self._drop
        for row in row_dicts(draft.env):
            for name in drop & row.keys():
                del row[name]
        unchanged = draft.env.get("unchanged")
        if unchanged:
            draft.env["unchanged"] = [c for c in unchanged if c not in drop]
        return draft


class IncludeStep(Step):
    """Keeps only the columns, in ``record``, ``old``, ``key`` and ``unchanged``."""

    kind = "include"

    def __init__(self, index: int, tables: Sequence[str] | None, columns: Sequence[str]) -> None:
        super().__init__(index, tables, columns)
        self._keep = frozenset(columns)

    def run(self, draft: Draft) -> Draft:
        keep = self._keep
        for row in row_dicts(draft.env):
            for name in row.keys() - keep:
                del row[name]
        unchanged = draft.env.get("unchanged")
        if unchanged:
            draft.env["unchanged"] = [c for c in unchanged if c in keep]
        return draft
