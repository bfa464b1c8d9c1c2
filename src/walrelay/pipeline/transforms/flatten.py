"""``flatten``: the body becomes the row alone (Debezium's ``ExtractNewRecordState``).

Inserts, updates and snapshot rows send ``record``; deletes send ``old``
with ``"__deleted": true`` (``deletes: rewrite``, then every event carries
``__deleted``) or are not sent (``deletes: drop``, counted as finished).
``fields: [op, table, ...]`` adds ``__op``, ``__table``, ... The flattening
happens when the body is encoded, after the last step, so later steps still
see ``record``/``old``/``key``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from walrelay.pipeline.transforms.base import Draft, Step
from walrelay.pipeline.transforms.metadata import meta_value

__all__ = ["FlattenStep"]


class FlattenStep(Step):
    """Marks the draft to be sent as its flattened row."""

    kind = "flatten"

    def __init__(
        self, index: int, tables: Sequence[str] | None, fields: Sequence[str], deletes: str
    ) -> None:
        super().__init__(index, tables)
        self.fields = tuple(fields)
        self.rewrite = deletes == "rewrite"

    def run(self, draft: Draft) -> Draft | None:
        if draft.event.op == "delete" and not self.rewrite:
            return None
        draft.flat = self.index
        return draft

    def flattened(self, draft: Draft) -> dict[str, Any]:
        env = draft.env
        deleted = draft.event.op == "delete"
        source = env.get("old") if deleted else env.get("record")
        row: dict[str, Any] = dict(source) if isinstance(source, dict) else {}
        for name in self.fields:
            row["__" + name] = meta_value(draft, name)
        if self.rewrite:
            row["__deleted"] = deleted
        return row
