"""The dashboard's server-side history: what a sample holds, and its bound."""

from __future__ import annotations

from typing import Any

from walrelay.web.history import History


def status(t: float) -> dict[str, Any]:
    return {
        "time": t,
        "destinations": [{"name": "hook", "events_out": int(t) * 10, "lag": 2.5, "sink": "x"}],
        "slots": [{"name": "orders", "retained_bytes": 4096, "active": True}],
    }


def test_history_keeps_a_bounded_window_of_what_the_charts_draw() -> None:
    clock = iter(range(100))
    history = History(lambda: status(float(next(clock))), interval=5.0, keep_seconds=60.0)
    for _ in range(30):
        history.sample()
    doc = history.to_dict()
    assert doc["interval"] == 5.0
    assert len(doc["points"]) == 12  # 60 s / 5 s: older samples are dropped
    assert [p["t"] for p in doc["points"]] == [float(t) for t in range(18, 30)]
    assert doc["points"][-1] == {
        "t": 29.0,
        "destinations": {"hook": {"events_out": 290, "lag": 2.5}},
        "slots": {"orders": 4096},
    }


def test_a_status_without_delivery_counts_still_samples() -> None:
    """A worker's or a sync's document may lack fields the engine's has: the
    sample counts what is there and never fails on what is not."""
    doc = {"time": 1.0, "destinations": [{"name": "hook", "delivered": 3}]}
    history = History(lambda: doc, interval=5.0)
    history.sample()
    assert history.to_dict()["points"] == [
        {"t": 1.0, "destinations": {"hook": {"events_out": 0, "lag": 0.0}}, "slots": {}}
    ]
