"""walrelay.sqltext quotes exactly as PostgreSQL's quote_ident / quote_literal do."""

from __future__ import annotations

import psycopg
from psycopg import sql

from walrelay.sqltext import ident, literal, qualified

AWKWARD = [
    "orders",
    "_private",
    "Orders",
    "ORDERS",
    "order",  # reserved keyword
    "user",
    "select",
    "name",  # unreserved keyword: bare
    "varchar",  # column-name keyword
    "left",  # type/function-name keyword
    "abort",
    "1st",
    "a b",
    "a-b",
    "a.b",
    "a$b",
    "it's",
    'say "hi"',
    '"',
    "'",
    "a\\b",
    "\\'",
    "ümlaut",
    "snake_case_9",
    "",
    "x" * 63,
]


def test_ident_and_literal_match_postgresql(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        for name in AWKWARD:
            row = conn.execute("select quote_literal(%s), quote_ident(%s)", (name, name)).fetchone()
            assert row is not None
            assert (literal(name), ident(name)) == (row[0], row[1]), name


def test_every_quoting_keyword_is_known(db: str) -> None:
    """Every keyword this server's quote_ident quotes is quoted by ident()."""
    with psycopg.connect(db, autocommit=True) as conn:
        words = [r[0] for r in conn.execute("select word from pg_get_keywords()").fetchall()]
        for word in words:
            row = conn.execute("select quote_ident(%s)", (word,)).fetchone()
            assert row is not None
            assert ident(word) == row[0], word


def test_quoted_names_name_the_objects(db: str) -> None:
    """A statement built from the quoted text reaches the awkward objects."""
    schema, table = 'Sales "EU"', "order"
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(sql.SQL("create schema {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("create table {} (id int)").format(sql.Identifier(schema, table)))
        conn.execute(f"insert into {qualified(schema + '.' + table)} values (1)")
        quoted = literal("it's")
        row = conn.execute(
            f"select count(*) from {ident(schema)}.{ident(table)} where {quoted} = 'it''s'"
        ).fetchone()
        assert row == (1,)
