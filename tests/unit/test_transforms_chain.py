"""The chain: order, the python hook, failures, resumption, schema changes, the catalog."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.unit import transform_hooks
from tests.unit.transforms_support import CATALOG, chain, env, event
from walrelay.errors import ConfigError, SinkError
from walrelay.model import Event
from walrelay.pipeline.transforms import ResumeHook, SchemaDrift, StepError

HOOK = "tests.unit.transform_hooks"


def test_steps_run_in_the_order_written() -> None:
    # rename first, then exclude by the new name; the other order leaves the column.
    first = chain({"rename": {"columns": {"ssn": "tax_id"}}}, {"exclude": ["tax_id"]})
    assert "tax_id" not in env(first.apply(event()))["record"]
    with pytest.raises(
        ConfigError, match=r"step 2 \(rename\): no table it applies to has column ssn"
    ):
        chain({"exclude": ["ssn"]}, {"rename": {"columns": {"ssn": "tax_id"}}})


def test_python_hook_changes_drops_and_fans_out() -> None:
    assert env(chain({"python": f"{HOOK}:identity"}).apply(event()))["record"]["id"] == 1
    assert chain({"python": f"{HOOK}:drop_eu"}).apply(event(region="eu")) is None
    out = chain({"python": f"{HOOK}:fan_out"}).apply(event(seq=5))
    assert isinstance(out, list) and [e.seq for e in out] == [5, 6]
    assert orjson.loads(out[1].body)["copy"] is True


def test_python_hook_import_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="cannot import no_such_module"):
        chain({"python": "no_such_module:f"})
    with pytest.raises(ConfigError, match="has no function 'nope'"):
        chain({"python": f"{HOOK}:nope"})


def test_a_raising_hook_fails_the_event_with_its_traceback_and_nothing_excluded() -> None:
    transform_hooks.FAIL_FOR.add(7)
    try:
        c = chain({"exclude": ["ssn"]}, {"python": f"{HOOK}:fails_for_some"})
        out = c.apply(event(i=7))
        assert isinstance(out, Event) and out.failure is not None
        assert "enrichment service down for 7" in out.failure
        assert "Traceback" in out.failure and "fails_for_some" in out.failure
        assert b"123-45-6789" not in out.body and b"half_done" not in out.body
        assert c.steps[1].errors == 1
        # Another key flows.
        ok = c.apply(event(i=8))
        assert isinstance(ok, Event) and ok.failure is None
        assert env(ok)["record"]["enriched"] is True
    finally:
        transform_hooks.FAIL_FOR.clear()


def test_resume_runs_the_failed_step_again() -> None:
    transform_hooks.FAIL_FOR.add(7)
    c = chain({"exclude": ["ssn"]}, {"python": f"{HOOK}:fails_for_some"}, {"key": ["region"]})
    failed = c.apply(event(i=7))
    assert isinstance(failed, Event)
    hook = ResumeHook(c)
    # First attempt: the stored failure, nothing sent.
    with pytest.raises(SinkError, match="enrichment service down"):
        asyncio.run(hook.before_send([failed]))
    # Still failing: a new traceback.
    with pytest.raises(SinkError, match="Traceback"):
        asyncio.run(hook.before_send([failed]))
    with pytest.raises(StepError):
        c.resume(failed)
    transform_hooks.FAIL_FOR.clear()
    (sent,) = asyncio.run(hook.before_send([failed]))
    body = orjson.loads(sent.body)
    assert body["record"]["enriched"] is True and "ssn" not in body["record"]
    assert sent.key_json == b'{"region":"eu"}' and sent.id == failed.id


def test_hook_returning_the_wrong_type_fails_the_event() -> None:
    out = chain({"python": f"{HOOK}:wrong_type"}).apply(event())
    assert isinstance(out, Event) and out.failure is not None and "returned a int" in out.failure


def test_catalog_check_names_step_table_and_column() -> None:
    with pytest.raises(ConfigError, match=r"step 1 \(mask\): table public.nope is not published"):
        chain({"mask": {"tables": ["nope"], "columns": ["x"]}})
    with pytest.raises(
        ConfigError, match=r"step 1 \(exclude\): table public.customers has no column phone"
    ):
        chain({"exclude": {"tables": ["customers"], "columns": ["phone"]}})
    with pytest.raises(ConfigError, match=r"matches no published table"):
        chain({"exclude": {"tables": ["x.*"], "columns": ["ssn"]}})
    # A step for all tables needs the column in one of them only.
    chain({"exclude": ["ssn"]})
    assert set(CATALOG) == {"public.customers", "public.orders"}


def test_a_row_without_a_column_a_step_needs_is_a_schema_drift() -> None:
    c = chain({"mask": {"tables": ["customers"], "columns": ["ssn"]}})
    from tests.unit.transforms_support import _BUILDER, BEGIN
    from walrelay.model import Change, Column, Relation

    renamed = Relation(
        oid=1,
        schema="public",
        name="customers",
        replica_identity="f",
        columns=(Column("id", 23, -1, True), Column("social", 25, -1, False)),
    )
    e = _BUILDER.build(BEGIN, Change(op="insert", relation=renamed, new=(b"1", b"123")), 0)
    with pytest.raises(SchemaDrift, match=r"step 1 \(mask\) needs column ssn of public.customers"):
        c.apply(e)


def test_a_cast_failing_half_way_parks_the_row_as_it_was() -> None:
    c = chain({"cast": {"columns": {"amount": "number", "email": "number"}}})
    failed = c.apply(event())
    assert isinstance(failed, Event) and failed.failure is not None
    parked = orjson.loads(failed.body)["envelope"]["record"]
    assert parked["amount"] == "12.50"  # not half cast
