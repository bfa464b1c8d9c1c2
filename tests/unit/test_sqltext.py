"""walrelay.sqltext without a server (tests/integration/test_sqltext.py compares
it with PostgreSQL's own quote_ident / quote_literal)."""

from __future__ import annotations

import pytest

from walrelay.sqltext import ident, idents, literal, qualified


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("orders", "orders"),
        ("_x1", "_x1"),
        ("Orders", '"Orders"'),
        ("1st", '"1st"'),
        ("a b", '"a b"'),
        ('say "hi"', '"say ""hi"""'),
        ("a$b", '"a$b"'),
        ("user", '"user"'),
        ("select", '"select"'),
        ("name", "name"),  # an unreserved keyword stays bare
        ("", '""'),
    ],
)
def test_ident(name: str, text: str) -> None:
    assert ident(name) == text


def test_literal() -> None:
    assert literal("walrelay") == "'walrelay'"
    assert literal("it's") == "'it''s'"
    assert literal("a\\b") == "E'a\\\\b'"
    assert literal("") == "''"


def test_qualified_names() -> None:
    assert qualified("public.orders") == "public.orders"
    assert qualified('Sales.Order"s') == '"Sales"."Order""s"'
    assert qualified("orders") == "orders"
    assert idents(["public.orders", "app.User"]) == 'public.orders, app."User"'
