"""``filter``: keep an event when a CEL expression is true.

CEL (the Common Expression Language of Kubernetes and Envoy: safe, no loops,
no side effects) is compiled once, at start, by the ``common-expression-language``
package (Rust ``cel`` crate behind a Python binding; ~15 us per event here).
Variables: ``op``, ``table``, ``record``, ``old``, ``key`` (objects or null),
``committed_at`` (ISO 8601 text) and ``changed`` (the columns an UPDATE
changed, when the old row is known -- REPLICA IDENTITY FULL -- else every
column of the row). An expression that fails on an event (a missing field:
use ``has(record.x)``) fails the event, which is parked: never silently
dropped or sent.

Numbers: a json column's integer beyond 64 bits and a
:class:`~walrelay.exact_json.JsonNumber` (a decimal a double cannot hold as
written) are doubles to CEL -- ``record.doc.big > 1e22`` compares on the
nearest double, an integer or exponent beyond a double's range is infinity --
while the event sent keeps every digit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from walrelay.errors import ConfigError
from walrelay.pipeline.transforms.base import Draft, Step, StepFailed

__all__ = ["FilterStep", "compile_cel"]

_U64 = 2**64
VARIABLES = frozenset({"op", "table", "record", "old", "key", "committed_at", "changed"})
# A macro's own variable (``changed.exists(c, c == 'email')``) is listed among
# the program's variables too.
_MACRO_VARIABLE = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")


def compile_cel(expr: str, where: str) -> Any:
    """The compiled program; a syntax error or unknown variable is a ConfigError."""
    try:
        import cel
    except ImportError:  # pragma: no cover - a dependency of walrelay
        raise ConfigError(
            f"{where}: the CEL library is not installed",
            fix="pip install common-expression-language",
        ) from None
    try:
        program = cel.compile(expr)
    except (ValueError, RuntimeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(
            f"{where}: filter {expr!r} is not a valid CEL expression: {first}",
            fix="see https://github.com/google/cel-spec for the syntax",
        ) from None
    unknown = sorted(set(program.variables()) - VARIABLES - set(_MACRO_VARIABLE.findall(expr)))
    if unknown:
        raise ConfigError(
            f"{where}: filter {expr!r} uses unknown variable(s) {', '.join(unknown)}",
            fix="use op, table, record, old, key, committed_at or changed",
        )
    return program


def _changed(env: dict[str, Any]) -> list[str]:
    record = env.get("record")
    if not isinstance(record, dict):
        return []
    old = env.get("old")
    if env.get("op") == "update" and isinstance(old, dict) and len(old) >= len(record):
        return [c for c, v in record.items() if old.get(c, v) != v or c not in old]
    return list(record)


class FilterStep(Step):
    """Drops the events for which the expression is not true."""

    kind = "filter"

    def __init__(self, index: int, tables: Sequence[str] | None, expr: str, where: str) -> None:
        super().__init__(index, tables)
        self.expr = expr
        self._program = compile_cel(expr, where)
        # Only the variables the expression uses are converted for CEL (the
        # conversion is most of the cost of an evaluation).
        used = set(self._program.variables())
        self._fields = tuple(v for v in sorted(used & VARIABLES) if v != "changed")
        self._needs_changed = "changed" in set(self._program.variables())

    def run(self, draft: Draft) -> Draft | None:
        env = draft.env
        context: dict[str, Any] = {name: env.get(name) for name in self._fields}
        if self._needs_changed:
            context["changed"] = _changed(env)
        try:
            keep = self._program.execute(context)
        except ValueError as e:
            if "Conversion Error" not in str(e):
                raise StepFailed(f"filter {self.expr!r} failed: ValueError: {e}") from None
            keep = self._execute_as_doubles(context)
        except Exception as e:
            raise StepFailed(f"filter {self.expr!r} failed: {type(e).__name__}: {e}") from None
        if keep is True:
            return draft
        if keep is False:
            return None
        raise StepFailed(f"filter {self.expr!r} returned {keep!r}, not true or false")

    def _execute_as_doubles(self, context: dict[str, Any]) -> Any:
        """Run again with integers beyond a double as +-infinity (the CEL
        binding refuses them: a json column's ``1e400`` is a 401-digit integer
        in jsonb); only after such a refusal, so the common case pays nothing."""
        try:
            return self._program.execute(_as_doubles(context))
        except Exception as e:
            raise StepFailed(f"filter {self.expr!r} failed: {type(e).__name__}: {e}") from None


def _as_doubles(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _as_doubles(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_doubles(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -_U64 <= value <= _U64:
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    return value
