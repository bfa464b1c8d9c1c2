"""``transforms:`` of a destination: the config models of its steps.

Each list item is a mapping with one key, the step's kind, whose value is
the step's settings or a shorthand::

    transforms:
      - filter: "table != 'public.orders' || record.status == 'paid'"
      - exclude: {tables: [public.customers], columns: [ssn]}
      - key: {tables: [public.orders], columns: [customer_id]}
      - python: mycompany.cdc:enrich

The steps themselves live in :mod:`walrelay.pipeline.transforms`; this module
only reads and checks what a user wrote (it sits in the config layer).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from walrelay.errors import ConfigError

__all__ = [
    "CAST_TARGETS",
    "META_FIELDS",
    "CastStepConfig",
    "ExcludeStepConfig",
    "FilterStepConfig",
    "FlattenStepConfig",
    "HashStepConfig",
    "IncludeStepConfig",
    "KeyStepConfig",
    "MaskStepConfig",
    "PythonStepConfig",
    "RenameStepConfig",
    "RouteStepConfig",
    "SetStepConfig",
    "StepConfig",
    "TransformList",
]

CAST_TARGETS = ("number", "integer", "string", "boolean", "epoch_ms", "epoch_s")
"""What ``cast`` turns a column into."""

META_FIELDS = ("table", "schema", "name", "op", "id", "lsn", "commit_lsn", "xid", "committed_at")
"""Event metadata ``set`` (``meta:``) and ``flatten`` (``fields:``) can add to a row."""

_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _qualify(pattern: str) -> str:
    pattern = pattern.strip()
    return pattern if "." in pattern else f"public.{pattern}"


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    # Tables (names or globs, 'orders' means 'public.orders') the step applies to; None: all.
    tables: list[str] | None = None

    @field_validator("tables")
    @classmethod
    def _qualify_tables(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("tables is empty: list tables, or leave it out for every table")
        return None if v is None else [_qualify(t) for t in v]

    @property
    def columns_needed(self) -> tuple[str, ...]:
        """Columns of the row the step names (checked against the catalog)."""
        return ()


def _nonempty(v: list[str]) -> list[str]:
    if not v:
        raise ValueError("columns is empty")
    if len(set(v)) != len(v):
        raise ValueError("columns lists a column twice")
    return v


class FilterStepConfig(_Step):
    """``filter: "<CEL>"``: keep the events for which the expression is true."""

    kind: Literal["filter"]
    expr: str = Field(min_length=1)


class IncludeStepConfig(_Step):
    """``include: [a, b]``: only these columns are kept."""

    kind: Literal["include"]
    columns: list[str]

    _check = field_validator("columns")(_nonempty)

    @property
    def columns_needed(self) -> tuple[str, ...]:
        return tuple(self.columns)


class ExcludeStepConfig(_Step):
    """``exclude: [a, b]``: these columns are removed."""

    kind: Literal["exclude"]
    columns: list[str]

    _check = field_validator("columns")(_nonempty)

    @property
    def columns_needed(self) -> tuple[str, ...]:
        return tuple(self.columns)


class RenameStepConfig(_Step):
    """``rename: {columns: {old: new}}``."""

    kind: Literal["rename"]
    columns: dict[str, str] = Field(min_length=1)

    @field_validator("columns")
    @classmethod
    def _distinct(cls, v: dict[str, str]) -> dict[str, str]:
        if len(set(v.values())) != len(v):
            raise ValueError("rename gives two columns the same new name")
        return v

    @property
    def columns_needed(self) -> tuple[str, ...]:
        return tuple(self.columns)


class MaskStepConfig(_Step):
    """``mask: {columns: [...], with: "****"}``: a fixed value (null by default)."""

    kind: Literal["mask"]
    columns: list[str]
    with_: str | int | float | bool | None = Field(default=None, alias="with")

    _check = field_validator("columns")(_nonempty)

    @property
    def columns_needed(self) -> tuple[str, ...]:
        return tuple(self.columns)


class HashStepConfig(_Step):
    """``hash: {columns, key_env | key_file}``: HMAC-SHA256 of the value, hex."""

    kind: Literal["hash"]
    columns: list[str]
    key_env: str | None = None
    key_file: str | None = None

    _check = field_validator("columns")(_nonempty)

    @model_validator(mode="after")
    def _one_key(self) -> HashStepConfig:
        if (self.key_env is None) == (self.key_file is None):
            raise ValueError("hash: set exactly one of key_env and key_file")
        return self

    @property
    def columns_needed(self) -> tuple[str, ...]:
        return tuple(self.columns)

    def secret(self, where: str) -> bytes:
        """The HMAC key, read at start (never logged)."""
        if self.key_env is not None:
            value = os.environ.get(self.key_env)
            if not value:
                raise ConfigError(
                    f"{where}: environment variable {self.key_env} (the HMAC key) is not set",
                    fix=f"export {self.key_env}=<a long random secret> before starting walrelay",
                )
            return value.encode()
        assert self.key_file is not None
        try:
            data = Path(self.key_file).read_bytes().strip()
        except OSError as e:
            raise ConfigError(
                f"{where}: cannot read key_file {self.key_file}: {e.strerror}",
                fix="point key_file at a readable file holding the HMAC key",
            ) from None
        if not data:
            raise ConfigError(
                f"{where}: key_file {self.key_file} is empty",
                fix="write a long random secret into it",
            )
        return data


class CastStepConfig(_Step):
    """``cast: {columns: {amount: number, created_at: epoch_ms}}``."""

    kind: Literal["cast"]
    columns: dict[str, Literal["number", "integer", "string", "boolean", "epoch_ms", "epoch_s"]] = (
        Field(min_length=1)
    )

    @property
    def columns_needed(self) -> tuple[str, ...]:
        return tuple(self.columns)


class SetStepConfig(_Step):
    """``set: {fields: {source: billing}, meta: {changed_at: committed_at}}``."""

    kind: Literal["set"]
    fields: dict[str, Any] = Field(default_factory=dict)
    meta: dict[str, Literal[META_FIELDS]] = Field(default_factory=dict)  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _something(self) -> SetStepConfig:
        if not self.fields and not self.meta:
            raise ValueError("set: give fields (constants) or meta (event metadata)")
        return self


class FlattenStepConfig(_Step):
    """``flatten: {fields: [op, table], deletes: rewrite}``: the body is the row only."""

    kind: Literal["flatten"]
    # Metadata added as __<name> (Debezium's add.fields).
    fields: list[Literal[META_FIELDS]] = Field(default_factory=list)  # type: ignore[valid-type]
    # rewrite: a delete sends its old row with "__deleted": true; drop: deletes are not sent.
    deletes: Literal["rewrite", "drop"] = "rewrite"


class RouteStepConfig(_Step):
    """``route: "crm.{table}.{record.region}"``: the topic / subject / stream."""

    kind: Literal["route"]
    to: str = Field(min_length=1)


class KeyStepConfig(_Step):
    """``key: [customer_id]``: the grouping key and the message key."""

    kind: Literal["key"]
    columns: list[str]

    _check = field_validator("columns")(_nonempty)

    @property
    def columns_needed(self) -> tuple[str, ...]:
        return tuple(self.columns)


class PythonStepConfig(_Step):
    """``python: "module:function"``: dict in; dict, None (drop) or list (fan out) out.

    ``python: {function: "module:function", batch: true}``: a list of dicts in,
    a list with one such result per event out."""

    kind: Literal["python"]
    function: str
    batch: bool = False

    @field_validator("function")
    @classmethod
    def _spec(cls, v: str) -> str:
        if not _FUNCTION.match(v):
            raise ValueError(f"python: {v!r} is not 'module:function'")
        return v


_SHORTHAND = {
    "filter": "expr",
    "include": "columns",
    "exclude": "columns",
    "route": "to",
    "key": "columns",
    "python": "function",
}
_KINDS = (
    "filter",
    "include",
    "exclude",
    "rename",
    "mask",
    "hash",
    "cast",
    "set",
    "flatten",
    "route",
    "key",
    "python",
)


def _step_item(value: Any) -> Any:
    """``{kind: settings-or-shorthand}`` -> ``{"kind": kind, **settings}``."""
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError(
            "each transform is a mapping with one key, the step's kind, e.g. "
            "'- exclude: [ssn]' (kinds: " + ", ".join(_KINDS) + ")"
        )
    ((kind, settings),) = value.items()
    if kind not in _KINDS:
        raise ValueError(f"unknown transform {kind!r} (kinds: {', '.join(_KINDS)})")
    if settings is None and kind == "flatten":
        settings = {}
    if not isinstance(settings, dict):
        field = _SHORTHAND.get(kind)
        if field is None:
            raise ValueError(f"{kind}: expected a mapping of settings")
        settings = {field: settings}
    return {"kind": kind, **settings}


StepConfig = Annotated[
    FilterStepConfig
    | IncludeStepConfig
    | ExcludeStepConfig
    | RenameStepConfig
    | MaskStepConfig
    | HashStepConfig
    | CastStepConfig
    | SetStepConfig
    | FlattenStepConfig
    | RouteStepConfig
    | KeyStepConfig
    | PythonStepConfig,
    Field(discriminator="kind"),
]

TransformList = list[Annotated[StepConfig, BeforeValidator(_step_item)]]
"""``transforms:`` of a destination, in the order written (the order they run)."""
