"""``walrelay status`` for a sync's file: which file is a sync's, and the table."""

from __future__ import annotations

from pathlib import Path

from walrelay.sync.config import is_sync_file
from walrelay.sync.status import render_sync_status


def test_a_sync_file_is_told_from_the_engine_and_worker_files(tmp_path: Path) -> None:
    files = {
        "sync.yaml": ("sync: {name: crm}\n", True),
        "run.yaml": ("source: {dsn: x}\n", False),
        "worker.yaml": ("worker: {name: w}\n", False),
        "bad.yaml": ("sync: [\n", False),
    }
    for name, (text, expected) in files.items():
        (tmp_path / name).write_text(text)
        assert is_sync_file(tmp_path / name) is expected, name
    assert not is_sync_file(tmp_path / "missing.yaml")


def test_the_table_shows_each_direction_lag_and_conflicts() -> None:
    direction = {
        "direction": "eu->us",
        "connected": True,
        "applied_transactions": 12,
        "applied_changes": 30,
        "lag_bytes": 2048,
        "lag_seconds": 1.5,
        "conflicts": {"update_origin_differs": 2, "insert_exists": 1},
    }
    waiting = {
        **direction,
        "direction": "us->eu",
        "connected": False,
        "lag_bytes": None,
        "lag_seconds": 0.0,
        "conflicts": {},
    }
    doc = {
        "state": "streaming",
        "sync": {
            "name": "crm",
            "nodes": [
                {
                    "node": "eu",
                    "slot": "walrelay_sync_crm_eu",
                    "connected": True,
                    "wal_lsn": "0/16B3748",
                    "transactions_read": 12,
                    "echoes_dropped": 4,
                },
            ],
            "directions": [direction, waiting],
        },
    }
    text = render_sync_status(doc)
    eu_us = next(line for line in text.splitlines() if line.strip().startswith("eu->us"))
    assert "connected" in eu_us and "2.0 kB" in eu_us and "1.5s" in eu_us
    assert "insert_exists 1, update_origin_differs 2" in eu_us
    us_eu = next(line for line in text.splitlines() if line.strip().startswith("us->eu"))
    assert "waiting" in us_eu and " ? " in us_eu and us_eu.endswith("none")
    assert text.splitlines()[0] == "sync crm (streaming)"
