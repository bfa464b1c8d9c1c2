"""walrelay.yaml: typed, validated, secrets kept out of repr and logs."""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from walrelay.config_file import read_config_document
from walrelay.dsn import DSN_HINT, dsn_problem, one_line, speaking_utf8
from walrelay.dsn import masked_dsn as masked_dsn  # re-exported: where callers look for it
from walrelay.errors import ConfigError
from walrelay.format_config import CloudEventsOptions, DebeziumOptions, FormatName, check_format
from walrelay.transform_config import TransformList

log = logging.getLogger("walrelay.config")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|kB|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "kB": 1024,
    "KB": 1024,
    "KiB": 1024,
    "MB": 1024**2,
    "MiB": 1024**2,
    "GB": 1024**3,
    "GiB": 1024**3,
}


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"not a duration: {value!r} (use seconds, or '500ms', '30s', '5m')")
        return float(m.group(1)) * _UNITS[m.group(2)]
    return value


def _size(value: Any) -> Any:
    if isinstance(value, str):
        m = _SIZE.match(value)
        if not m:
            raise ValueError(f"not a size: {value!r} (use bytes, or '64MiB', '1GB')")
        return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    return value


# Longer than any sensible wait or interval; larger values overflow timers.
MAX_SECONDS = 365 * 24 * 3600.0
MAX_BYTES = 1024**5  # 1 PiB
MAX_BATCH = 1_000_000  # events in one deliver() call
# The default batch of a Kafka exactly_once sink: a bound on one deliver() call,
# not on one transaction (transaction_interval / transaction_bytes cut those).
KAFKA_EXACTLY_ONCE_BATCH = 50_000


def _finite_seconds(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite duration (seconds, or '500ms', '30s', '5m')")
    if value < 0:
        raise ValueError("must not be negative")
    if value > MAX_SECONDS:
        raise ValueError("must be at most 365 days (31536000 s)")
    return value


def _positive_seconds(value: float) -> float:
    if value == 0:
        raise ValueError("must be more than 0 (e.g. '500ms' or '10s')")
    return value


def _bytes_in_range(value: int) -> int:
    if value <= 0:
        raise ValueError("must be more than 0 bytes (e.g. '64MiB')")
    if value > MAX_BYTES:
        raise ValueError("must be at most 1 PiB (e.g. '64MiB', '1GiB')")
    return value


Seconds = Annotated[float, BeforeValidator(_duration), AfterValidator(_finite_seconds)]
# A wait or interval for which 0 means nothing sensible (a busy loop, a timeout
# that always expires).
PositiveSeconds = Annotated[Seconds, AfterValidator(_positive_seconds)]
Bytes = Annotated[int, BeforeValidator(_size), AfterValidator(_bytes_in_range)]


def _dsn_parses(value: SecretStr) -> SecretStr:
    problem = dsn_problem(value.get_secret_value())
    if problem is not None:
        raise ValueError(f"{problem}; {DSN_HINT}")
    return value


# A libpq connection string or URL, refused at load when libpq cannot parse it.
Dsn = Annotated[SecretStr, AfterValidator(_dsn_parses)]
_QUALIFIED = re.compile(r"^[^.\s]+\.[^.\s]+$")


def qualify(table: str) -> str:
    """'orders' -> 'public.orders'; 'app.orders' stays."""
    table = table.strip()
    return table if "." in table else f"public.{table}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackoffConfig(_Model):
    initial: Seconds = 0.2
    multiplier: float = Field(default=2.0, ge=1.0)
    max: Seconds = 30.0


class StateConfig(_Model):
    """walrelay's own tables (parked events, ledger): ``state: {dsn, schema}``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    dsn: Dsn | None = None  # default: source.dsn
    schema_name: str = Field(default="walrelay", alias="schema")

    @property
    def schema(self) -> str:  # type: ignore[override]  # BaseModel.schema is deprecated
        return self.schema_name

    @field_validator("schema_name")
    @classmethod
    def _schema(cls, v: str) -> str:
        if not re.match(r"^[a-z_][a-z0-9_]{0,62}$", v):
            raise ValueError(f"state schema {v!r}: use 1-63 chars of a-z, 0-9 and _")
        return v


class ParkingConfig(_Model):
    """``parking:`` of a destination: failed deliveries parked in
    ``<state schema>.parked_events`` (walrelay.pipeline.parking)."""

    enabled: bool = True
    # Failed attempts (transient errors) retried in memory before the event is parked.
    park_after: int = Field(default=3, ge=1)
    # Attempts before a permanently rejected event (HTTP 400/404/422, ...) is dead.
    permanent_attempts: int = Field(default=3, ge=1)
    # Attempts in all before any event is dead; None: retry for ever.
    max_attempts: int | None = Field(default=None, ge=1)
    # block: a dead event keeps its key blocked until `walrelay parking retry|discard`;
    # skip_dead: it stays in the table, is logged and counted, and its key moves on.
    on_dead: Literal["block", "skip_dead"] = "block"
    backoff: BackoffConfig = BackoffConfig(initial=1.0, multiplier=2.0, max=300.0)
    # Reaching either cap pauses replication until the backlog drains below 90% of it.
    max_events: int = Field(default=100_000, gt=0)
    max_bytes: Bytes = 1024**3


class SourceConfig(_Model):
    dsn: Dsn = Field(description="libpq connection string or URL")
    slot: str = "walrelay"
    publication: str = "walrelay_pub"
    tables: list[str] = Field(min_length=1)
    create_slot: bool = True
    create_publication: bool = True
    key_columns: dict[str, list[str]] = Field(default_factory=dict)
    status_interval: PositiveSeconds = 10.0
    streaming: bool = True
    reconnect: BackoffConfig = BackoffConfig(initial=0.5, max=30.0)
    spill_dir: str | None = None
    spill_memory_bytes: Bytes = 8 * 1024 * 1024
    # With nothing pending, confirm the last keepalive's wal_end (keeps the slot
    # moving while the publication is quiet). Off only to show why it exists.
    confirm_idle: bool = True
    # A lost slot (wal_status 'lost', or gone): stop with what to run, or recreate
    # it and take a new snapshot of the tables (walrelay.source.snapshot).
    on_slot_lost: Literal["stop", "resnapshot"] = "stop"
    # Connections reading an initial snapshot in parallel (key ranges of large tables).
    snapshot_workers: int = Field(default=2, ge=1, le=32)
    # How often a running engine looks for `walrelay backfill` requests.
    backfill_poll_interval: PositiveSeconds = 1.0
    # Delivery blocked this long closes the replication connection (a walsender
    # we stop reading from holds the primary's checkpoints, slot invalidation and
    # shutdown); it reconnects when there is room (walrelay.engine.session).
    disconnect_when_blocked_after: PositiveSeconds = 5.0
    # Refused unless set (walrelay.source.slot): a FOR ALL TABLES / FOR TABLES IN
    # SCHEMA publication, and an unlimited max_slot_wal_keep_size on the source.
    allow_wide_publication: bool = False
    allow_unbounded_wal: bool = False
    # How often a running engine checks that its slot, publication and tables
    # are still there (walrelay.engine.watch).
    watch_interval: PositiveSeconds = 5.0

    @field_validator("tables")
    @classmethod
    def _qualify_tables(cls, v: list[str]) -> list[str]:
        out = [qualify(t) for t in v]
        for t in out:
            if not _QUALIFIED.match(t):
                raise ValueError(f"table {t!r} must be 'schema.name'")
        if len(set(out)) != len(out):
            raise ValueError("tables lists a table twice")
        return out

    @field_validator("key_columns")
    @classmethod
    def _qualify_keys(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        return {qualify(k): cols for k, cols in v.items()}

    @field_validator("slot", "publication")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.match(r"^[a-z0-9_]{1,63}$", v):
            raise ValueError(
                f"{v!r}: slot and publication names must be 1-63 chars of a-z, 0-9 and _"
            )
        return v

    @property
    def dsn_value(self) -> str:
        """The DSN to connect with (always speaking UTF-8: :func:`speaking_utf8`)."""
        return speaking_utf8(self.dsn.get_secret_value())

    @property
    def masked_dsn(self) -> str:
        return masked_dsn(self.dsn.get_secret_value())


class SinkConfigBase(_Model):
    """What every sink's config has: its ``type`` (the key in :data:`SINK_TYPES`)
    and how many events one ``deliver`` call gets."""

    type: str
    batch_size: int = Field(default=500, gt=0)

    @field_validator("batch_size", check_fields=False)
    @classmethod
    def _batch_in_range(cls, v: int) -> int:
        if v > MAX_BATCH:
            raise ValueError(f"must be at most {MAX_BATCH:,} events")
        return v

    def default_max_in_flight(self) -> int:
        """Events in flight at once when the destination sets no ``max_in_flight``."""
        return self.batch_size


class FileSinkConfig(SinkConfigBase):
    """``sink: {type: file, path}``: JSON lines in a file (walrelay.sinks.file)."""

    type: Literal["file"] = "file"
    path: str
    fsync: Literal["always", "batch", "interval", "never"] = "batch"
    fsync_interval: PositiveSeconds = 1.0
    batch_size: int = Field(default=2000, gt=0)


class StdoutSinkConfig(SinkConfigBase):
    """``sink: {type: stdout}``: JSON lines on standard output (walrelay.sinks.stdout)."""

    type: Literal["stdout"] = "stdout"
    batch_size: int = Field(default=2000, gt=0)


class WebhookSinkConfig(SinkConfigBase):
    """``sink: {type: webhook, url}``: signed HTTP POSTs (walrelay.sinks.webhook)."""

    type: Literal["webhook"] = "webhook"
    url: SecretStr
    secret_env: str | None = None
    secret_file: str | None = None
    timeout: PositiveSeconds = 10.0
    headers: dict[str, str] = Field(default_factory=dict)
    max_connections: int = Field(default=64, gt=0, le=10_000)
    batch_size: int = Field(default=1, gt=0)
    # https: the CA bundle to trust and a client certificate (mutual TLS); unset:
    # the system's CAs, no client certificate.
    tls: TlsConfig | None = None

    def default_max_in_flight(self) -> int:
        return 32  # concurrent POSTs: one event per request

    def secret(self) -> str | None:
        """The signing secret, read from the environment or a file at start-up."""
        if self.secret_env:
            value = os.environ.get(self.secret_env)
            if not value:
                raise ConfigError(
                    f"webhook secret: environment variable {self.secret_env} is not set",
                    fix=f"export {self.secret_env}=whsec_... or remove secret_env",
                )
            return value
        if self.secret_file:
            try:
                return Path(self.secret_file).read_text().strip()
            except OSError as e:
                raise ConfigError(
                    f"webhook secret: cannot read secret_file {self.secret_file}: {e.strerror}",
                    fix="point secret_file at a readable file holding the secret",
                ) from None
        return None


def env_secret(var: str | None, what: str) -> str | None:
    """The value of environment variable ``var`` (None when ``var`` is None)."""
    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        raise ConfigError(
            f"{what}: environment variable {var} is not set",
            fix=f"export {var}=... before starting walrelay, or remove the setting",
        )
    return value


class TlsConfig(_Model):
    """TLS for a broker connection; present (even empty: ``tls: {}``) means on."""

    ca_file: str | None = None  # default: the system's CA bundle
    cert_file: str | None = None  # client certificate (mutual TLS)
    key_file: str | None = None
    key_password_env: str | None = None
    verify: bool = True  # false: no certificate or host name check (tests only)

    def ssl_context(self) -> Any:
        """An ``ssl.SSLContext`` for asyncio clients (NATS, Redis, RabbitMQ)."""
        import ssl

        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file:
                ctx.load_cert_chain(
                    self.cert_file,
                    self.key_file,
                    password=env_secret(self.key_password_env, "tls key password"),
                )
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(
                f"tls: cannot load certificates ({e})",
                fix="check tls.ca_file, tls.cert_file and tls.key_file",
            ) from None
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


class KafkaSinkConfig(SinkConfigBase):
    """``sink: {type: kafka, ...}``: Kafka topics (walrelay.sinks.kafka)."""

    type: Literal["kafka"] = "kafka"
    bootstrap_servers: str
    mode: Literal["exactly_once", "at_least_once"] = "exactly_once"
    topic: str = "{prefix}.{schema}.{table}"
    message_topic: str = "{prefix}.messages"
    prefix: str = "walrelay"
    transactional_id: str | None = None  # default walrelay-<slot>-<destination>
    checkpoint_topic: str = "walrelay.checkpoints"
    auto_create: bool = True
    partitions: int = Field(default=-1, ge=-1)  # -1: the broker's num.partitions
    replication_factor: int = Field(default=-1, ge=-1)
    security_protocol: Literal["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"] | None = None
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password_env: str | None = None
    tls: TlsConfig | None = None
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    # librdkafka's linger.ms; None: the mode's default (effective_linger).
    linger: Seconds | None = None
    delivery_timeout: PositiveSeconds = 30.0
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)  # librdkafka
    batch_size: int = Field(default=500, gt=0)
    # exactly_once: a batch takes what is buffered (up to batch_size, default
    # KAFKA_EXACTLY_ONCE_BATCH there); batches join the open transaction, which
    # commits once it has been open transaction_interval or holds
    # transaction_bytes, or when nothing more is buffered.
    transaction_interval: PositiveSeconds = 0.1
    transaction_bytes: int = Field(default=4 * 2**20, gt=0)
    # exactly_once (the relay's sink, not a worker's): the least time from one
    # commit to the next transaction's first record. The broker writes the
    # commit's markers after it answers; a transaction begun before that is
    # refused (CONCURRENT_TRANSACTIONS) and librdkafka tries again only 20 ms
    # later (bench/latency.py --set).
    transaction_spacing: Seconds = 0.01

    @model_validator(mode="before")
    @classmethod
    def _exactly_once_batch(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and data.get("mode", "exactly_once") == "exactly_once"
            and "batch_size" not in data
        ):
            return {**data, "batch_size": KAFKA_EXACTLY_ONCE_BATCH}
        return data

    def effective_linger(self) -> float:
        """``linger``, or the mode's default: 5 ms at_least_once; in
        exactly_once ``transaction_interval`` (at most 1 s), since records
        are invisible until the commit and the commit sends what lingers at
        once -- fewer, fuller produce requests cost the broker far less, and
        no one waits. librdkafka wants it below ``delivery_timeout``."""
        if self.linger is not None:
            return self.linger
        if self.mode == "at_least_once":
            return 0.005
        return min(self.transaction_interval, 1.0, self.delivery_timeout / 2)

    def default_max_in_flight(self) -> int:
        # at_least_once: batches wait for acks (and the ledger) on the event loop,
        # not on a thread; eight in flight keep the producer busy meanwhile.
        # exactly_once is ordered: one batch at a time whatever this says.
        return self.batch_size * 8 if self.mode == "at_least_once" else self.batch_size

    # After a delete, a null-value record with the same key (compacted topics).
    tombstones: bool = False
    # Record key: walrelay (the key object, sorted), debezium (the format's key
    # as rendered, column order; null for a truncate) or column:<name>.
    key_format: str = Field(default="walrelay", pattern=r"^(walrelay|debezium|column:.+)$")


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class NatsSinkConfig(SinkConfigBase):
    """``sink: {type: nats, ...}``: a NATS JetStream stream (walrelay.sinks.nats)."""

    type: Literal["nats"] = "nats"
    servers: Annotated[list[str], BeforeValidator(_one_or_many)] = Field(min_length=1)
    subject: str = "{prefix}.{schema}.{table}"
    message_subject: str = "{prefix}.messages"
    prefix: str = "walrelay"
    stream: str = "WALRELAY"
    auto_create: bool = True
    stream_subjects: list[str] | None = None  # for auto-create; default ["<prefix>.>"]
    duplicate_window: PositiveSeconds = 120.0  # for auto-create
    user: str | None = None
    password_env: str | None = None
    token_env: str | None = None
    creds_file: str | None = None
    tls: TlsConfig | None = None
    timeout: PositiveSeconds = 10.0
    batch_size: int = Field(default=100, gt=0)


class RedisSinkConfig(SinkConfigBase):
    """``sink: {type: redis, ...}``: Redis streams (walrelay.sinks.redis_streams)."""

    type: Literal["redis"] = "redis"
    url: SecretStr
    username: str | None = None
    password_env: str | None = None
    stream: str = "{prefix}:{schema}.{table}"
    message_stream: str = "{prefix}:messages"
    prefix: str = "walrelay"
    maxlen: int | None = Field(default=None, gt=0)
    approximate_maxlen: bool = True
    auto_create: bool = True
    tls: TlsConfig | None = None
    timeout: PositiveSeconds = 10.0
    batch_size: int = Field(default=500, gt=0)


class RabbitMQSinkConfig(SinkConfigBase):
    """``sink: {type: rabbitmq, ...}``: RabbitMQ exchanges (walrelay.sinks.rabbitmq)."""

    type: Literal["rabbitmq"] = "rabbitmq"
    url: SecretStr
    username: str | None = None
    password_env: str | None = None
    exchange: str = "{prefix}"
    exchange_type: Literal["topic", "direct", "fanout", "headers"] = "topic"
    routing_key: str = "{schema}.{table}.{op}"
    message_exchange: str = "{prefix}"
    message_routing_key: str = "message"
    prefix: str = "walrelay"
    auto_create: bool = True
    mandatory: bool = True
    # Right after a (re)connect a restarted broker may not have recovered its
    # durable bindings yet: an unroutable return is retried for this long, and
    # is a permanent error (parked, then dead) only on an older connection.
    unroutable_grace: Seconds = 30.0
    tls: TlsConfig | None = None
    timeout: PositiveSeconds = 10.0
    batch_size: int = Field(default=100, gt=0)


class PostgresSinkConfig(SinkConfigBase):
    """Applies changes to tables of another PostgreSQL database (walrelay.sinks.postgres)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type: Literal["postgres"] = "postgres"
    dsn: Dsn
    # Target schema of tables not named in ``tables`` (default: the source table's schema).
    target_schema: str | None = Field(default=None, alias="schema")
    # source table -> target table ('orders' or 'schema.orders'); same names by default.
    tables: dict[str, str] = Field(default_factory=dict)
    # Schema in the *target* database holding walrelay's applied-events table.
    state_schema: str = "walrelay"
    ordered: bool = True
    max_connections: int = Field(default=4, gt=0, le=1_000)  # used when ordered is false
    batch_size: int = Field(default=500, gt=0)
    connect_timeout: PositiveSeconds = 10.0

    def default_max_in_flight(self) -> int:
        return self.batch_size if self.ordered else self.batch_size * self.max_connections

    @field_validator("tables")
    @classmethod
    def _qualify_sources(cls, v: dict[str, str]) -> dict[str, str]:
        return {qualify(k): t.strip() for k, t in v.items()}


class RedisLedgerConfig(_Model):
    type: Literal["redis"]
    url: SecretStr
    key_prefix: str = "walrelay:ledger:"
    timeout: PositiveSeconds = 5.0


class PostgresLedgerConfig(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type: Literal["postgres"]
    # Default: the state database (state.dsn when configured, else source.dsn).
    dsn: Dsn | None = None
    # Default: the state schema (state.schema when configured, else 'walrelay').
    ledger_schema: str | None = Field(default=None, alias="schema")


class NoLedgerConfig(_Model):
    type: Literal["none"]


LedgerConfig = Annotated[
    RedisLedgerConfig | PostgresLedgerConfig | NoLedgerConfig, Field(discriminator="type")
]


@dataclass(frozen=True, slots=True)
class SinkType:
    """One registered sink: its config model and the class that implements it,
    as ``"module:Class"`` -- imported only when a sink of this type is built
    (:func:`walrelay.sinks.registry.build_sink`), so a config naming it is
    read without the sink's optional dependency installed."""

    config: type[SinkConfigBase]
    implementation: str


def _register(*entries: SinkType) -> Mapping[str, SinkType]:
    return MappingProxyType({e.config.model_fields["type"].default: e for e in entries})


# The one list of sinks: adding one is a module under walrelay/sinks/, its config
# model above, and a line here.
SINK_TYPES: Mapping[str, SinkType] = _register(
    SinkType(FileSinkConfig, "walrelay.sinks.file:FileSink"),
    SinkType(StdoutSinkConfig, "walrelay.sinks.stdout:StdoutSink"),
    SinkType(WebhookSinkConfig, "walrelay.sinks.webhook:WebhookSink"),
    SinkType(KafkaSinkConfig, "walrelay.sinks.kafka:KafkaSink"),
    SinkType(NatsSinkConfig, "walrelay.sinks.nats:NatsSink"),
    SinkType(RedisSinkConfig, "walrelay.sinks.redis_streams:RedisStreamsSink"),
    SinkType(RabbitMQSinkConfig, "walrelay.sinks.rabbitmq:RabbitMQSink"),
    SinkType(PostgresSinkConfig, "walrelay.sinks.postgres:PostgresSink"),
)

if TYPE_CHECKING:
    SinkConfig = SinkConfigBase
else:
    # ``sink:`` is parsed into the model its ``type`` names in SINK_TYPES.
    SinkConfig = Annotated[
        Union[tuple(t.config for t in SINK_TYPES.values())],  # noqa: UP007
        Field(discriminator="type"),
    ]


def _header_map(value: Any) -> Any:
    return {c: c for c in value} if isinstance(value, list) else value


class OutboxRouterConfig(_Model):
    """``router: {type: outbox, ...}`` on a destination (walrelay.pipeline.outbox_router)."""

    type: Literal["outbox"]
    # The outbox table whose inserts are routed; other tables' events pass unchanged.
    table: str = "public.outbox"
    # Table-less events: pg_logical_emit_message(true, <message_prefix>, <JSON object>).
    message_prefix: str = "walrelay.outbox"
    # The column (message field) that picks the topic: {routed_by} in ``topic``.
    route_by: str = "aggregate_type"
    # Topic / subject / stream: a template over {routed_by} and the row's columns ...
    topic: str = "{routed_by}.events"
    # ... or, when set, re.fullmatch(topic_regex, <route_by value>).expand(topic_replacement).
    topic_regex: str | None = None
    topic_replacement: str | None = None
    key: str = "aggregate_id"  # record key and per-key order
    payload: str = "payload"  # sent as JSON, not as a string
    # column -> header name (a list means the same names).
    headers: Annotated[dict[str, str], BeforeValidator(_header_map)] = Field(
        default_factory=lambda: {
            "id": "outbox_id",
            "event_type": "event_type",
            "aggregate_type": "aggregate_type",
        }
    )
    # Columns placed beside the payload: the value becomes {"payload": ..., <col>: ...}.
    envelope_fields: list[str] = Field(default_factory=list)
    # A NULL payload becomes a tombstone (Kafka: null value) instead of JSON null.
    tombstone_on_empty: bool = False
    # UPDATE/DELETE/TRUNCATE of outbox rows are not events: skip them (logged) or
    # deliver them unrouted.
    other_ops: Literal["skip", "deliver"] = "skip"

    @field_validator("table")
    @classmethod
    def _qualify(cls, v: str) -> str:
        return qualify(v)

    @field_validator("topic_regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(
                    f"topic_regex {v!r} is not a valid regular expression: {e}"
                ) from None
        return v

    @model_validator(mode="after")
    def _pair(self) -> OutboxRouterConfig:
        if (self.topic_regex is None) != (self.topic_replacement is None):
            raise ValueError("set both topic_regex and topic_replacement, or neither")
        return self


class HeartbeatConfig(_Model):
    """``heartbeat: {interval, table}`` (walrelay.source.heartbeat)."""

    enabled: bool = True
    interval: Seconds = 30.0
    # None: pg_logical_emit_message(false, <prefix>, ...). A table: UPDATE a row
    # of it instead (created if missing and added to the publication).
    table: str | None = None
    prefix: str = "walrelay.heartbeat"

    @field_validator("interval")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("heartbeat.interval must be > 0 (use enabled: false to turn off)")
        return v

    @field_validator("table")
    @classmethod
    def _qualify(cls, v: str | None) -> str | None:
        return None if v is None else qualify(v)


class OutboxConfig(_Model):
    """``outbox:``: the engine's upkeep of the outbox table's daily partitions."""

    table: str = "public.outbox"
    maintain: bool = True  # false: only `walrelay outbox maintain` does upkeep
    interval: PositiveSeconds = 3600.0
    days_ahead: int = Field(default=7, ge=1, le=366)  # future partitions kept
    retention_days: int = Field(default=7, ge=1)  # partitions older than this are dropped
    lock_timeout: PositiveSeconds = 2.0  # for DETACH PARTITION; a timeout retries next run
    confirm_wait: Seconds = 30.0  # how long to wait for the slot to confirm a detach

    @field_validator("table")
    @classmethod
    def _qualify(cls, v: str) -> str:
        return qualify(v)


OPS = ("insert", "update", "delete", "truncate", "message")


class DestinationConfig(_Model):
    name: str
    sink: SinkConfig
    tables: list[str] | None = None
    ops: list[Literal["insert", "update", "delete", "truncate", "message"]] | None = None
    max_in_flight: int | None = Field(default=None, gt=0, le=1_000_000)
    buffer_bytes: Bytes = 64 * 1024 * 1024
    retry: BackoffConfig = BackoffConfig()
    # Failed deliveries parked in the state database (walrelay.pipeline.parking);
    # the old key ``failed:`` is still read (see _rename_failed).
    parking: ParkingConfig = ParkingConfig()
    # Overrides the top-level ``ledger`` for this destination.
    ledger: LedgerConfig | None = None
    # Turns outbox rows / messages into routed events (walrelay.pipeline.outbox_router).
    router: OutboxRouterConfig | None = None
    # initial: every existing row as a `read` event when the slot is created;
    # never: changes from the slot only (walrelay.source.snapshot).
    snapshot: Literal["initial", "never"] = "initial"
    # Per-event steps, in order (walrelay.pipeline.transforms; models in transform_config).
    transforms: TransformList = Field(default_factory=list)
    # Output format, the last per-destination step (walrelay.pipeline.formats),
    # its options, and BEGIN/END transaction events (walrelay.format_config).
    format: FormatName = "walrelay"
    debezium: DebeziumOptions = DebeziumOptions()
    cloudevents: CloudEventsOptions = CloudEventsOptions()
    transaction_metadata: bool = False

    @model_validator(mode="after")
    def _format_fits(self) -> DestinationConfig:
        check_format(
            self.name,
            self.format,
            self.sink.type,
            has_router=self.router is not None,
            cloudevents_mode=self.cloudevents.mode,
            transaction_metadata=self.transaction_metadata,
        )
        return self

    @model_validator(mode="before")
    @classmethod
    def _rename_failed(cls, data: Any) -> Any:
        """``failed:`` is the old name of ``parking:``: read as it, with a warning."""
        if not isinstance(data, dict) or "failed" not in data:
            return data
        name = data.get("name", "?")
        if "parking" in data:
            raise ValueError(
                f"destination {name!r} sets both parking: and its old name failed:;"
                " keep parking: and remove failed:"
            )
        log.warning(
            "destination %s: the setting failed: is deprecated; rename failed: to parking:",
            name,
        )
        data = dict(data)
        data["parking"] = data.pop("failed")
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9_.-]{1,64}$", v):
            raise ValueError(f"destination name {v!r}: use 1-64 chars of A-Z a-z 0-9 _ . -")
        return v

    @field_validator("tables")
    @classmethod
    def _qualify_tables(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [qualify(t) for t in v]

    def effective_max_in_flight(self) -> int:
        if self.max_in_flight is not None:
            return self.max_in_flight
        return self.sink.default_max_in_flight()


class ThresholdsConfig(_Model):
    """Overrides of :class:`walrelay.monitor.thresholds.Thresholds` (unset = default)."""

    retained_wal_warn_bytes: Bytes | None = None
    retained_wal_page_bytes: Bytes | None = None
    retained_wal_page_fraction_of_keep_size: float | None = Field(default=None, gt=0, le=1)
    slot_inactive_warn_seconds: Seconds | None = None
    slot_inactive_page_seconds: Seconds | None = None
    wal_disk_warn_percent: float | None = Field(default=None, gt=0, le=100)
    wal_disk_page_percent: float | None = Field(default=None, gt=0, le=100)
    delivery_lag_warn_seconds: Seconds | None = None
    delivery_lag_page_seconds: Seconds | None = None
    oldest_transaction_warn_seconds: Seconds | None = None
    oldest_transaction_page_seconds: Seconds | None = None
    spill_page_fraction_of_free_disk: float | None = Field(default=None, gt=0, le=1)


class SlotSamplesConfig(_Model):
    """``monitor.samples``: the engine records every slot of the source in
    ``<state schema>.slot_sample_history`` on the source (walrelay.monitor.sampling),
    so ``walrelay doctor`` has their history without having been run."""

    enabled: bool = True
    interval: PositiveSeconds = 60.0
    retention: PositiveSeconds = 7 * 24 * 3600.0


class MonitorConfig(_Model):
    """The engine's watch over the source cluster (walrelay.monitor.service)."""

    enabled: bool = True
    interval: PositiveSeconds = 10.0
    # Defaults to source.dsn; a role with pg_monitor is enough.
    dsn: Dsn | None = None
    watch_other_slots: bool = True
    # Spilling warns once the spill counters grew at this many checks in a row.
    spill_sustained_checks: int = Field(default=3, ge=1)
    thresholds: ThresholdsConfig = ThresholdsConfig()
    samples: SlotSamplesConfig = SlotSamplesConfig()


def _secret_of(what: str, value: SecretStr | None, env: str | None, file: str | None) -> str:
    """A secret given inline, by environment variable, or in a file."""
    if env is not None:
        return env_secret(env, what) or ""
    if file is not None:
        try:
            with open(file) as f:
                return f.read().strip()
        except OSError as e:
            raise ConfigError(
                f"{what}: cannot read {file}: {e.strerror}",
                fix=f"point the setting at a readable file holding the {what}",
            ) from None
    assert value is not None
    return value.get_secret_value()


def _exactly_one(what: str, *given: object) -> None:
    if sum(x is not None for x in given) != 1:
        raise ValueError(f"set exactly one of {what}")


class AlertWebhookConfig(_Model):
    """A Slack-compatible incoming webhook (``alerts: {slack: [...]}``, or the
    older ``webhooks:``): POST {"text": ...}. The URL is the secret."""

    url: SecretStr | None = None
    url_env: str | None = None
    url_file: str | None = None
    min_severity: Literal["warn", "page"] = "warn"
    timeout: PositiveSeconds = 5.0

    @model_validator(mode="after")
    def _one_url(self) -> AlertWebhookConfig:
        _exactly_one("url and url_env (or url_file)", self.url, self.url_env, self.url_file)
        return self

    def url_value(self) -> str:
        return _secret_of("alerts webhook URL", self.url, self.url_env, self.url_file)


class AlertmanagerTargetConfig(_Model):
    """``alerts: {alertmanager: [{url: http://alertmanager:9093}]}``: open alerts
    posted to Alertmanager's API v2 (``/api/v2/alerts``), resolved when they close."""

    url: str
    min_severity: Literal["warn", "page"] = "warn"
    timeout: Seconds = 5.0
    labels: dict[str, str] = Field(default_factory=dict)  # added to every alert
    bearer_token_env: str | None = None
    bearer_token_file: str | None = None

    def bearer_token(self) -> str | None:
        if self.bearer_token_env is None and self.bearer_token_file is None:
            return None
        return _secret_of(
            "Alertmanager bearer token", None, self.bearer_token_env, self.bearer_token_file
        )


class PagerDutyTargetConfig(_Model):
    """``alerts: {pagerduty: [{routing_key_env: PD_KEY}]}``: PagerDuty Events v2
    (trigger on firing and escalation, resolve on close; one dedup key per alert)."""

    routing_key: SecretStr | None = None
    routing_key_env: str | None = None
    routing_key_file: str | None = None
    min_severity: Literal["warn", "page"] = "page"
    url: str = "https://events.pagerduty.com/v2/enqueue"
    timeout: Seconds = 5.0

    @model_validator(mode="after")
    def _one_key(self) -> PagerDutyTargetConfig:
        _exactly_one(
            "routing_key, routing_key_env and routing_key_file",
            self.routing_key,
            self.routing_key_env,
            self.routing_key_file,
        )
        return self

    def routing_key_value(self) -> str:
        return _secret_of(
            "PagerDuty routing key", self.routing_key, self.routing_key_env, self.routing_key_file
        )


class AlertsConfig(_Model):
    """Where walrelay's own alerts go besides the log (walrelay.monitor.alert_targets)."""

    webhooks: list[AlertWebhookConfig] = Field(default_factory=list)
    slack: list[AlertWebhookConfig] = Field(default_factory=list)
    alertmanager: list[AlertmanagerTargetConfig] = Field(default_factory=list)
    pagerduty: list[PagerDutyTargetConfig] = Field(default_factory=list)


class HttpConfig(_Model):
    """/healthz, /metrics (open), /api/* and the dashboard (token required)."""

    enabled: bool = True
    listen: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)  # 0: any free port
    token_env: str | None = None
    # Read from this file; when no token is configured anywhere, a random one
    # is generated and kept in a file only the user can read (default
    # $XDG_STATE_HOME/walrelay/<slot>-<port>.token).
    token_file: str | None = None
    # Serve https with this certificate (chain) and key; unset: plain http
    # (or put a reverse proxy in front, see README).
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> HttpConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set both tls_cert_file and tls_key_file, or neither")
        return self

    def server_ssl_context(self) -> Any:
        """An ``ssl.SSLContext`` serving ``tls_cert_file``/``tls_key_file`` (None: plain http)."""
        import ssl

        if self.tls_cert_file is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(
                f"http: cannot load tls_cert_file {self.tls_cert_file} /"
                f" tls_key_file {self.tls_key_file} ({one_line(str(e))})",
                fix="point them at a readable PEM certificate (chain) and its private key",
            ) from None
        return ctx

    def client_ssl_context(self) -> Any:
        """What ``walrelay status`` trusts to reach this server: its own certificate
        (it connects to ``listen``, an address, so the name is not checked)."""
        import ssl

        ctx = ssl.create_default_context(cafile=self.tls_cert_file)
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        ctx.check_hostname = False
        return ctx


class Config(_Model):
    source: SourceConfig
    destinations: list[DestinationConfig] = Field(min_length=1)
    shutdown_timeout: Seconds = 30.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Dedup ledger for every non-transactional sink (webhook, ...); type none: off.
    ledger: LedgerConfig = PostgresLedgerConfig(type="postgres")
    monitor: MonitorConfig = MonitorConfig()
    alerts: AlertsConfig = AlertsConfig()
    http: HttpConfig = HttpConfig()
    # walrelay's own tables (parked events, ledger); never published.
    state: StateConfig = StateConfig()
    # pg_logical_emit_message (or a table UPDATE) every interval (walrelay.source.heartbeat).
    heartbeat: HeartbeatConfig = HeartbeatConfig()
    # Partition upkeep of the outbox table by the engine (walrelay.outbox.partitions).
    outbox: OutboxConfig | None = None
    # active: take the slot's HA lock or stop; standby: wait for it (walrelay.engine.standby).
    ha: Literal["active", "standby"] = "active"

    @property
    def state_dsn(self) -> str:
        """The state database: ``state.dsn``, else the source database."""
        if self.state.dsn is None:
            return self.source.dsn_value
        return speaking_utf8(self.state.dsn.get_secret_value())

    @model_validator(mode="after")
    def _check(self) -> Config:
        names = [d.name for d in self.destinations]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"destination names must be unique; repeated: {', '.join(dupes)}")
        source_tables = set(self.source.tables)
        internal = [t for t in self.source.tables if t.startswith(self.state.schema + ".")]
        if internal and self.state.dsn is None:
            raise ValueError(
                f"source.tables lists {internal[0]!r}, in walrelay's own state schema "
                f"{self.state.schema!r}, which is never published; remove it"
            )
        for d in self.destinations:
            for t in d.tables or []:
                if t not in source_tables:
                    raise ValueError(
                        f"destination {d.name!r} lists table {t!r}, which is not in "
                        f"source.tables; add it there or remove it here"
                    )
        return self


def _format_validation(e: ValidationError, where: str) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown setting (typo?)"
        lines.append(f"{loc}: {msg.removeprefix('Value error, ')}")
    return one_line(f"invalid config {where}: " + "; ".join(lines))


def parse_config(data: Any, where: str = "") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(
            f"invalid config {where}: expected a mapping with 'source' and 'destinations'",
            fix="see the config reference in README.md",
        )
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(
            _format_validation(e, where), fix="see the config reference in README.md"
        ) from None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate walrelay.yaml; any problem is one-line ConfigError."""
    return parse_config(read_config_document(path), str(Path(path)))
