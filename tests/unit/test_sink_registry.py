"""The sink registry: one line per sink type, modules imported only when used."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from walrelay.config import SINK_TYPES, parse_config
from walrelay.pipeline.ledger import is_transactional
from walrelay.sinks.base import Sink
from walrelay.sinks.registry import build_sink, sink_class

SINKS: dict[str, dict[str, Any]] = {
    "file": {"path": "/tmp/walrelay-registry-test.jsonl"},
    "stdout": {},
    "webhook": {"url": "https://hooks.example/x"},
    "kafka": {"bootstrap_servers": "127.0.0.1:1"},
    "nats": {"servers": "nats://127.0.0.1:1"},
    "redis": {"url": "redis://127.0.0.1:1/0"},
    "rabbitmq": {"url": "amqp://127.0.0.1:1/"},
    "postgres": {"dsn": "dbname=none"},
}
# No duplicate can show up downstream (no ledger needed), per sink type, by default.
TRANSACTIONAL = {
    "file": True,
    "stdout": False,
    "webhook": False,
    "kafka": True,
    "nats": True,
    "redis": True,
    "rabbitmq": False,
    "postgres": True,
}


def sink_config(sink_type: str, **extra: Any) -> Any:
    config = parse_config(
        {
            "source": {"dsn": "dbname=x", "tables": ["orders"]},
            "destinations": [
                {"name": "d", "sink": {"type": sink_type, **SINKS[sink_type], **extra}}
            ],
        }
    )
    return config.destinations[0].sink


def test_every_sink_type_is_in_these_tests() -> None:
    assert set(SINK_TYPES) == set(SINKS) == set(TRANSACTIONAL)


@pytest.mark.parametrize("sink_type", sorted(SINKS))
def test_registry_builds_each_sink_from_its_own_config(sink_type: str) -> None:
    entry = SINK_TYPES[sink_type]
    cfg = sink_config(sink_type)
    assert type(cfg) is entry.config
    cls = sink_class(sink_type)
    assert entry.implementation.endswith(":" + getattr(cls, "__name__", ""))
    sink = build_sink(cfg, slot="s", destination="d", tables=["public.orders"])
    assert isinstance(sink, Sink) and isinstance(sink, cls)  # type: ignore[arg-type]
    assert sink.batch_size == cfg.batch_size  # the default lives in the config model only
    assert sink.transactional is TRANSACTIONAL[sink_type]
    assert is_transactional(sink) is TRANSACTIONAL[sink_type]


def test_kafka_at_least_once_is_not_transactional_and_context_names_it() -> None:
    from walrelay.sinks.kafka import KafkaSink

    sink = build_sink(sink_config("kafka"), slot="s", destination="d")
    assert isinstance(sink, KafkaSink) and sink.transactional_id == "walrelay-s-d"
    loose = build_sink(sink_config("kafka", mode="at_least_once"))
    assert not loose.transactional and not loose.ordered


def test_reading_a_config_imports_no_sink() -> None:
    code = (
        "import sys\n"
        "from walrelay.config import parse_config\n"
        "parse_config({'source': {'dsn': 'dbname=x', 'tables': ['t']}, 'destinations': [\n"
        "    {'name': 'k', 'sink': {'type': 'kafka', 'bootstrap_servers': 'h:9092'}},\n"
        "    {'name': 'n', 'sink': {'type': 'nats', 'servers': 'nats://h'}}]})\n"
        "loaded = [m for m in sys.modules if m.startswith(('walrelay.sinks', 'confluent_kafka',"
        " 'nats', 'redis', 'aio_pika'))]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
