"""walrelay.sqltext quotes exactly as PostgreSQL's quote_ident / quote_literal do."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from walrelay.config import parse_config
from walrelay.errors import SourceSetupError
from walrelay.source.slot import prepare_source
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


async def test_source_fix_texts_paste_for_awkward_names(db: str) -> None:
    """The fixes of a missing publication, a table missing from it, a table without
    a key and a missing slot, run as printed, repair exactly what they name."""
    schema, table = "Sales", "Order's"
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(sql.SQL("create schema {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("create table {} (id int)").format(sql.Identifier(schema, table)))
        conn.execute("create table plain (id int primary key)")
    config = parse_config(
        {
            "source": {
                "dsn": db,
                "tables": ["public.plain", f"{schema}.{table}"],
                "publication": "order",  # a reserved word: pastes only quoted
                "slot": "awkward_slot",
                "create_publication": False,
                "create_slot": False,
            },
            "destinations": [{"name": "out", "sink": {"type": "stdout"}}],
        },
        "(test)",
    )
    src = config.source

    async def fix_of_setup_error() -> str:
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as aconn:
            with pytest.raises(SourceSetupError) as e:
                await prepare_source(src, aconn)
        assert e.value.fix is not None
        return e.value.fix

    def paste(text: str) -> None:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(text.encode())

    # The table has no key: the first statement of the fix adds one.
    fix = await fix_of_setup_error()
    assert fix.startswith('ALTER TABLE "Sales"."Order\'s" ADD PRIMARY KEY (...)'), fix
    paste(fix.split(" ADD PRIMARY KEY")[0] + " ADD PRIMARY KEY (id)")

    fix = await fix_of_setup_error()
    assert fix == 'CREATE PUBLICATION "order" FOR TABLE public.plain, "Sales"."Order\'s"', fix
    paste('CREATE PUBLICATION "order" FOR TABLE public.plain')

    fix = await fix_of_setup_error()
    assert fix == 'ALTER PUBLICATION "order" ADD TABLE "Sales"."Order\'s"', fix
    paste(fix)

    fix = await fix_of_setup_error()
    assert fix == "SELECT pg_create_logical_replication_slot('awkward_slot', 'pgoutput')", fix
    paste(fix)
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as aconn:
        info = await prepare_source(src, aconn)
    assert set(info.tables) == {"public.plain", "Sales.Order's"}
