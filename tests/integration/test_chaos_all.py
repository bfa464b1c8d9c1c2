"""bench/chaos.py --all --short: every sink at once through database, broker and link faults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.servers
def test_chaos_all_short(tmp_path: Path) -> None:
    out = tmp_path / "chaos-all.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--all", "--short", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"]
    assert report["chaos"]["sigkills"] == 15
    faults = [f["fault"] for f in report["chaos"]["faults"]]
    assert faults.count("source_restart") == 3
    for fault in ("kill_kafka", "kill_nats", "kill_rabbitmq", "kill_redis_streams"):
        assert fault in faults
    for fault in ("cut_source", "cut_webhook", "cut_target", "ledger_lost", "target_restart"):
        assert fault in faults
    assert "rename" in faults and "invalidate_slot" in faults
    sinks = report["sinks"]
    assert set(sinks) == {"file", "pg", "webhook", "kafka", "nats", "redis", "rabbitmq"}
    for name, row in sinks.items():
        assert row["lost"] == row["reordered"] == row["aborted"] == 0, (name, row)
        assert row["duplicates_with_another_id"] == 0, (name, row)
        if row["transactional"]:
            assert row["duplicates"] == 0, (name, row)
        assert row["resnapshot_events"] > 0, (name, row)  # the slot was invalidated once
    assert report["postgres_target_equals_source"]
    assert report["renamed_table"]["ok"] and report["renamed_table"]["events_after_rename"] > 0
    assert report["lsn_backwards"] == 0 and report["lsn_samples"] > 10
    print(result.stdout)
