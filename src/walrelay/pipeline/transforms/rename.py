"""``rename``: columns get new names, in record, old, key and ``unchanged``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from walrelay.pipeline.transforms.base import Draft, Step

__all__ = ["RenameStep"]


class RenameStep(Step):
    """Renames columns; the column order of the row is kept."""

    kind = "rename"

    def __init__(
        self, index: int, tables: Sequence[str] | None, columns: Mapping[str, str]
    ) -> None:
        super().__init__(index, tables, tuple(columns))
        self._names = dict(columns)
        self.new_names = tuple(columns.values())

    def run(self, draft: Draft) -> Draft:
        names = self._names
        env = draft.env
        for field in ("record", "old", "key"):
            row = env.get(field)
            if isinstance(row, dict) and not names.keys().isdisjoint(row):
                env[field] = self._renamed(row)
        unchanged = env.get("unchanged")
        if unchanged:
            env["unchanged"] = [names.get(c, c) for c in unchanged]
        return draft

    def _renamed(self, row: dict[str, Any]) -> dict[str, Any]:
        names = self._names
        return {names.get(k, k): v for k, v in row.items()}
