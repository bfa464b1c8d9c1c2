"""The worker's config file: ``worker: {kafka: {...}}`` beside the usual destinations.

A worker reads no slot, so its file has no ``source``: it has ``worker``
(the consumer group), ``destinations`` exactly as ``walrelay run`` reads
them, ``state`` (required: parked events and the ledger live there),
``ledger``, ``http``, ``shutdown_timeout`` and ``log_level``.
:meth:`WorkerFileConfig.engine_config` gives the destinations' machinery
(:func:`walrelay.engine.delivery.open_destinations`, the ledger) the
:class:`~walrelay.config.Config` it expects.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from walrelay.config import (
    Config,
    DestinationConfig,
    HeartbeatConfig,
    HttpConfig,
    LedgerConfig,
    MonitorConfig,
    PostgresLedgerConfig,
    Seconds,
    SourceConfig,
    StateConfig,
)
from walrelay.config_file import read_config_document
from walrelay.errors import ConfigError

__all__ = [
    "WorkerFileConfig",
    "WorkerKafkaConfig",
    "WorkerSection",
    "is_kafka_exactly_once",
    "is_worker_file",
    "load_worker_config",
]


# Consumer settings that safe offsets and read_committed depend on.
_RESERVED = frozenset(
    {
        "bootstrap.servers",
        "group.id",
        "isolation.level",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "partition.assignment.strategy",
        "group.protocol",
        "session.timeout.ms",
        "heartbeat.interval.ms",
    }
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class WorkerKafkaConfig(_Model):
    """``worker.kafka``: where the relay's topics are and which group reads them."""

    # ``bootstrap`` or ``bootstrap_servers`` (as the kafka sink spells it).
    bootstrap: str = Field(alias="bootstrap_servers")
    group: str
    topics: list[str] = Field(min_length=1)
    # The records' value: the walrelay envelope (what the relay's kafka sink writes),
    # or Debezium's change events (worker/debezium_records.py).
    format: Literal["walrelay", "debezium"] = "walrelay"
    # A member silent this long loses its partitions to the others.
    session_timeout: Seconds = 10.0
    heartbeat_interval: Seconds = 1.0
    # How often safe offsets are committed.
    commit_interval: Seconds = 1.0
    # On revoke: how long in-flight deliveries of the revoked partitions may finish.
    revoke_timeout: Seconds = 10.0
    # Records handed over per poll.
    poll_batch: int = Field(default=500, gt=0)
    # Extra librdkafka consumer settings (security, fetch sizes, ...).
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("options")
    @classmethod
    def _not_reserved(
        cls, v: dict[str, str | int | float | bool]
    ) -> dict[str, str | int | float | bool]:
        reserved = sorted(k for k in v if k in _RESERVED)
        if reserved:
            raise ValueError(
                f"options may not set {', '.join(reserved)}: walrelay sets them (use"
                " bootstrap, group, session_timeout, heartbeat_interval)"
            )
        return v

    @field_validator("group")
    @classmethod
    def _group(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9_.-]{1,200}$", v):
            raise ValueError(f"group {v!r}: use 1-200 chars of A-Z a-z 0-9 _ . -")
        return v


class WorkerSection(_Model):
    """``worker:``."""

    kafka: WorkerKafkaConfig
    # The relay's slot: event ids are positions in its history, so the ledger
    # namespaces them by it (the relay's destinations use "<slot>/<destination>").
    slot: str = "walrelay"
    # Ledger / applied_events rows are kept at least this long after the whole
    # group committed past them (walrelay.worker.trim): covers a relay in
    # at_least_once mode writing an event again after a crash.
    dedup_retention: Seconds = 600.0


class WorkerFileConfig(_Model):
    """A worker's whole config file."""

    worker: WorkerSection
    destinations: list[DestinationConfig] = Field(min_length=1)
    state: StateConfig
    ledger: LedgerConfig = PostgresLedgerConfig(type="postgres")
    http: HttpConfig = HttpConfig(enabled=False)
    shutdown_timeout: Seconds = 30.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("state")
    @classmethod
    def _state_dsn(cls, v: StateConfig) -> StateConfig:
        if v.dsn is None:
            raise ValueError(
                "a worker needs state.dsn (its parked events and ledger live there;"
                " there is no source database to default to)"
            )
        return v

    @field_validator("destinations")
    @classmethod
    def _unique(cls, v: list[DestinationConfig]) -> list[DestinationConfig]:
        names = [d.name for d in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"destination names must be unique; repeated: {', '.join(dupes)}")
        return v

    @field_validator("destinations")
    @classmethod
    def _no_id_order_sinks(cls, v: list[DestinationConfig]) -> list[DestinationConfig]:
        for d in v:
            why = _needs_id_order(d)
            if why:
                raise ValueError(
                    f"destination {d.name!r}: {why}; a worker's events are not in id order"
                    " (partitions interleave), so it would skip events as replays"
                )
            if is_kafka_exactly_once(d) and len(v) > 1:
                raise ValueError(
                    f"destination {d.name!r}: a kafka sink in exactly_once mode commits the"
                    " group's offsets in its transactions, so it must be the worker's only"
                    " destination (run another worker group for the others, or use mode:"
                    " at_least_once)"
                )
        return v

    def engine_config(self) -> Config:
        """The :class:`Config` the destinations' machinery reads: state, ledger,
        destinations; ``source`` only names the relay's slot (for the ledger's
        namespace) and the state database. Built without validation: a worker
        has no tables of its own to check."""
        assert self.state.dsn is not None
        tables = sorted({t for d in self.destinations for t in d.tables or ()})
        source = SourceConfig.model_construct(
            dsn=self.state.dsn, slot=self.worker.slot, tables=tables or ["public.*"]
        )
        return Config.model_construct(
            source=source,
            destinations=self.destinations,
            shutdown_timeout=self.shutdown_timeout,
            log_level=self.log_level,
            ledger=self.ledger,
            monitor=MonitorConfig(enabled=False),
            http=self.http,
            state=self.state,
            heartbeat=HeartbeatConfig(enabled=False),
        )


def is_kafka_exactly_once(d: DestinationConfig) -> bool:
    """A Kafka sink in ``exactly_once`` mode: in a worker, the consume-transform-produce
    transaction (:mod:`walrelay.sinks.kafka_offsets`)."""
    return d.sink.type == "kafka" and getattr(d.sink, "mode", None) == "exactly_once"


def _needs_id_order(d: DestinationConfig) -> str | None:
    """Why the destination's sink cannot run in a worker, or None: sinks that
    drop replays by comparing ids with the last one written need events in
    global id order."""
    kind = d.sink.type
    if kind == "redis":
        return "a redis sink uses event ids as stream entry ids, which must increase"
    if kind == "file":
        return "a file sink skips ids at or below the last one in the file"
    return None


def parse_worker_config(data: Any, where: str = "") -> WorkerFileConfig:
    if not isinstance(data, dict) or "worker" not in data:
        raise ConfigError(
            f"invalid worker config {where}: expected a mapping with 'worker', 'state'"
            " and 'destinations'",
            fix="see the scale-out section of README.md",
        )
    try:
        return WorkerFileConfig.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = "unknown setting (typo?)" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"{loc}: {msg}")
        raise ConfigError(
            f"invalid worker config {where}: " + "; ".join(lines),
            fix="see the scale-out section of README.md",
        ) from None


def load_worker_config(path: str | Path) -> WorkerFileConfig:
    """The worker file at ``path``, read like walrelay.yaml (size, encoding,
    duplicate keys checked first), or a one-line ConfigError."""
    return parse_worker_config(read_config_document(path), str(path))


def is_worker_file(path: str | Path) -> bool:
    """True for a worker's file (``worker:`` and no ``source:``); False for
    anything else, including an unreadable file (its reader reports that)."""
    try:
        data = read_config_document(path)
    except ConfigError:
        return False
    return isinstance(data, dict) and "worker" in data and "source" not in data
