"""Which target table the PostgreSQL sink applies an event to: its route (the
``route`` transform) first, else the ``tables`` mapping, else the same name."""

from __future__ import annotations

from walrelay.config import PostgresSinkConfig
from walrelay.sinks.postgres import PostgresSink


def test_a_route_overrides_the_mapping_and_a_bare_name_takes_the_default_schema() -> None:
    mapped = PostgresSink(PostgresSinkConfig(dsn="dbname=none", tables={"orders": "copy"}))
    assert mapped._target_name("public.orders") == ("public", "copy")
    assert mapped._target_name("public.orders", "shard.orders_EU") == ("shard", "orders_EU")
    assert mapped._target_name("public.orders", "orders_us") == ("public", "orders_us")
    assert mapped._target_name("public.orders", "a.b.c") == ("a", "b.c")  # the first dot
    in_schema = PostgresSink(
        PostgresSinkConfig.model_validate({"dsn": "dbname=none", "schema": "replica"})
    )
    assert in_schema._target_name("public.items", "items_2024") == ("replica", "items_2024")
    assert in_schema._target_name("public.items") == ("replica", "items")
