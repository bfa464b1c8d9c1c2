"""``set``: constant fields and event metadata added to the row.

The fields go into ``record``; a delete (no ``record``) gets them in ``old``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from walrelay.pipeline.transforms.base import Draft, Step
from walrelay.pipeline.transforms.metadata import meta_value

__all__ = ["SetStep"]


class SetStep(Step):
    """Adds ``fields`` (constants) and ``meta`` (field -> metadata name)."""

    kind = "set"

    def __init__(
        self,
        index: int,
        tables: Sequence[str] | None,
        fields: Mapping[str, Any],
        meta: Mapping[str, str],
    ) -> None:
        super().__init__(index, tables)
        self._fields = dict(fields)
        self._meta = dict(meta)
        self.added = (*self._fields, *self._meta)

    def run(self, draft: Draft) -> Draft:
        env = draft.env
        row = env.get("record")
        if not isinstance(row, dict):
            row = env.get("old")
            if not isinstance(row, dict):
                return draft
        row.update(self._fields)
        for field, name in self._meta.items():
            row[field] = meta_value(draft, name)
        return draft
