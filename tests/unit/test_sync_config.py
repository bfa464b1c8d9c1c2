"""sync.yaml: what is accepted, and one clear line for what is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from walrelay.errors import ConfigError
from walrelay.sync.config import load_sync_config, parse_sync_config

GOOD = {
    "sync": {
        "name": "crm",
        "nodes": {
            "eu": {"dsn": "postgresql://walrelay:s3cret@eu-db/app", "priority": 1},
            "us": {"dsn": "postgresql://walrelay@us-db/app", "priority": 2},
        },
        "tables": ["accounts", "public.contacts"],
        "conflicts": {"default": "last_write_wins", "tables": {"accounts": "priority"}},
    }
}


def test_the_issue_example_parses_with_qualified_names() -> None:
    s = parse_sync_config(GOOD)
    assert s.tables == ["public.accounts", "public.contacts"]
    assert s.conflicts.policy_of("public.accounts") == "priority"
    assert s.conflicts.policy_of("public.contacts") == "last_write_wins"
    assert s.slot("eu") == "walrelay_sync_crm_eu"
    assert s.publication == "walrelay_sync_crm"
    assert s.node_of_origin(s.origin("us")) == "us"
    assert s.node_of_origin("pg_123") is None
    assert "s3cret" not in repr(s) and "s3cret" not in s.nodes["eu"].masked_dsn


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"conflicts": {"default": "newest"}}, "unknown conflict policy 'newest'"),
        ({"conflicts": {"tables": {"public.other": "priority"}}}, "not in tables"),
        ({"nodes": {"eu": {"dsn": "x"}}}, "nodes"),
        ({"name": "Bad-Name"}, "sync name 'Bad-Name'"),
        ({"tables": ["a", "public.a"]}, "tables lists a table twice"),
        ({"nodez": {}}, "unknown setting"),
    ],
)
def test_a_bad_config_is_one_line_with_exit_2(change: dict[str, object], message: str) -> None:
    data = {"sync": {**GOOD["sync"], **change}}
    with pytest.raises(ConfigError, match=message) as e:
        parse_sync_config(data, "sync.yaml")
    assert e.value.exit_code == 2
    assert "\n" not in str(e.value)
    assert "s3cret" not in str(e.value)


def test_load_reads_yaml(tmp_path: Path) -> None:
    p = tmp_path / "sync.yaml"
    p.write_text(
        "sync:\n  name: x\n  nodes: {a: {dsn: 'host=a'}, b: {dsn: 'host=b'}}\n  tables: [t]\n"
    )
    assert load_sync_config(p).nodes["b"].priority == 100
    with pytest.raises(ConfigError, match="cannot read sync config"):
        load_sync_config(tmp_path / "missing.yaml")
