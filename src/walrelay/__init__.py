"""walrelay: PostgreSQL change data capture.

Exports resolve lazily (PEP 562) so ``import walrelay`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from walrelay.config import Config, load_config, parse_config
    from walrelay.engine import Engine
    from walrelay.errors import (
        ConfigError,
        DecodeError,
        PoisonEvent,
        SinkError,
        SinkUnavailable,
        SlotBusy,
        SlotLost,
        SourceSetupError,
        UnknownRelation,
        WalrelayError,
    )
    from walrelay.model import Event
    from walrelay.outbox.publish import apublish, publish
    from walrelay.sinks.base import Sink

_EXPORTS: dict[str, str] = {
    "Config": "walrelay.config",
    "load_config": "walrelay.config",
    "parse_config": "walrelay.config",
    "Engine": "walrelay.engine",
    "Event": "walrelay.model",
    "Sink": "walrelay.sinks.base",
    "publish": "walrelay.outbox.publish",
    "apublish": "walrelay.outbox.publish",
    "WalrelayError": "walrelay.errors",
    "ConfigError": "walrelay.errors",
    "SourceSetupError": "walrelay.errors",
    "SlotBusy": "walrelay.errors",
    "SlotLost": "walrelay.errors",
    "DecodeError": "walrelay.errors",
    "UnknownRelation": "walrelay.errors",
    "SinkError": "walrelay.errors",
    "SinkUnavailable": "walrelay.errors",
    "PoisonEvent": "walrelay.errors",
}

__all__ = [
    "Config",
    "ConfigError",
    "DecodeError",
    "Engine",
    "Event",
    "PoisonEvent",
    "Sink",
    "SinkError",
    "SinkUnavailable",
    "SlotBusy",
    "SlotLost",
    "SourceSetupError",
    "UnknownRelation",
    "WalrelayError",
    "apublish",
    "load_config",
    "parse_config",
    "publish",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
