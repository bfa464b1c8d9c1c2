"""librdkafka's linger.ms by mode: exactly_once lingers for the whole
transaction (records are invisible until the commit, which sends what lingers
at once); at_least_once sends within 5 ms; an explicit ``linger`` wins."""

from __future__ import annotations

from typing import Any

import pytest

from walrelay.config import KafkaSinkConfig
from walrelay.errors import ConfigError
from walrelay.sinks.kafka import KafkaSink


def _linger_ms(**settings: Any) -> float:
    sink = KafkaSink(KafkaSinkConfig.model_validate({"bootstrap_servers": "k:9092", **settings}))
    return float(sink._producer_config["linger.ms"])


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, 100.0),
        ({"transaction_interval": "250ms"}, 250.0),
        ({"transaction_interval": 60}, 1000.0),
        ({"transaction_interval": 60, "delivery_timeout": 1}, 500.0),
        ({"mode": "at_least_once"}, 5.0),
        ({"linger": "20ms"}, 20.0),
        ({"mode": "at_least_once", "linger": 0}, 0.0),
    ],
)
def test_linger_by_mode(settings: dict[str, Any], expected: float) -> None:
    assert _linger_ms(**settings) == expected


def test_a_linger_as_long_as_the_delivery_timeout_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"linger .* must be below delivery_timeout"):
        _linger_ms(linger=30, delivery_timeout=30)
