"""Transforms in the Router: counted right for the safe LSN, fan out ids, a stopped
destination, failed events parked alone by the scheduler."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.transforms_support import BEGIN, CATALOG, CUSTOMERS, row
from walrelay.config import DestinationConfig
from walrelay.errors import SinkError
from walrelay.model import Change, Column, Relation
from walrelay.pipeline.backoff import Backoff
from walrelay.pipeline.envelope import EnvelopeBuilder
from walrelay.pipeline.lsn import LsnTracker
from walrelay.pipeline.router import Router
from walrelay.pipeline.scheduler import Destination
from walrelay.pipeline.transforms import build_chains
from walrelay.sinks.memory import MemorySink
from walrelay.source.types import TypeRegistry

HOOK = "tests.unit.transform_hooks"


def make(*configs: dict[str, Any]) -> tuple[Router, LsnTracker, dict[str, Destination]]:
    dcfgs = [DestinationConfig.model_validate({"sink": {"type": "stdout"}, **c}) for c in configs]
    dests = {d.name: Destination(d.name, MemorySink()) for d in dcfgs}
    tracker = LsnTracker()
    tracker.begin(BEGIN.commit_lsn)
    router = Router(
        dcfgs,
        dests,
        EnvelopeBuilder(TypeRegistry()),
        tracker,
        chains=build_chains(dcfgs, CATALOG),
    )
    return router, tracker, dests


def insert(i: int, region: str = "eu") -> Change:
    return Change(op="insert", relation=CUSTOMERS, new=row(i, region=region))


def dispatch(router: Router, change: Change, seq: int) -> None:
    event = router.build(BEGIN, change, seq)
    assert router.dispatch(event, router.routes_of(change)) is None


def test_filtered_events_are_not_counted_and_fan_out_reserves_ids() -> None:
    router, tracker, dests = make(
        {"name": "plain"},
        {"name": "us_only", "transforms": [{"filter": "record.region == 'us'"}]},
        {"name": "twice", "transforms": [{"python": f"{HOOK}:fan_out"}]},
    )
    dispatch(router, insert(1, "eu"), 0)
    assert router.take_extra_seqs() == 1  # "twice" sent ids 0 and 1
    router.flush_counts(BEGIN.commit_lsn)
    assert tracker.pending_events("plain") == 1
    assert tracker.pending_events("us_only") == 0  # filtered out: finished for the safe LSN
    assert tracker.pending_events("twice") == 2
    assert dests["twice"].buffered_events == 2
    assert router.take_extra_seqs() == 0


async def test_put_batch_counts_what_the_chain_keeps() -> None:
    router, tracker, dests = make(
        {"name": "us_only", "transforms": [{"filter": "record.region == 'us'"}]}
    )
    events = [router.build(BEGIN, insert(i, "us" if i % 2 else "eu"), i) for i in range(6)]
    await router.put_batch(BEGIN.commit_lsn, dests["us_only"], events)
    assert tracker.pending_events("us_only") == 3 == dests["us_only"].buffered_events


async def test_fan_out_on_a_snapshot_row_fails_the_row_instead_of_losing_events() -> None:
    router, _, dests = make({"name": "twice", "transforms": [{"python": f"{HOOK}:fan_out"}]})
    read = Change(op="read", relation=CUSTOMERS, new=row(1))
    await router.put_batch(BEGIN.commit_lsn, dests["twice"], [router.build(BEGIN, read, 0)])
    assert dests["twice"].buffered_events == 1 and dests["twice"].may_fail


def test_a_schema_change_stops_only_that_destination(caplog: pytest.LogCaptureFixture) -> None:
    router, tracker, dests = make(
        {"name": "plain"},
        {"name": "masked", "transforms": [{"mask": {"tables": ["customers"], "columns": ["ssn"]}}]},
    )
    renamed = Relation(
        oid=1,
        schema="public",
        name="customers",
        replica_identity="f",
        columns=(Column("id", 23, -1, True), Column("social", 25, -1, False)),
    )
    for seq in range(3):
        dispatch(router, Change(op="insert", relation=renamed, new=(b"1", b"123")), seq)
    router.flush_counts(BEGIN.commit_lsn)
    assert dests["plain"].buffered_events == 3
    assert dests["masked"].buffered_events == 0  # never sent unmasked
    assert tracker.pending_events("masked") == 3  # the slot stays behind them
    assert "needs column ssn" in router.halted["masked"]
    assert dests["masked"].last_error == router.halted["masked"]
    assert sum("needs column ssn" in r.getMessage() for r in caplog.records) == 1


async def test_the_scheduler_sends_a_failed_event_alone() -> None:
    from tests.unit import transform_hooks
    from walrelay.pipeline.transforms import ResumeHook

    transform_hooks.FAIL_FOR.add(3)
    dcfg = DestinationConfig.model_validate(
        {
            "name": "d",
            "sink": {"type": "stdout"},
            "transforms": [{"python": f"{HOOK}:fails_for_some"}],
        }
    )
    chain = build_chains([dcfg], CATALOG)["d"]
    sink = MemorySink(batch_size=10)
    failures: list[list[str]] = []

    class Park(ResumeHook):
        async def on_failure(self, batch: Any, error: BaseException, attempts: int) -> Any:
            failures.append([e.id for e in batch])
            assert isinstance(error, SinkError) and "enrichment service down" in str(error)
            transform_hooks.FAIL_FOR.clear()
            return "retry"

    dest = Destination(
        "d", sink, max_in_flight=10, hooks=[Park(chain)], backoff=Backoff(initial=0.001)
    )
    tracker = LsnTracker()
    router = Router(
        [dcfg], {"d": dest}, EnvelopeBuilder(TypeRegistry()), tracker, chains={"d": chain}
    )
    tracker.begin(BEGIN.commit_lsn)
    for i in range(5):
        dispatch(router, insert(i), i)
    dest.start()
    assert await dest.drain(10)
    await dest.stop()
    assert failures == [["0000000000001000/0000000003"]]
    assert [[e.id for e in b] for b in sink.batches][-1] == ["0000000000001000/0000000003"]  # alone
    assert sorted(e.seq for e in sink.delivered) == [0, 1, 2, 3, 4]
    assert all(e.failure is None and b'"enriched":true' in e.body for e in sink.delivered)


async def test_a_backfill_row_for_a_stopped_destination_is_never_sent() -> None:
    from walrelay.pipeline.transforms import ResumeHook

    router, _, _ = make(
        {"name": "masked", "transforms": [{"mask": {"tables": ["customers"], "columns": ["ssn"]}}]}
    )
    renamed = Relation(
        oid=1,
        schema="public",
        name="customers",
        replica_identity="f",
        columns=(Column("id", 23, -1, True), Column("social", 25, -1, False)),
    )
    read = Change(op="read", relation=renamed, new=(b"1", b"123-45"))
    shaped = router.shape("masked", router.build(BEGIN, read, 0))
    assert shaped is not None and shaped.failure is not None and b"123-45" not in shaped.body
    hook = ResumeHook(router.chains["masked"])
    for _ in range(2):  # the stored error, then "cannot be resumed": never sent
        with pytest.raises(SinkError):
            await hook.before_send([shaped])
