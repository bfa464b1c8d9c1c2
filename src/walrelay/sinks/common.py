"""What the sinks share: their optional imports, safe URLs, legal names, batch errors."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Final

from yarl import URL

from walrelay.errors import ConfigError, PoisonEvent, SinkError, SinkUnavailable

__all__ = [
    "batch_error",
    "clean_routing_word",
    "clean_subject_token",
    "clean_topic",
    "import_extra",
    "safe_url",
]


# -- optional dependencies ------------------------------------------------------


def import_extra(sink: str, package: str, *modules: str) -> ModuleType:
    """Import ``modules`` (the first one's top-level package is returned), or raise
    the one-line :class:`ConfigError` that names the extra to install: the extra
    is named like the sink type (``pip install 'walrelay[kafka]'``)."""
    try:
        for name in modules:
            importlib.import_module(name)
        return importlib.import_module(modules[0].partition(".")[0])
    except ImportError:
        raise ConfigError(
            f"{sink} sink: the {package} package is not installed",
            fix=f"pip install 'walrelay[{sink}]'",
        ) from None


# -- URLs in logs and errors ----------------------------------------------------


def safe_url(url: str | URL) -> str:
    """``url`` without user info, query string and fragment: safe for logs and errors.

    All three can carry credentials (``redis://:pw@host``, ``https://token@host``,
    ``?token=...``). Connection strings of PostgreSQL use
    :func:`walrelay.config.masked_dsn` instead (they may be ``key=value`` lists).
    """
    try:
        u = url if isinstance(url, URL) else URL(url)
        if u.is_absolute():
            u = u.with_user(None)
        return str(u.with_query(None).with_fragment(None))
    except (TypeError, ValueError):
        return "(unparsable url)"


# -- names from the database ----------------------------------------------------

_TOPIC_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_NOT_IN_SUBJECT_TOKEN: Final = frozenset(" \t\r\n.*>")


def clean_topic(value: str) -> str:
    """A value made legal in a Kafka topic name (``[a-zA-Z0-9._-]``, else ``_``);
    also legal as a NATS subject, Redis stream or RabbitMQ routing key, which is
    why the outbox router uses it for routed topics."""
    if all(c in _TOPIC_CHARS for c in value):
        return value
    return "".join(c if c in _TOPIC_CHARS else "_" for c in value)


def clean_subject_token(value: str) -> str:
    """A schema or table name made one NATS subject token (no ``.``, ``*``, ``>``
    or white space)."""
    if not any(c in _NOT_IN_SUBJECT_TOKEN for c in value):
        return value
    return "".join("_" if c in _NOT_IN_SUBJECT_TOKEN else c for c in value)


def clean_routing_word(value: str) -> str:
    """A schema or table name made one word of a RabbitMQ topic routing key."""
    return value.replace(".", "_") if "." in value else value


# -- one error for a batch --------------------------------------------------------


def batch_error(failures: Sequence[SinkError], total: int, what: str) -> SinkError:
    """The error ``deliver`` raises when ``failures`` (of ``total`` ``what``, e.g.
    ``"publishes"``) failed: any transient failure makes it transient, permanent
    only when all are (the policy in :mod:`walrelay.sinks.base`)."""
    if not failures:
        raise ValueError("batch_error needs at least one failure")
    if len(failures) == 1:
        return failures[0]
    transient = [f for f in failures if not f.permanent]
    first = (transient or failures)[0]
    message = f"{len(failures)} of {total} {what} failed; first: {first}"
    if not transient:
        if all(isinstance(f, PoisonEvent) for f in failures):
            return PoisonEvent(message)
        return SinkError(message, permanent=True)
    delays = [f.retry_after for f in transient if f.retry_after is not None]
    retry_after = max(delays) if delays else None
    if any(isinstance(f, SinkUnavailable) for f in transient):
        return SinkUnavailable(message, retry_after=retry_after)
    return SinkError(message, retry_after=retry_after)
