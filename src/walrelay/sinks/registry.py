"""Build a sink from its config: a lookup in :data:`walrelay.config.SINK_TYPES`.

The sink's module is imported only here, when a sink of its type is built,
so its optional dependency is needed only by configs that use it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import cast

from walrelay.config import SINK_TYPES, SinkConfigBase
from walrelay.sinks.base import Sink, SinkClass, SinkContext

__all__ = ["build_sink", "sink_class"]


def sink_class(sink_type: str) -> SinkClass:
    """The class registered for ``sink_type`` (its module imported now)."""
    entry = SINK_TYPES[sink_type]
    module, _, name = entry.implementation.partition(":")
    return cast(SinkClass, getattr(importlib.import_module(module), name))


def build_sink(
    config: SinkConfigBase,
    *,
    slot: str = "walrelay",
    destination: str = "default",
    tables: Sequence[str] = (),
) -> Sink:
    """A sink for one destination's ``sink:`` config (see :class:`SinkContext`
    for what ``slot``, ``destination`` and ``tables`` are used for)."""
    context = SinkContext(slot=slot, destination=destination, tables=tuple(tables))
    return sink_class(config.type).from_config(config, context)
