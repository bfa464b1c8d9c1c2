"""``mask``: columns replaced by a fixed value (null by default)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from walrelay.pipeline.transforms.base import Draft, Step, row_dicts

__all__ = ["MaskStep"]


class MaskStep(Step):
    """Replaces the columns' values in ``record``, ``old`` and ``key``."""

    kind = "mask"

    def __init__(
        self, index: int, tables: Sequence[str] | None, columns: Sequence[str], value: Any
    ) -> None:
        super().__init__(index, tables, columns)
        self._value = value

    def run(self, draft: Draft) -> Draft:
        value = self._value
        for row in row_dicts(draft.env):
            for name in self.columns:
                if name in row:
                    row[name] = value
        return draft
