"""Conflict kinds and the policies that resolve them: pure functions, no I/O.

A *version* is what one node holds for a key: the row (None for a delete),
the node that wrote it and its commit time. The applier builds the local and
the remote version of a conflict; :func:`resolve` says which one stays.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from walrelay.errors import ConfigError

__all__ = [
    "CONFLICT_KINDS",
    "Conflict",
    "ConflictKind",
    "Decision",
    "Overwritten",
    "Resolver",
    "Version",
    "load_resolver",
    "overrides_unseen",
]

ConflictKind = Literal[
    "insert_exists",
    "update_missing",
    "update_deleted",
    "update_origin_differs",
    "delete_missing",
    "delete_origin_differs",
]
CONFLICT_KINDS: tuple[ConflictKind, ...] = (
    "insert_exists",
    "update_missing",
    "update_deleted",
    "update_origin_differs",
    "delete_missing",
    "delete_origin_differs",
)

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Version:
    """One node's version of a row: ``row`` None means deleted (or never there)."""

    row: Row | None
    node: str | None  # None: unknown writer (written before the sync, or no commit time)
    committed_at: datetime | None
    priority: int


@dataclass(frozen=True, slots=True)
class Overwritten:
    """The version a source change replaced on its own node: its writer and
    commit time, as the source's ``walrelay_sync_previous`` trigger logged them."""

    node: str
    committed_at: datetime


def overrides_unseen(
    local: Version | None,
    source: str,
    remote_time: datetime,
    overwritten: Overwritten | None,
) -> bool:
    """Whether a remote update or delete conflicts with the local row.

    It does when the local row was written by another node and the source had
    not seen that version when it made its change: the source replaced some
    other version (concurrent writes, whichever is newer), or -- when the
    source did not say what it replaced (a row written before walrelay's
    trigger, or by the same transaction) -- the local version is at least as
    new as the change. The rule only looks at what both sides of a direction
    know, so the directions A->B and B->A reach the same verdict, and a policy
    that orders versions the same way on both sides (``last_write_wins``,
    ``priority``) converges whichever change arrives first."""
    if local is None or local.node == source or local.committed_at is None:
        return False
    if overwritten is not None:
        return (overwritten.node, overwritten.committed_at) != (local.node, local.committed_at)
    return local.committed_at >= remote_time


@dataclass(frozen=True, slots=True)
class Conflict:
    """What a custom policy (``python:module:function``) is given."""

    table: str
    kind: ConflictKind
    key: Row
    local: Version
    remote: Version


@dataclass(frozen=True, slots=True)
class Decision:
    """``apply_remote`` True: the remote version wins; else ``row`` (when ``custom``)
    is what to keep (None: delete), or the local version stays."""

    apply_remote: bool
    custom: bool = False
    row: Row | None = None

    @property
    def label(self) -> str:
        if self.custom:
            return "custom_delete" if self.row is None else "custom_row"
        return "apply_remote" if self.apply_remote else "keep_local"


Resolver = Callable[[Conflict], Decision]

_NEVER = datetime.min


def _ts(v: Version) -> datetime:
    return v.committed_at.replace(tzinfo=None) if v.committed_at is not None else _NEVER


def last_write_wins(c: Conflict) -> Decision:
    """Greater commit time wins; on a tie the lower priority number (then the
    node name, so that two nodes of equal priority still agree)."""
    if c.local.row is None and c.local.committed_at is None:
        return Decision(apply_remote=True)  # nothing known locally: the only version
    remote = (_ts(c.remote), -c.remote.priority, c.remote.node or "")
    local = (_ts(c.local), -c.local.priority, c.local.node or "")
    return Decision(apply_remote=remote > local)


def by_priority(c: Conflict) -> Decision:
    """The version from the node with the lower priority number wins; equal
    priorities fall back to last_write_wins."""
    if c.local.row is None and c.local.committed_at is None:
        return Decision(apply_remote=True)
    if c.remote.priority != c.local.priority:
        return Decision(apply_remote=c.remote.priority < c.local.priority)
    return last_write_wins(c)


def keep_local(c: Conflict) -> Decision:
    return Decision(apply_remote=False)


def apply_remote(c: Conflict) -> Decision:
    return Decision(apply_remote=True)


_BUILTIN: Mapping[str, Resolver] = {
    "last_write_wins": last_write_wins,
    "priority": by_priority,
    "keep_local": keep_local,
    "apply_remote": apply_remote,
}


def load_resolver(policy: str) -> Resolver:
    """The resolver of a policy name; ``python:module:function`` is imported now,
    so that a typo fails at start-up (exit 2), not at the first conflict."""
    builtin = _BUILTIN.get(policy)
    if builtin is not None:
        return builtin
    _, module_name, attr = policy.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"conflict policy {policy}: cannot import module {module_name}: {e}",
            fix="put the module on PYTHONPATH or fix its name",
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(
            f"conflict policy {policy}: {module_name} has no function {attr}",
            fix="name a function taking (conflict) and returning the row to keep or None",
        )

    def custom(c: Conflict) -> Decision:
        result = fn(c)
        if result is not None and not isinstance(result, dict):
            raise TypeError(f"{policy} returned {type(result).__name__}, expected dict or None")
        return Decision(apply_remote=False, custom=True, row=result)

    return custom
