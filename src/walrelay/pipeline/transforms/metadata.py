"""Event metadata as ``set`` and ``flatten`` add it to a row."""

from __future__ import annotations

from typing import Any

from walrelay.model import format_lsn
from walrelay.pipeline.transforms.base import Draft

__all__ = ["meta_value"]


def meta_value(draft: Draft, name: str) -> Any:
    """The value of metadata field ``name`` (see ``transform_config.META_FIELDS``)."""
    event = draft.event
    if name == "table":
        return event.table
    if name == "schema":
        return event.table.partition(".")[0]
    if name == "name":
        return event.table.partition(".")[2]
    if name == "op":
        return event.op
    if name == "id":
        return event.id
    if name in ("lsn", "commit_lsn"):
        return format_lsn(event.commit_lsn)
    if name == "xid":
        return event.xid
    if name == "committed_at":
        return draft.env.get("committed_at")
    raise KeyError(name)
