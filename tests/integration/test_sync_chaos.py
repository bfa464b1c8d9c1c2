"""bench/sync_chaos.py --short: 2 and 3 nodes under SIGKILLs and a node restart converge."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sync_chaos_short(tmp_path: Path) -> None:
    out = tmp_path / "sync_chaos.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sync_chaos.py"), "--short", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]
    report = json.loads(out.read_text())
    assert report["ok"]
    assert [s["nodes"] for s in report["scenarios"]] == [2, 3]
    for s in report["scenarios"]:
        assert s["identical"] and s["no_echo"]
        assert s["duplicates"] == s["applied_count_mismatch"] == s["lww_mismatches"] == 0
        # --short: 2 at random moments, 1 as the node goes down
        assert s["sigkills"] == 3 and s["node_outage"]["seconds"] > 0
        assert s["writes_committed"] > 20 and sum(s["conflicts"].values()) > 0
    print(result.stdout)
