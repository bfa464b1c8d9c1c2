"""One destination's steps, run in the order written, on every row event.

:meth:`TransformChain.apply` is what the Router calls per event: the steps
that apply to the event's table (cached per table) run on the decoded
envelope; the result is re-encoded (``body``, ``key_json``, ``keys`` when
the key changed, ``route`` when ``route`` set a topic). A table no step
applies to costs one dict lookup: the event passes as it is. The envelope
of a table with json/jsonb columns (or one the Router did not build) is read
by :func:`walrelay.exact_json.loads`: a json column's numbers that a
double cannot hold (``12345678901234567890123``, ``0.1000000000000000000000001``,
``1e400``) come back as written (a step sees an int or a
:class:`~walrelay.exact_json.JsonNumber`; CEL sees a double).

A step that fails on an event (an exception from the python hook, a filter
that raised, a null ``key`` column...) does not stop anything: the event is
handed on *failed* (:attr:`Event.failure <walrelay.model.Event>`, its body
the envelope as it was before that step, behind a resume marker), so the
destination parks it in its key's order; parking's retries run the chain
again from that step (:class:`~walrelay.pipeline.transforms.resume.ResumeHook`).
Whatever the steps before it removed or masked is already gone from what is
parked.

A row lacking a column a step names (a Relation message dropped or renamed
it) is :class:`SchemaDrift`: the Router stops delivering to the destination
rather than send a column the step no longer catches.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import orjson

from walrelay import exact_json
from walrelay.errors import WalrelayError
from walrelay.exact_json import JSON_TYPE_OIDS
from walrelay.model import Event, Relation, Route
from walrelay.pipeline.envelope import encode_json
from walrelay.pipeline.transforms.base import ROW_OPS, Draft, Step, StepFailed
from walrelay.pipeline.transforms.cast import CastStep
from walrelay.pipeline.transforms.flatten import FlattenStep
from walrelay.pipeline.transforms.key import group_key
from walrelay.pipeline.transforms.python_hook import PythonStep

__all__ = ["RESUME_PREFIX", "SchemaDrift", "StepError", "TransformChain"]

log = logging.getLogger("walrelay.pipeline.transforms")

RESUME_PREFIX: Final = b'{"walrelay_resume":'
"""How a failed event's body starts (an envelope starts with ``{"id":``)."""

_SORT = orjson.OPT_SORT_KEYS
_HERE = os.path.dirname(__file__)


class SchemaDrift(WalrelayError):
    """A row lacks a column a step of the destination needs."""


class StepError(Exception):
    """A step failed again on a parked event (for the resume hook)."""


def _message_key(key: Any) -> str | None:
    return None if key is None else exact_json.dumps(key, option=_SORT).decode()


class TransformChain:
    """The steps of one destination (made by :func:`~.build.build_chain`)."""

    def __init__(
        self,
        destination: str,
        steps: Sequence[Step],
        required: Mapping[str, Sequence[tuple[Step, str]]] | None = None,
    ) -> None:
        self.destination = destination
        self.steps = tuple(steps)
        # Per table, the (step, original column) pairs its rows must keep having;
        # None: not checked (no catalog).
        self._required = required
        self._by_table: dict[str, tuple[Step, ...]] = {}
        # The Router's relation of a table (column types), when it built the
        # events: a table without json columns is read by orjson alone.
        self.relation: Callable[[str], Relation | None] | None = None
        self._plain: dict[str, tuple[Relation, bool]] = {}
        self._flatten = {s.index: s for s in steps if isinstance(s, FlattenStep)}
        self.failed_total = 0
        # Whether a python step is a batch function (then apply_many batches).
        self.batched = any(isinstance(s, PythonStep) and s.batch for s in steps)

    def steps_for(self, table: str) -> tuple[Step, ...]:
        steps = self._by_table.get(table)
        if steps is None:
            steps = tuple(s for s in self.steps if s.applies_to(table))
            self._by_table[table] = steps
        return steps

    # -- the Router's call ----------------------------------------------------------

    def apply(self, event: Event) -> Event | list[Event] | None:
        """``event`` as the destination gets it: one event, several (python fan
        out; ids ``seq``, ``seq+1``... -- the Router has them reserved), or None
        (dropped). Raises :class:`SchemaDrift`."""
        if event.op not in ROW_OPS:
            return event
        steps = self.steps_for(event.table)
        if not steps:
            return event
        env = self._read(event)
        self._check_columns(event, env)
        out = self._run(Draft(event, env), steps, 0)
        if not out:
            return None
        if len(out) == 1:
            return out[0]
        for i, child in enumerate(out):
            child.seq = event.seq + i
        return out

    def _read(self, event: Event) -> dict[str, Any]:
        """The envelope, every number exact (a json column's big numbers)."""
        relation = self.relation
        rel = relation(event.table) if relation is not None else None
        if rel is not None:
            known = self._plain.get(event.table)
            if known is None or known[0] is not rel:
                known = (rel, not any(c.type_oid in JSON_TYPE_OIDS for c in rel.columns))
                self._plain[event.table] = known
            if known[1]:
                value: dict[str, Any] = orjson.loads(event.body)
                return value
        env: dict[str, Any] = exact_json.loads(event.body)
        return env

    def _check_columns(self, event: Event, env: dict[str, Any]) -> None:
        required = self._required
        if required is None:
            return
        record = env.get("record")
        if not isinstance(record, dict):
            return  # a delete: its old row may hold only the key
        for step, column in required.get(event.table, ()):
            if column not in record and column not in (env.get("unchanged") or ()):
                raise SchemaDrift(
                    f"destination {self.destination}: {step.label} needs column {column} "
                    f"of {event.table}, which its rows no longer have (a schema change); "
                    "delivery to this destination is stopped so that nothing is sent "
                    "unmasked",
                    fix="update the destination's transforms to the new columns and "
                    "restart walrelay (its events are delivered then)",
                )

    def apply_many(self, events: Sequence[Event]) -> list[Event | list[Event] | None]:
        """:meth:`apply` over ``events`` (one result per event, in order), with
        each batch python step called once for all the events that reach it.
        Raises :class:`SchemaDrift`."""
        if not self.batched:
            return [self.apply(e) for e in events]
        results: list[list[Event] | Event] = []
        # Drafts waiting at a batch step: (event index, draft, its table's steps, position).
        pending: list[tuple[int, Draft, tuple[Step, ...], int]] = []
        for i, event in enumerate(events):
            steps = self.steps_for(event.table) if event.op in ROW_OPS else ()
            if not steps:
                results.append(event)
                continue
            env = self._read(event)
            self._check_columns(event, env)
            waiting: list[tuple[Draft, int]] = []
            results.append(self._run(Draft(event, env), steps, 0, waiting))
            pending.extend((i, d, steps, p) for d, p in waiting)
        while pending:
            # The earliest step first: every draft that will reach it is there.
            step = min((st[p] for _, _, st, p in pending), key=lambda s: s.index)
            now = [w for w in pending if w[2][w[3]] is step]
            pending = [w for w in pending if w[2][w[3]] is not step]
            assert isinstance(step, PythonStep)
            outcomes = self._run_batch(step, [w[1] for w in now])
            for (i, _, steps, pos), outcome in zip(now, outcomes, strict=True):
                out = results[i]
                assert isinstance(out, list)
                if isinstance(outcome, Event):
                    out.append(outcome)
                    continue
                for draft in outcome:
                    waiting = []
                    out.extend(self._run(draft, steps, pos + 1, waiting))
                    pending.extend((i, d, steps, p) for d, p in waiting)
        final: list[Event | list[Event] | None] = []
        for event, out in zip(events, results, strict=True):
            if isinstance(out, Event):
                final.append(out)
            elif not out:
                final.append(None)
            elif len(out) == 1:
                final.append(out[0])
            else:
                for n, child in enumerate(out):
                    child.seq = event.seq + n
                final.append(out)
        return final

    def _run_batch(self, step: PythonStep, drafts: list[Draft]) -> list[Event | list[Draft]]:
        """One call of a batch function: per draft, the drafts to go on with
        (none: dropped) or its failed event. An exception fails them all."""
        step.events_in += len(drafts)
        before = [_snapshot(d) for d in drafts]
        try:
            outcomes = step.run_many(drafts)
        except Exception as e:
            step.errors += len(drafts)
            self.failed_total += len(drafts)
            text = self._failure_text(step, e)
            for draft, env in zip(drafts, before, strict=True):
                draft.env = env
            return [self._failed(d, step.index, text, None) for d in drafts]
        out: list[Event | list[Draft]] = []
        for draft, env, outcome in zip(drafts, before, outcomes, strict=True):
            if isinstance(outcome, StepFailed):
                step.errors += 1
                self.failed_total += 1
                draft.env = env
                out.append(self._failed(draft, step.index, self._failure_text(step, outcome), None))
            elif outcome is None:
                step.dropped += 1
                out.append([])
            else:
                out.append(outcome if isinstance(outcome, list) else [outcome])
        return out

    def _run(
        self,
        first: Draft,
        steps: Sequence[Step],
        start: int,
        waiting: list[tuple[Draft, int]] | None = None,
    ) -> list[Event]:
        """The events ``first`` becomes from ``steps[start:]``. With ``waiting``,
        a draft that reaches a batch python step stops there and is added to it
        (for :meth:`apply_many` to call the step once for many)."""
        out: list[Event] = []
        todo: list[tuple[Draft, int]] = [(first, start)]
        while todo:
            draft, pos = todo.pop()
            kept: Draft | list[Draft] | None = draft
            while pos < len(steps):
                step = steps[pos]
                if waiting is not None and isinstance(step, PythonStep) and step.batch:
                    waiting.append((draft, pos))
                    kept = None
                    break
                step.events_in += 1
                # Steps that may change the row before raising: keep it as it was.
                before = _snapshot(draft) if isinstance(step, PythonStep | CastStep) else None
                try:
                    kept = step.run(draft)
                except Exception as e:
                    step.errors += 1
                    self.failed_total += 1
                    text = self._failure_text(step, e)
                    if before is not None:
                        draft.env = before
                    out.append(self._failed(draft, step.index, text, None))
                    kept = None
                    break
                if kept is None:
                    step.dropped += 1
                    break
                pos += 1
                if isinstance(kept, list):
                    todo.extend((d, pos) for d in reversed(kept))
                    kept = None
                    break
                draft = kept
            if isinstance(kept, Draft):
                out.append(self._finish(kept))
        return out

    def _failure_text(self, step: Step, error: BaseException) -> str:
        where = f"destination {self.destination}: {step.label}"
        if isinstance(error, StepFailed):
            return f"{where}: {error}"
        frames = error.__traceback__
        while frames is not None and frames.tb_frame.f_code.co_filename.startswith(_HERE):
            frames = frames.tb_next  # the user's frames only
        tb = traceback.format_exception(type(error), error, frames)
        return f"{where} raised {type(error).__name__}: {error}\n" + "".join(tb)

    # -- encoding -------------------------------------------------------------------

    def _finish(self, draft: Draft) -> Event:
        event = draft.event
        env = draft.env
        key = env.get("key")
        key_json = encode_json(key)
        keys = draft.keys
        if keys is None and key_json != event.key_json and isinstance(key, dict):
            keys = _regrouped(event, env, key)  # a key column was hashed, masked, renamed...
        body_obj: Any = env
        if draft.flat is not None:
            body_obj = self._flatten[draft.flat].flattened(draft)
        body = encode_json(body_obj)
        route = None
        if draft.topic is not None:
            route = Route(draft.topic, _message_key(key), body)
        return Event(
            event.commit_lsn,
            event.seq,
            event.op,
            event.table,
            keys if keys is not None else event.keys,
            body,
            event.xid,
            event.committed_at,
            route,
            key_json,
        )

    def _failed(self, draft: Draft, index: int, text: str, like: Event | None) -> Event:
        event = like or draft.event
        marker = {
            "step": index,
            "topic": draft.topic,
            "keys": list(draft.keys) if draft.keys is not None else None,
            "flat": draft.flat,
        }
        body = b"".join(
            (RESUME_PREFIX, encode_json(marker), b',"envelope":', encode_json(draft.env), b"}")
        )
        return Event(
            event.commit_lsn,
            event.seq,
            event.op,
            event.table,
            draft.keys if draft.keys is not None else event.keys,
            body,
            event.xid,
            event.committed_at,
            None,
            None,
            text,
        )

    # -- parking's retries --------------------------------------------------------------

    def resume(self, event: Event) -> Event | None:
        """Run a failed event's remaining steps (from the one that failed).

        Returns the event to send, or None (dropped). Raises :class:`StepError`
        when a step fails again (the text is the new traceback).
        """
        data = exact_json.loads(event.body)
        marker = data["walrelay_resume"]
        env = data["envelope"]
        draft = Draft(event, env)
        draft.topic = marker.get("topic")
        keys = marker.get("keys")
        draft.keys = tuple(keys) if keys is not None else None
        draft.flat = marker.get("flat")
        steps = self.steps_for(event.table)
        if marker["step"] < 0:
            raise StepError(event.failure or f"parked event {event.id} cannot be resumed")
        start = next((i for i, s in enumerate(steps) if s.index == marker["step"]), len(steps))
        failed_before = self.failed_total
        out = self._run(draft, steps, start)
        if self.failed_total != failed_before:
            failure = next((e.failure for e in out if e.failure is not None), "failed")
            raise StepError(failure)
        if not out:
            return None
        if len(out) > 1:
            raise StepError(
                f"destination {self.destination}: a python step returned {len(out)} events for "
                f"parked event {event.id}; fan out works on streamed changes only"
            )
        return out[0]


def _regrouped(event: Event, env: dict[str, Any], key: dict[str, Any]) -> tuple[str, ...]:
    """Grouping keys from the transformed key, so that no raw key value a step
    changed is kept beside the event (the parked-events table stores keys)."""
    keys: tuple[str, ...] = (group_key(event.table, key),)
    old = env.get("old")
    if len(event.keys) == 2 and isinstance(old, dict) and all(c in old for c in key):
        old_key = group_key(event.table, {c: old[c] for c in key})
        if old_key != keys[0]:
            keys = (keys[0], old_key)
    return keys


def _snapshot(draft: Draft) -> dict[str, Any]:
    """A copy of the envelope and its rows before a python step (which may change
    them in place before raising): what is parked when it raises."""
    env = dict(draft.env)
    for name in ("record", "old", "key"):
        value = env.get(name)
        if isinstance(value, dict):
            env[name] = dict(value)
    return env
