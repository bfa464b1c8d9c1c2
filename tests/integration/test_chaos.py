"""bench/chaos.py --short: SIGKILLs under load and a Redis restart, judged by the checker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
