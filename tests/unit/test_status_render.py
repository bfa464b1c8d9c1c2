"""`walrelay status` text: snapshot and backfill progress next to the destinations."""

from __future__ import annotations

from typing import Any

from walrelay.monitor.status import render_status
from walrelay.source.snapshot import Progress


def engine_doc(progress: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "source": "engine",
        "state": "streaming",
        "slot": "walrelay",
        "publication": "walrelay_pub",
        "confirmed_lsn": "0/16B3748",
        "destinations": [],
        "slots": [],
        "alerts": [],
        "progress": progress,
    }


def test_progress_of_snapshots_and_backfills_is_shown() -> None:
    running = Progress("snapshot", "public.orders", ("audit", "billing"), rows_estimated=1000)
    running.rows_done = 250
    done = Progress("backfill", "public.users", ("audit",), rows_estimated=10, backfill_id=7)
    done.rows_done = 12  # the estimate was low
    done.finish()
    text = render_status(engine_doc([running.to_dict(), done.to_dict()]), "http://x")
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("LOAD"))
    assert lines[header].split() == [
        "LOAD",
        "TABLE",
        "DESTINATIONS",
        "STATE",
        "ROWS",
        "RATE",
        "ETA",
    ]
    snap = lines[header + 1].split()
    assert snap[:5] == ["snapshot", "public.orders", "audit,billing", "running", "250/~1000"]
    back = lines[header + 2].split()
    assert back[:6] == ["backfill", "#7", "public.users", "audit", "done", "12/~12"]
    assert back[-1] == "-"  # no ETA once finished


def test_no_progress_table_without_loads() -> None:
    assert "LOAD" not in render_status(engine_doc([]), "http://x")
