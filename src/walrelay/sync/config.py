"""``sync.yaml``: the nodes, the tables and the conflict policies of one sync.

::

    sync:
      name: crm
      nodes:
        eu: {dsn: postgresql://walrelay@eu-db/app, priority: 1}
        us: {dsn: postgresql://walrelay@us-db/app, priority: 2}
      tables: [public.accounts, public.contacts]
      conflicts:
        default: last_write_wins   # | priority | keep_local | apply_remote | python:module:fn
        tables: {public.accounts: priority}
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from walrelay.config import BackoffConfig, HttpConfig, Seconds, masked_dsn, qualify
from walrelay.errors import ConfigError

__all__ = [
    "POLICIES",
    "ConflictsConfig",
    "NodeConfig",
    "SyncConfig",
    "SyncSettings",
    "is_sync_file",
    "load_sync_config",
    "parse_sync_config",
]

POLICIES = ("last_write_wins", "priority", "keep_local", "apply_remote")
_NAME = re.compile(r"^[a-z0-9_]{1,20}$")


def _policy(value: str) -> str:
    if value in POLICIES:
        return value
    if value.startswith("python:") and value.count(":") == 2 and all(value.split(":")[1:]):
        return value
    raise ValueError(
        f"unknown conflict policy {value!r}: use one of {', '.join(POLICIES)} "
        "or python:module:function"
    )


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeConfig(_Model):
    """One database of the sync."""

    dsn: SecretStr
    # Lower number wins: the `priority` policy and last_write_wins ties.
    priority: int = 100

    @property
    def dsn_value(self) -> str:
        return self.dsn.get_secret_value()

    @property
    def masked_dsn(self) -> str:
        return masked_dsn(self.dsn_value)


class ConflictsConfig(_Model):
    default: str = "last_write_wins"
    tables: dict[str, str] = Field(default_factory=dict)

    @field_validator("default")
    @classmethod
    def _check_default(cls, v: str) -> str:
        return _policy(v)

    @field_validator("tables")
    @classmethod
    def _check_tables(cls, v: dict[str, str]) -> dict[str, str]:
        return {qualify(k): _policy(p) for k, p in v.items()}

    def policy_of(self, table: str) -> str:
        return self.tables.get(table, self.default)


class SyncSettings(_Model):
    """The ``sync:`` mapping."""

    name: str
    nodes: dict[str, NodeConfig] = Field(min_length=2)
    tables: list[str] = Field(min_length=1)
    conflicts: ConflictsConfig = ConflictsConfig()
    # walrelay's own tables on every node (tombstones, conflicts); never published.
    state_schema: str = "walrelay"
    reconnect: BackoffConfig = BackoffConfig(initial=0.5, max=10.0)
    # Transactions queued per direction before the node's reader waits.
    queue_transactions: int = Field(default=256, ge=1)
    # How often status is logged and tombstones trimmed.
    status_interval: Seconds = 10.0
    # /healthz, /metrics, /api/status and the dashboard, as for walrelay run
    # (off unless set; the token file is keyed sync-<name>).
    http: HttpConfig = HttpConfig(enabled=False)

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"sync name {v!r} must be 1-20 chars of a-z, 0-9 and _")
        return v

    @field_validator("nodes")
    @classmethod
    def _check_nodes(cls, v: dict[str, NodeConfig]) -> dict[str, NodeConfig]:
        for name in v:
            if not _NAME.match(name):
                raise ValueError(f"node name {name!r} must be 1-20 chars of a-z, 0-9 and _")
        return v

    @field_validator("tables")
    @classmethod
    def _qualify_tables(cls, v: list[str]) -> list[str]:
        out = [qualify(t) for t in v]
        if len(set(out)) != len(out):
            raise ValueError("tables lists a table twice")
        return out

    @model_validator(mode="after")
    def _check(self) -> SyncSettings:
        unknown = [t for t in self.conflicts.tables if t not in self.tables]
        if unknown:
            raise ValueError(
                f"conflicts.tables names {unknown[0]!r}, which is not in tables; add it there"
            )
        return self

    @property
    def token_key(self) -> str:
        """What the API token file is named after (``walrelay.web.auth``)."""
        return f"sync-{self.name}"

    def slot(self, node: str) -> str:
        return f"walrelay_sync_{self.name}_{node}"

    @property
    def publication(self) -> str:
        return f"walrelay_sync_{self.name}"

    def origin(self, source_node: str) -> str:
        """The replication origin the appliers of ``source_node``'s changes run under
        (the same name on every target node)."""
        return f"walrelay_sync_{self.name}_{source_node}"

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(self.origin(n) for n in self.nodes)

    def node_of_origin(self, origin: str) -> str | None:
        prefix = f"walrelay_sync_{self.name}_"
        if origin.startswith(prefix) and origin[len(prefix) :] in self.nodes:
            return origin[len(prefix) :]
        return None


class SyncConfig(_Model):
    sync: SyncSettings


def _format(e: ValidationError, where: str) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown setting (typo?)" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{loc}: {msg}")
    return f"invalid sync config {where}: " + "; ".join(parts)


def parse_sync_config(data: Any, where: str = "") -> SyncSettings:
    if not isinstance(data, dict) or "sync" not in data:
        raise ConfigError(
            f"invalid sync config {where}: expected a mapping with a 'sync' key",
            fix="see the two-way sync section of README.md",
        )
    try:
        return SyncConfig.model_validate(data).sync
    except ValidationError as e:
        raise ConfigError(
            _format(e, where), fix="see the two-way sync section of README.md"
        ) from None


def is_sync_file(path: str | os.PathLike[str]) -> bool:
    """True for a sync's file (a ``sync:`` mapping and no ``source:``); False for
    anything else, including an unreadable file (its reader reports that)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and "sync" in data and "source" not in data


def load_sync_config(path: str | os.PathLike[str]) -> SyncSettings:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(
            f"cannot read sync config {p}: {e.strerror}", fix="pass --config with a readable file"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"sync config {p} is not valid YAML: {e}") from None
    return parse_sync_config(data, str(p))
