"""``python: module:function``: a user's function over the event.

Called with the envelope as a dict (``id``, ``op``, ``table``, ``key``,
``record``, ``old``, ...). It returns the dict to send (changed or new),
``None`` to drop the event, or a list of dicts to send several (stream only).
The function is imported at start (an import error is a config error); an
exception it raises parks the event with the traceback as its error, in its
key's order, and parking retries it later like any failed delivery.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from walrelay.errors import ConfigError
from walrelay.pipeline.transforms.base import Draft, Step, StepFailed

__all__ = ["PythonStep", "load_function"]

UserFunction = Callable[[dict[str, Any]], Any]


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
        self, index: int, tables: Sequence[str] | None, spec: str, fn: UserFunction
    ) -> None:
        super().__init__(index, tables)
        self.spec = spec
        self._fn = fn

    def run(self, draft: Draft) -> Draft | list[Draft] | None:
        result = self._fn(draft.env)
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
