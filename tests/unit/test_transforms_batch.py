"""Batch python functions (``python: {function: ..., batch: true}``): one call
per snapshot chunk, one-element lists on the stream, failures per call."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.unit import transform_hooks
from tests.unit.test_transforms_router import insert, make
from tests.unit.transforms_support import BEGIN, CUSTOMERS, chain, env, event, row
from walrelay.errors import SinkError
from walrelay.model import Change, Event
from walrelay.pipeline.transforms import ResumeHook
from walrelay.transform_config import PythonStepConfig

HOOK = "tests.unit.transform_hooks"


def batch(name: str, **kw: Any) -> dict[str, Any]:
    return {"python": {"function": f"{HOOK}:{name}", "batch": True, **kw}}


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    transform_hooks.BATCH_CALLS.clear()
    transform_hooks.FAIL_FOR.clear()
    yield
    transform_hooks.BATCH_CALLS.clear()
    transform_hooks.FAIL_FOR.clear()


def reads(n: int) -> list[Event]:
    return [event("read", i=i, seq=i, region="us" if i % 2 else "eu") for i in range(n)]


def test_config_marks_the_function_as_batch() -> None:
    step = PythonStepConfig.model_validate({"kind": "python", "function": "m:f", "batch": True})
    assert step.batch is True
    assert chain(batch("batch_enrich")).batched
    assert not chain({"python": f"{HOOK}:identity"}).batched


def test_apply_many_calls_a_batch_function_once_for_the_whole_chunk() -> None:
    c = chain({"exclude": ["ssn"]}, batch("batch_enrich"))
    events = reads(6)
    out = c.apply_many(events)
    assert transform_hooks.BATCH_CALLS == [[0, 1, 2, 3, 4, 5]]
    assert [o is None for o in out] == [True, False] * 3  # eu rows dropped, in place
    for src, o in zip(events, out, strict=True):
        if o is not None:
            assert isinstance(o, Event) and o.id == src.id
            assert env(o)["record"]["batch_size"] == 6 and "ssn" not in env(o)["record"]
    assert c.steps[1].events_in == 6 and c.steps[1].dropped == 3


def test_two_batch_steps_each_run_once_and_per_table_scoping_holds() -> None:
    c = chain(
        batch("batch_enrich"),
        {"filter": "record.id != 5"},
        batch("batch_tag", tables=["customers"]),
    )
    out = c.apply_many(reads(6))
    assert transform_hooks.BATCH_CALLS == [[0, 1, 2, 3, 4, 5], [1, 3]]
    kept = [o for o in out if o is not None]
    assert [env(o)["record"]["id"] for o in kept] == [1, 3]
    assert all(env(o)["tagged"] is True for o in kept)


def test_the_stream_path_calls_a_batch_function_with_one_event() -> None:
    c = chain(batch("batch_enrich"))
    out = c.apply(event(i=3, region="us"))
    assert transform_hooks.BATCH_CALLS == [[3]]
    assert isinstance(out, Event) and env(out)["record"]["batch_size"] == 1
    assert c.apply(event(i=4, region="eu")) is None


def test_an_exception_fails_every_event_of_the_call_and_resumes_one_by_one() -> None:
    transform_hooks.FAIL_FOR.add(3)
    c = chain({"exclude": ["ssn"]}, batch("batch_enrich"))
    out = c.apply_many(reads(4))
    assert all(isinstance(o, Event) and o.failure is not None for o in out)
    for o in out:
        assert isinstance(o, Event) and o.failure is not None
        assert "lookup service down for 3" in o.failure and "Traceback" in o.failure
        assert "batch_enrich" in o.failure
        assert b"123-45-6789" not in o.body and b"half_done" not in o.body
    assert c.steps[1].errors == 4
    # Parking's retry: the failed step again, alone; id 1 goes through, 3 still fails.
    hook = ResumeHook(c)
    failed: dict[int, Event] = {env_id(o): o for o in out if isinstance(o, Event)}
    with pytest.raises(SinkError, match="lookup service down"):
        asyncio.run(hook.before_send([failed[1]]))  # the stored failure first
    (sent,) = asyncio.run(hook.before_send([failed[1]]))
    assert orjson.loads(sent.body)["record"]["batch_size"] == 1
    assert sent.id == failed[1].id
    with pytest.raises(SinkError):
        asyncio.run(hook.before_send([failed[3]]))
    with pytest.raises(SinkError, match="lookup service down for 3"):
        asyncio.run(hook.before_send([failed[3]]))


def env_id(o: Event | list[Event] | None) -> int:
    assert isinstance(o, Event)
    data = orjson.loads(o.body)
    return int(data["envelope"]["record"]["id"])


def test_a_result_of_the_wrong_length_fails_all_and_a_wrong_item_only_its_event() -> None:
    out = chain(batch("batch_short")).apply_many(reads(3))
    for o in out:
        assert isinstance(o, Event) and o.failure is not None
        assert "returned 2 items for 3 event(s)" in o.failure
    out = chain(batch("batch_one_bad")).apply_many(reads(3))
    failed = [isinstance(o, Event) and o.failure is not None for o in out]
    assert failed == [False, False, True]
    assert "returned a int" in (out[2].failure or "")  # type: ignore[union-attr]


async def test_put_batch_hands_the_chunk_to_the_function_at_once() -> None:
    router, tracker, dests = make({"name": "enriched", "transforms": [batch("batch_enrich")]})
    snap = [
        router.build(BEGIN, Change(op="read", relation=CUSTOMERS, new=row(i, region="us")), i)
        for i in range(5)
    ]
    await router.put_batch(BEGIN.commit_lsn, dests["enriched"], snap)
    assert transform_hooks.BATCH_CALLS == [[0, 1, 2, 3, 4]]
    assert tracker.pending_events("enriched") == 5 == dests["enriched"].buffered_events
    # The stream: one event per call, ids and counts as for any hook.
    event = router.build(BEGIN, insert(9, "us"), 7)
    assert router.dispatch(event, router.routes_of(insert(9, "us"))) is None
    router.flush_counts(BEGIN.commit_lsn)
    assert transform_hooks.BATCH_CALLS[-1] == [9]
    assert tracker.pending_events("enriched") == 6
