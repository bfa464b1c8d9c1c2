"""``python: module:function``: a user's function over the event.

Called with the envelope as a dict (``id``, ``op``, ``table``, ``key``,
``record``, ``old``, ...). It returns the dict to send (changed or new),
``None`` to drop the event, or a list of dicts to send several (stream only).
The function is imported at start (an import error is a config error); an
exception it raises parks the event with the traceback as its error, in its
key's order, and parking retries it later like any failed delivery.

``python: {function: module:function, batch: true}`` marks the function as a
batch function: it is called with a *list* of envelope dicts and returns a
list of the same length, item ``i`` being what event ``i`` becomes (a dict,
``None`` or a list of dicts, as above). Initial snapshot chunks reach it
whole (:meth:`TransformChain.apply_many
<walrelay.pipeline.transforms.chain.TransformChain.apply_many>`); streamed
changes, backfill rows and parking's retries one at a time, as one-element
lists. An exception fails every event of the call.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from walrelay.errors import ConfigError
from walrelay.pipeline.transforms.base import Draft, Step, StepFailed

__all__ = ["PythonStep", "load_function"]

UserFunction = Callable[[Any], Any]  # an envelope dict, or a list of them (batch)


def load_function(spec: str, where: str) -> UserFunction:
    """Import ``module:function``; any failure is a ConfigError naming it."""
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise ConfigError(
            f"{where}: cannot import {module_name} for python {spec!r}: {type(e).__name__}: {e}",
            fix="make the module importable (PYTHONPATH, or install its package)",
        ) from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(
            f"{where}: module {module_name} has no function {name!r}",
            fix=f"define def {name}(event: dict) -> dict | list | None in {module_name}",
        )
    return fn  # type: ignore[no-any-return]


class PythonStep(Step):
    """Runs the user's function; its exceptions propagate (the chain parks the event)."""

    kind = "python"

    def __init__(
        self,
        index: int,
        tables: Sequence[str] | None,
        spec: str,
        fn: UserFunction,
        *,
        batch: bool = False,
    ) -> None:
        super().__init__(index, tables)
        self.spec = spec
        self.batch = batch
        self._fn = fn

    def run(self, draft: Draft) -> Draft | list[Draft] | None:
        if self.batch:
            outcome = self.run_many([draft])[0]
            if isinstance(outcome, StepFailed):
                raise outcome
            return outcome
        return self._outcome(draft, self._fn(draft.env))

    def run_many(self, drafts: Sequence[Draft]) -> list[Draft | list[Draft] | StepFailed | None]:
        """A batch function's call over ``drafts``: one outcome per draft (a
        wrong item fails its own event only). An exception from the function,
        or a result that is not a list of one item per event, raises: every
        event of the call fails."""
        result = self._fn([d.env for d in drafts])
        if not isinstance(result, list) or len(result) != len(drafts):
            got = f"{len(result)} items" if isinstance(result, list) else type(result).__name__
            raise StepFailed(
                f"python {self.spec} (batch) returned {got} for {len(drafts)} event(s); "
                "return a list with one item (dict, None or list of dicts) per event"
            )
        out: list[Draft | list[Draft] | StepFailed | None] = []
        for draft, item in zip(drafts, result, strict=True):
            try:
                out.append(self._outcome(draft, item))
            except StepFailed as e:
                out.append(e)
        return out

    def _outcome(self, draft: Draft, result: Any) -> Draft | list[Draft] | None:
        if result is None:
            return None
        if isinstance(result, dict):
            draft.env = result
            return draft
        if isinstance(result, list):
            out = []
            for item in result:
                if not isinstance(item, dict):
                    raise StepFailed(
                        f"python {self.spec} returned a list holding a {type(item).__name__}; "
                        "return dicts"
                    )
                twin = Draft(draft.event, item)
                twin.topic, twin.keys, twin.flat = draft.topic, draft.keys, draft.flat
                out.append(twin)
            return out
        raise StepFailed(
            f"python {self.spec} returned a {type(result).__name__}; return a dict, a list "
            "of dicts or None"
        )
