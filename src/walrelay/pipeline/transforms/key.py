"""``key``: columns that become the event's grouping key and message key.

Events with the same values are delivered in commit order, others in
parallel; brokers get the key as the record key (Kafka: canonical JSON of
``{"col": value}``, so a Java client's partitioner picks the same partition
for it). An UPDATE that changes those columns holds the old and the new key
while in flight. A null or missing key column fails the event, naming the
row by its primary key.
"""

from __future__ import annotations

from typing import Any

from walrelay.pipeline.envelope import KEY_SEPARATOR, encode_json
from walrelay.pipeline.transforms.base import Draft, Step, StepFailed

__all__ = ["KeyStep", "group_key"]


def group_key(table: str, key: dict[str, Any]) -> str:
    """The scheduler's key for ``key`` (an object) of ``table``."""
    text = encode_json(key).decode()
    return table + KEY_SEPARATOR + text.replace(KEY_SEPARATOR, "\x00E")


class KeyStep(Step):
    """Replaces ``key`` (and the grouping keys) with the columns' values."""

    kind = "key"

    def run(self, draft: Draft) -> Draft:
        env = draft.env
        event = draft.event
        row = env.get("old") if event.op == "delete" else env.get("record")
        key: dict[str, Any] = {}
        for name in self.columns:
            value = row.get(name) if isinstance(row, dict) else None
            if value is None:
                raise StepFailed(
                    f"key column {name} is null or absent in the row of {event.table} with key "
                    f"{encode_json(env.get('key')).decode()} (event {event.id}); every row "
                    "needs a value there"
                )
            key[name] = value
        keys: tuple[str, ...] = (group_key(event.table, key),)
        old = env.get("old")
        if event.op == "update" and isinstance(old, dict) and all(c in old for c in self.columns):
            old_key = {c: old[c] for c in self.columns}
            if old_key != key:
                keys = (keys[0], group_key(event.table, old_key))
        env["key"] = key
        draft.keys = keys
        return draft
