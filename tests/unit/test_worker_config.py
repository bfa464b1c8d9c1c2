"""The worker's config file (walrelay.worker.config) and `walrelay worker`'s errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from psycopg.conninfo import conninfo_to_dict

from walrelay.cli.main import main
from walrelay.errors import ConfigError
from walrelay.pipeline.ledger import ledger_hook
from walrelay.sinks.webhook import WebhookSink
from walrelay.worker.config import parse_worker_config


def worker_file(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "worker": {
            "kafka": {"bootstrap": "k:9092", "group": "billing", "topics": ["cdc.public.orders"]},
            "slot": "main",
        },
        "state": {"dsn": "postgresql://walrelay:secret@state/db"},
        "destinations": [
            {"name": "billing", "sink": {"type": "webhook", "url": "https://b.internal/hook"}}
        ],
    }
    data.update(over)
    return data


def test_the_issue_example_parses() -> None:
    config = parse_worker_config(worker_file(), "worker.yaml")
    kafka = config.worker.kafka
    assert (kafka.bootstrap, kafka.group) == ("k:9092", "billing")
    assert kafka.topics == ["cdc.public.orders"]
    assert config.http.enabled is False


def test_the_engine_config_carries_state_and_the_relays_slot() -> None:
    config = parse_worker_config(worker_file(), "worker.yaml")
    engine = config.engine_config()
    parts = conninfo_to_dict(engine.state_dsn)
    assert {k: parts[k] for k in ("user", "password", "host", "dbname")} == {
        "user": "walrelay",
        "password": "secret",
        "host": "state",
        "dbname": "db",
    }
    assert engine.source.slot == "main"
    dcfg = engine.destinations[0]
    sink = WebhookSink.from_config(dcfg.sink, context=None)  # type: ignore[arg-type]
    hook = ledger_hook(sink, engine, dcfg)
    # The relay's ledger namespace: ids are positions in the relay's slot.
    assert hook is not None and hook.ledger_key == "main/billing"


def test_state_dsn_is_required() -> None:
    with pytest.raises(ConfigError, match=r"state\.dsn"):
        parse_worker_config(worker_file(state={}), "worker.yaml")


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"worker": {"kafka": {"bootstrap": "k", "group": "g", "topics": []}}}, "topics"),
        ({"worker": {"kafka": {"bootstrap": "k", "group": "a b", "topics": ["t"]}}}, "group"),
        ({"wroker": {}}, "wroker: unknown setting"),
        (
            {
                "worker": {
                    "kafka": {
                        "bootstrap": "k",
                        "group": "g",
                        "topics": ["t"],
                        "options": {"enable.auto.commit": True},
                    }
                }
            },
            "options may not set enable.auto.commit",
        ),
    ],
)
def test_mistakes_are_one_line_naming_the_setting(over: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        parse_worker_config(worker_file(**over), "worker.yaml")
    assert "\n" not in str(info.value)


def test_cli_reports_a_bad_config_in_one_line_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "worker.yaml"
    path.write_text(yaml.safe_dump(worker_file(state={})))
    result = CliRunner().invoke(main, ["worker", "--config", str(path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line]
    assert len(lines) == 1 and "state.dsn" in lines[0]
    assert "secret" not in result.output


@pytest.mark.parametrize(
    ("sink", "expected"),
    [
        ({"type": "redis", "url": "redis://r/0"}, "stream entry ids"),
        ({"type": "file", "path": "/tmp/x.jsonl"}, "file sink"),
    ],
)
def test_sinks_that_need_id_order_are_refused(sink: dict[str, Any], expected: str) -> None:
    """Their replay check compares ids with the last written: a worker's events
    interleave partitions, so it would drop events as replays."""
    with pytest.raises(ConfigError, match=expected) as info:
        parse_worker_config(worker_file(destinations=[{"name": "d", "sink": sink}]), "w.yaml")
    assert "destination 'd'" in str(info.value)


def test_kafka_exactly_once_is_the_only_destination_of_its_worker() -> None:
    """It commits the group's offsets in its transactions: alone it is fine;
    beside another destination it is refused (one offset per partition)."""
    eos = {"name": "out", "sink": {"type": "kafka", "bootstrap_servers": "k:9092"}}
    parse_worker_config(worker_file(destinations=[eos]), "w.yaml")
    other = {"name": "hook", "sink": {"type": "webhook", "url": "http://h/x"}}
    with pytest.raises(ConfigError, match="only destination") as info:
        parse_worker_config(worker_file(destinations=[eos, other]), "w.yaml")
    assert "destination 'out'" in str(info.value) and "\n" not in str(info.value)


def test_kafka_at_least_once_is_fine_in_a_worker() -> None:
    sink = {"type": "kafka", "bootstrap_servers": "k:9092", "mode": "at_least_once"}
    parse_worker_config(worker_file(destinations=[{"name": "d", "sink": sink}]), "w.yaml")
