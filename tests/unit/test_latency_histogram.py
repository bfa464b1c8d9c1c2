"""LatencyHistogram: commit -> finished seconds, one observation per transaction run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.factories import make_event
from walrelay.monitor.metrics import BUCKETS, LatencyHistogram

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_each_event_counts_with_its_transactions_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("walrelay.monitor.metrics.time.time", NOW.timestamp)
    ago = [0.001, 0.02, 3.0, 0.02]  # four transactions, committed this long before NOW
    sizes = [1, 3, 2, 1]
    batch = [
        make_event(0x100 + t, seq, committed_at=NOW - timedelta(seconds=ago[t]))
        for t, n in enumerate(sizes)
        for seq in range(n)
    ]
    hist = LatencyHistogram()
    hist.observe_batch("d", batch)
    hist.observe_batch("d", [])
    series = hist.series["d"]
    expected = [0] * (len(BUCKETS) + 1)
    for latency, n in zip(ago, sizes, strict=True):
        expected[next(i for i, bound in enumerate(BUCKETS) if latency <= bound)] += n
    assert series.counts == expected
    assert series.total == sum(sizes)
    assert series.sum == pytest.approx(sum(a * n for a, n in zip(ago, sizes, strict=True)))
    assert hist.last["d"] == pytest.approx(ago[-1])
    # A commit time in the future (clock skew) counts as 0, in the first bucket.
    hist.observe_batch("d", [make_event(0x200, committed_at=NOW + timedelta(seconds=1))])
    assert series.counts[0] == expected[0] + 1 and series.total == sum(sizes) + 1
    assert hist.cumulative("d")[-1] == ("+Inf", float(sum(sizes) + 1))
