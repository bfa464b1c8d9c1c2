"""From ``transforms:`` to a :class:`~walrelay.pipeline.transforms.chain.TransformChain`,
checked against the catalog.

Everything that can be wrong with a chain is found here, at start, as a
:class:`~walrelay.errors.ConfigError` naming the destination and the step:
a CEL syntax error or unknown variable, a python function that does not
import, a hash key that is not set, a route template field that does not
exist; and, against the published tables and their columns (read-only), a
step naming a table that is not published or a column the table does not
have at that point of the chain (after the renames, exclusions and fields
before it).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

from walrelay.config import DestinationConfig
from walrelay.errors import ConfigError
from walrelay.pipeline.transforms.base import Step
from walrelay.pipeline.transforms.cast import CastStep
from walrelay.pipeline.transforms.chain import TransformChain
from walrelay.pipeline.transforms.filter import FilterStep
from walrelay.pipeline.transforms.flatten import FlattenStep
from walrelay.pipeline.transforms.hash import HashStep
from walrelay.pipeline.transforms.key import KeyStep
from walrelay.pipeline.transforms.mask import MaskStep
from walrelay.pipeline.transforms.python_hook import PythonStep, load_function
from walrelay.pipeline.transforms.rename import RenameStep
from walrelay.pipeline.transforms.route import RouteStep
from walrelay.pipeline.transforms.select import ExcludeStep, IncludeStep
from walrelay.pipeline.transforms.set_fields import SetStep
from walrelay.transform_config import (
    CastStepConfig,
    ExcludeStepConfig,
    FilterStepConfig,
    FlattenStepConfig,
    HashStepConfig,
    IncludeStepConfig,
    KeyStepConfig,
    MaskStepConfig,
    PythonStepConfig,
    RenameStepConfig,
    RouteStepConfig,
    SetStepConfig,
    StepConfig,
)

__all__ = ["Catalog", "build_chain", "build_chains"]

Catalog = Mapping[str, Sequence[str]]
"""Published table (``schema.name``) -> its columns, as the catalog lists them."""

_GLOB = frozenset("*?[")


def _step(index: int, cfg: StepConfig, where: str) -> Step:
    t = cfg.tables
    if isinstance(cfg, FilterStepConfig):
        return FilterStep(index, t, cfg.expr, where)
    if isinstance(cfg, IncludeStepConfig):
        return IncludeStep(index, t, cfg.columns)
    if isinstance(cfg, ExcludeStepConfig):
        return ExcludeStep(index, t, cfg.columns)
    if isinstance(cfg, RenameStepConfig):
        return RenameStep(index, t, cfg.columns)
    if isinstance(cfg, MaskStepConfig):
        return MaskStep(index, t, cfg.columns, cfg.with_)
    if isinstance(cfg, HashStepConfig):
        return HashStep(index, t, cfg.columns, cfg.secret(where))
    if isinstance(cfg, CastStepConfig):
        return CastStep(index, t, cfg.columns)
    if isinstance(cfg, SetStepConfig):
        return SetStep(index, t, cfg.fields, cfg.meta)
    if isinstance(cfg, FlattenStepConfig):
        return FlattenStep(index, t, cfg.fields, cfg.deletes)
    if isinstance(cfg, RouteStepConfig):
        return RouteStep(index, t, cfg.to, where)
    if isinstance(cfg, KeyStepConfig):
        return KeyStep(index, t, cfg.columns)
    if isinstance(cfg, PythonStepConfig):
        return PythonStep(
            index, t, cfg.function, load_function(cfg.function, where), batch=cfg.batch
        )
    raise AssertionError(f"unknown step {cfg!r}")


def build_chain(dcfg: DestinationConfig, catalog: Catalog | None = None) -> TransformChain | None:
    """The destination's chain (None without ``transforms``); checked against
    ``catalog`` when given."""
    if not dcfg.transforms:
        return None
    steps = []
    for i, cfg in enumerate(dcfg.transforms):
        where = f"destination {dcfg.name}: transforms step {i + 1} ({cfg.kind})"
        steps.append(_step(i, cfg, where))
    required = None if catalog is None else _check(dcfg, steps, catalog)
    return TransformChain(dcfg.name, steps, required)


def build_chains(
    configs: Sequence[DestinationConfig], catalog: Catalog | None = None
) -> dict[str, TransformChain]:
    """The chains of the destinations that have transforms."""
    out = {}
    for dcfg in configs:
        chain = build_chain(dcfg, catalog)
        if chain is not None:
            out[dcfg.name] = chain
    return out


def _check(
    dcfg: DestinationConfig, steps: Sequence[Step], catalog: Catalog
) -> dict[str, list[tuple[Step, str]]]:
    """Check the steps against the catalog; return, per table, the original
    columns each step needs (what a schema change must not take away)."""
    tables = [t for t in catalog if dcfg.tables is None or t in dcfg.tables]
    for step in steps:
        for pattern in step.tables or ():
            if not any(fnmatch.fnmatchcase(t, pattern) for t in catalog):
                what = "matches no published table" if _GLOB & set(pattern) else "is not published"
                raise ConfigError(
                    f"destination {dcfg.name}: transforms {step.label}: table {pattern} {what}",
                    fix="add it to source.tables (and the publication), or fix the step's tables",
                )
    required: dict[str, list[tuple[Step, str]]] = {}
    found: dict[int, set[str]] = {}
    for table in tables:
        # current column name -> the original column it holds (None: added by a step)
        columns: dict[str, str | None] = {c: c for c in catalog[table]}
        opaque = False  # after a python step, any column may exist
        needs: list[tuple[Step, str]] = []
        for step in steps:
            if not step.applies_to(table):
                continue
            explicit = step.tables is not None and not any(_GLOB & set(p) for p in step.tables)
            for column in step.columns:
                if column in columns:
                    found.setdefault(step.index, set()).add(column)
                    original = columns[column]
                    if original is not None:
                        needs.append((step, original))
                elif explicit and not opaque:
                    raise ConfigError(
                        f"destination {dcfg.name}: transforms {step.label}: table {table} has "
                        f"no column {column} (columns there: {', '.join(columns) or 'none'})",
                        fix="fix the column name (steps see the names earlier steps gave)",
                    )
            columns = _after(step, columns)
            opaque = opaque or isinstance(step, PythonStep)
        required[table] = needs
    for step in steps:
        missing = [c for c in step.columns if c not in found.get(step.index, set())]
        if missing and tables and not isinstance(step, RouteStep):
            raise ConfigError(
                f"destination {dcfg.name}: transforms {step.label}: no table it applies to has "
                f"column {missing[0]}",
                fix="fix the column name, or scope the step with tables:",
            )
    return required


def _after(step: Step, columns: dict[str, str | None]) -> dict[str, str | None]:
    """The columns a row has after ``step`` (names mapped to original columns)."""
    if isinstance(step, ExcludeStep):
        return {c: o for c, o in columns.items() if c not in step.columns}
    if isinstance(step, IncludeStep):
        return {c: o for c, o in columns.items() if c in step.columns}
    if isinstance(step, RenameStep):
        names = dict(zip(step.columns, step.new_names, strict=True))
        return {names.get(c, c): o for c, o in columns.items()}
    if isinstance(step, SetStep):
        return {**columns, **dict.fromkeys(step.added)}
    return columns
