"""SQL text an operator pastes: names and strings quoted as PostgreSQL quotes them.

Error ``fix=`` texts and doctor advice print statements such as
``SELECT pg_drop_replication_slot('my''slot')`` or ``ALTER TABLE
"Sales".orders REPLICA IDENTITY FULL``. They are text for a person, never
executed by walrelay (walrelay's own statements use ``psycopg.sql``), but a
name with a quote, upper case letters or a keyword must still paste into
psql as the object it names.

:func:`literal` is PostgreSQL's ``quote_literal`` and :func:`ident` its
``quote_ident`` (https://www.postgresql.org/docs/current/functions-string.html);
``tests/integration/test_sqltext.py`` compares both with a real server.
"""

from __future__ import annotations

import re

__all__ = ["ident", "idents", "literal", "qualified"]

_PLAIN = re.compile(r"[a-z_][a-z0-9_]*")

# Keywords quote_ident quotes (every category but "unreserved"):
# ``select word from pg_get_keywords() where catcode <> 'U'`` on PostgreSQL 15,
# plus the ones PostgreSQL 16 and 17 added. Quoting a name that would not need
# it is harmless (it names the same object); the reverse breaks the statement.
_KEYWORD_LIST = """
    all analyse analyze and any array as asc asymmetric authorization between bigint binary
    bit boolean both case cast char character check coalesce collate collation column
    concurrently constraint create cross current_catalog current_date current_role
    current_schema current_time current_timestamp current_user dec decimal default deferrable
    desc distinct do else end except exists extract false fetch float for foreign freeze from
    full grant greatest group grouping having ilike in initially inner inout int integer
    intersect interval into is isnull join lateral leading least left like limit localtime
    localtimestamp national natural nchar none normalize not notnull null nullif numeric offset
    on only or order out outer overlaps overlay placing position precision primary real
    references returning right row select session_user setof similar smallint some substring
    symmetric table tablesample then time timestamp to trailing treat trim true union unique
    user using values varchar variadic verbose when where window with xmlattributes xmlconcat
    xmlelement xmlexists xmlforest xmlnamespaces xmlparse xmlpi xmlroot xmlserialize xmltable
    system_user json json_array json_arrayagg json_object json_objectagg
    json_exists json_query json_scalar json_serialize json_table json_value merge_action
"""
_KEYWORDS = frozenset(_KEYWORD_LIST.split())


def literal(value: str) -> str:
    """``value`` as a string literal, as ``quote_literal`` writes it: in single
    quotes with quotes doubled; with a backslash, ``E'...'`` and backslashes
    doubled (the same string whatever ``standard_conforming_strings`` is)."""
    if "\\" in value:
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + value.replace("'", "''") + "'"


def ident(name: str) -> str:
    """One identifier as ``quote_ident`` writes it: bare when it is lower case
    letters, digits and ``_`` (not starting with a digit) and no keyword, else
    in double quotes with double quotes doubled."""
    if _PLAIN.fullmatch(name) and name not in _KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


def qualified(name: str) -> str:
    """A ``schema.table`` name as walrelay's config writes it (split on the first
    dot; a name without a dot is one identifier)."""
    schema, dot, table = name.partition(".")
    if not dot:
        return ident(name)
    return f"{ident(schema)}.{ident(table)}"


def idents(names: list[str] | tuple[str, ...]) -> str:
    """Qualified names, comma separated (a ``FOR TABLE`` list)."""
    return ", ".join(qualified(n) for n in names)
