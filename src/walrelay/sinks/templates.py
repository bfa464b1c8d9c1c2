"""Destination names from templates: Kafka topics, NATS subjects, Redis streams,
RabbitMQ exchanges and routing keys.

A template is a Python format string over these fields:

``{prefix}``
    the sink's ``prefix`` setting (default ``walrelay``);
``{schema}``, ``{table}``
    the table's schema and name (``public``, ``orders``);
``{op}``
    ``insert``, ``update``, ``delete``, ``truncate`` or ``message``.

Row changes use the sink's table template (e.g. ``{prefix}.{schema}.{table}``).
Logical decoding messages (``pg_logical_emit_message``) have no table: they
use a second, message template (e.g. ``{prefix}.messages``), where
``{schema}`` and ``{table}`` are not allowed. A ``TRUNCATE`` of several
tables is sent to the name of *each* table it truncated (once per distinct
name), so a consumer of one table's topic sees the truncate of that table.

Values from the database are passed through the sink's ``clean`` function
(each broker has its own rules for legal names), never the template's own
literal text, so a malformed template is a config error, not a silent rename.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from walrelay.errors import ConfigError
from walrelay.model import Event

__all__ = ["FIELDS", "MESSAGE_FIELDS", "NameTemplate", "Naming", "truncated_tables"]

FIELDS: Final = ("prefix", "schema", "table", "op")
MESSAGE_FIELDS: Final = ("prefix", "op")
ROW_OPS: Final = ("insert", "update", "delete", "truncate")


def _identity(value: str) -> str:
    return value


class NameTemplate:
    """One validated template; :meth:`render` fills it in."""

    __slots__ = ("_clean", "_fields", "_prefix", "text")

    def __init__(
        self,
        text: str,
        *,
        setting: str,
        prefix: str,
        fields: Sequence[str] = FIELDS,
        clean: Callable[[str], str] = _identity,
    ) -> None:
        used: set[str] = set()
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ConfigError(
                f"{setting} {text!r} is not a valid template ({exc})",
                fix="use fields in braces, e.g. '{prefix}.{schema}.{table}'; write '{{' for a "
                "literal brace",
            ) from None
        for _, field, spec, conversion in parsed:
            if field is None:
                continue
            if field not in fields or spec or conversion:
                raise ConfigError(
                    f"{setting} {text!r}: unknown field {{{field}}}"
                    + (" (format spec/conversion not supported)" if spec or conversion else ""),
                    fix=f"use only {', '.join('{' + f + '}' for f in fields)}",
                )
            used.add(field)
        if not text.strip():
            raise ConfigError(
                f"{setting} is empty", fix="set it to e.g. '{prefix}.{schema}.{table}'"
            )
        self.text = text
        self._fields = frozenset(used)
        self._prefix = prefix
        self._clean = clean

    @property
    def fields(self) -> frozenset[str]:
        return self._fields

    def render(self, *, schema: str = "", table: str = "", op: str = "insert") -> str:
        clean = self._clean
        return self.text.format(
            prefix=self._prefix,
            schema=clean(schema) if schema else "",
            table=clean(table) if table else "",
            op=op,
        )


def _split(qualified: str) -> tuple[str, str]:
    schema, _, name = qualified.partition(".")
    return (schema, name) if name else ("public", schema)


def truncated_tables(event: Event) -> list[str]:
    """The qualified names of the tables a ``truncate`` event truncated."""
    if event.rendering is not None and event.rendering.tables:
        return list(event.rendering.tables)  # the format's body does not list them
    tables = event.envelope().get("tables") or []
    return [t for t in tables if isinstance(t, str)]


class Naming:
    """Where each event goes: ``names(event)`` -> ``[(name, table), ...]``.

    ``table`` is the qualified table the copy is about (for a truncate fanned
    out to several names) or ``""`` for a logical decoding message. Rendered
    names are cached per (table, op).
    """

    def __init__(
        self,
        template: str,
        message_template: str,
        *,
        prefix: str,
        setting: str,
        message_setting: str,
        clean: Callable[[str], str] = _identity,
    ) -> None:
        self.table_template = NameTemplate(template, setting=setting, prefix=prefix, clean=clean)
        self.message_template = NameTemplate(
            message_template,
            setting=message_setting,
            prefix=prefix,
            fields=MESSAGE_FIELDS,
            clean=clean,
        )
        self._cache: dict[tuple[str, str], str] = {}
        # Where transaction metadata (begin/end events) goes, as Debezium's
        # <topic.prefix>.transaction topic.
        self.transaction_name = clean(f"{prefix}.transaction")

    def for_table(self, table: str, op: str = "insert") -> str:
        key = (table, op)
        name = self._cache.get(key)
        if name is None:
            schema, rel = _split(table)
            name = self.table_template.render(schema=schema, table=rel, op=op)
            self._cache[key] = name
        return name

    def for_message(self) -> str:
        key = ("", "message")
        name = self._cache.get(key)
        if name is None:
            name = self.message_template.render(op="message")
            self._cache[key] = name
        return name

    def names(self, event: Event) -> list[tuple[str, str]]:
        op = event.op
        if op == "message":
            return [(self.for_message(), "")]
        if op == "begin" or op == "end":  # transaction metadata
            return [(self.transaction_name, "")]
        if op == "truncate":
            out: list[tuple[str, str]] = []
            seen: set[str] = set()
            for table in truncated_tables(event):
                name = self.for_table(table, op)
                if name not in seen:
                    seen.add(name)
                    out.append((name, table))
            return out
        return [(self.for_table(event.table, op), event.table)]

    def table_names(self, tables: Iterable[str], ops: Iterable[str] = ROW_OPS) -> dict[str, str]:
        """Every name the given tables can be sent to -> one table that uses it."""
        ops = tuple(ops) if "op" in self.table_template.fields else ("insert",)
        out: dict[str, str] = {}
        for table in tables:
            for op in ops:
                out.setdefault(self.for_table(table, op), table)
        return out
