"""Reading ``transforms:``: shorthands, and one clear line for what is wrong."""

from __future__ import annotations

from typing import Any

import pytest

from walrelay.config import parse_config
from walrelay.errors import ConfigError
from walrelay.transform_config import (
    ExcludeStepConfig,
    FlattenStepConfig,
    MaskStepConfig,
    PythonStepConfig,
)


def parse(*steps: Any) -> list[Any]:
    config = parse_config(
        {
            "source": {"dsn": "dbname=x", "tables": ["customers"]},
            "destinations": [{"name": "d", "sink": {"type": "stdout"}, "transforms": list(steps)}],
        }
    )
    return list(config.destinations[0].transforms)


def test_shorthands_and_scoping() -> None:
    steps = parse(
        {"exclude": ["ssn"]},
        {"mask": {"tables": ["customers", "app.*"], "columns": ["phone"], "with": "**"}},
        {"flatten": None},
        {"python": "pkg.mod:fn"},
    )
    assert isinstance(steps[0], ExcludeStepConfig) and steps[0].columns == ["ssn"]
    assert isinstance(steps[1], MaskStepConfig)
    assert steps[1].tables == ["public.customers", "app.*"] and steps[1].with_ == "**"
    assert isinstance(steps[2], FlattenStepConfig) and steps[2].deletes == "rewrite"
    assert isinstance(steps[3], PythonStepConfig)


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"bogus": 1}, "unknown transform 'bogus'"),
        ({"exclude": [], "mask": []}, "a mapping with one key"),
        ({"hash": {"columns": ["a"]}}, "set exactly one of key_env and key_file"),
        ({"python": "not a function"}, "is not 'module:function'"),
        ({"rename": {"columns": {"a": "x", "b": "x"}}}, "the same new name"),
        ({"cast": {"columns": {"a": "date"}}}, "transforms.0.cast.columns.a"),
        ({"exclude": {"columns": ["a"], "colums": 1}}, "unknown setting"),
    ],
)
def test_errors_name_the_step(step: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(step)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
