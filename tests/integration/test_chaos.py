"""bench/chaos.py --short: SIGKILLs under load and a Redis restart, judged by the checker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_chaos_short(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--short", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"]
    assert report["workload"]["changes_committed"] == 5000
    assert report["chaos"]["sigkills"] == 3 and report["chaos"]["redis_outage_seconds"] > 0
    pg = report["postgres"]
    assert pg["target_equals_source"]
    assert pg["lost"] == pg["duplicates"] == pg["reordered"] == pg["aborted"] == 0
    hook = report["webhook"]
    assert hook["lost"] == hook["id_changed"] == hook["aborted"] == hook["unexpected"] == 0
    assert report["lsn_backwards"] == 0 and report["lsn_samples"] > 10
    print(result.stdout)


@pytest.mark.servers
def test_chaos_short_kafka_exactly_once(tmp_path: Path) -> None:
    """The same chaos with a Kafka destination in exactly_once mode: a read_committed
    reader sees every (key, version) once, in per-key order, nothing else."""
    out = tmp_path / "chaos.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "chaos.py"),
            "--short",
            "--kafka",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"]
    assert report["chaos"]["sigkills"] == 3
    assert report["postgres"]["ok"] and report["webhook"]["ok"]
    kafka = report["kafka"]
    assert kafka["ok"], kafka["summary"]
    assert kafka["messages"] == kafka["expected"] == report["workload"]["changes_committed"]
    assert kafka["lost"] == kafka["duplicates"] == kafka["reordered"] == 0
    assert kafka["aborted"] == kafka["unexpected"] == kafka["id_collisions"] == 0
    assert kafka["keys_in_several_partitions"] == 0 and kafka["partitions"] > 1
    assert report["lsn_backwards"] == 0
    print(result.stdout)
