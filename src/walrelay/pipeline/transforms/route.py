"""``route``: the topic / subject / stream / routing key from a template.

``to`` is a template over ``{table}``, ``{schema}``, ``{name}``, ``{op}`` and
row fields ``{record.col}``, ``{old.col}``, ``{key.col}``; values are made
legal topic characters (:func:`walrelay.sinks.common.clean_topic`). The
event gets a :class:`~walrelay.model.Route` (as the outbox router sets
one): broker sinks send it to that topic, with the message key from the
event's key; the PostgreSQL sink applies the event to the table it names
(``schema.table`` or ``table``); sinks without topics ignore it.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

from walrelay.errors import ConfigError
from walrelay.pipeline.envelope import encode_json
from walrelay.pipeline.transforms.base import Draft, Step, StepFailed
from walrelay.sinks.common import clean_topic

__all__ = ["RouteStep"]

_PLAIN = ("table", "schema", "name", "op")
_ROWS = ("record", "old", "key")


class RouteStep(Step):
    """Sets the draft's topic from the template."""

    kind = "route"

    def __init__(self, index: int, tables: Sequence[str] | None, to: str, where: str) -> None:
        self._parts: list[tuple[str, str | None, str | None]] = []
        row_columns: list[str] = []
        try:
            parsed = list(string.Formatter().parse(to))
        except ValueError as e:
            raise ConfigError(
                f"{where}: route {to!r} is not a valid template ({e})",
                fix="write fields in braces, e.g. 'crm.{table}.{record.region}'; '{{' is a brace",
            ) from None
        for literal, field, spec, conversion in parsed:
            if literal:
                self._parts.append((literal, None, None))
            if field is None:
                continue
            head, dot, column = field.partition(".")
            ok = (not dot and head in _PLAIN) or (dot and head in _ROWS and column)
            if not ok or spec or conversion:
                raise ConfigError(
                    f"{where}: route {to!r}: unknown field {{{field}}}",
                    fix="use {table}, {schema}, {name}, {op}, {record.<column>}, "
                    "{old.<column>} or {key.<column>}",
                )
            self._parts.append(("", head, column if dot else None))
            if dot and head == "record":
                row_columns.append(column)
        super().__init__(index, tables, row_columns)

    def run(self, draft: Draft) -> Draft:
        event = draft.event
        env = draft.env
        out: list[str] = []
        for literal, head, column in self._parts:
            if head is None:
                out.append(literal)
                continue
            if column is None:
                value: object = {
                    "table": event.table,
                    "schema": event.table.partition(".")[0],
                    "name": event.table.partition(".")[2],
                    "op": event.op,
                }[head]
            else:
                row = env.get(head)
                if head == "record" and not isinstance(row, dict):
                    row = env.get("old")  # a delete routes by its old row
                value = row.get(column) if isinstance(row, dict) else None
                if value is None:
                    raise StepFailed(
                        f"route: {head}.{column} of {event.table} is null or absent in "
                        f"event {event.id} (key {encode_json(env.get('key')).decode()})"
                    )
            out.append(
                clean_topic(value if isinstance(value, str) else encode_json(value).decode())
            )
        draft.topic = "".join(out)
        return draft
