"""Kafka sink (confluent-kafka, i.e. librdkafka).

Every event becomes one record:

- topic: from the ``topic`` template (default ``{prefix}.{schema}.{table}``;
  logical decoding messages use ``message_topic``, default
  ``{prefix}.messages``; a TRUNCATE goes to the topic of each table it
  truncated; see :mod:`walrelay.sinks.templates`);
- key: the envelope's ``key`` object as canonical JSON (sorted keys, no
  spaces), e.g. ``{"id":7}``, so one row's changes land in one partition and
  per-key order becomes partition order. Events without a key object use
  ``{"table":"<schema.table>"}`` (rows of a table without a key, truncates) or
  ``{"prefix":"<prefix>"}`` (logical messages), keeping their order too;
- value: the JSON envelope (``event.body``);
- headers: ``id`` (the event id ``<commit_lsn>/<seq>``), ``op``, ``table``
  (CloudEvents binary mode adds ``ce_*`` and ``content-type``).

``key_format`` picks another key (``debezium``: the output format's key in
column order; ``column:<name>``: one column's raw value; see
:mod:`walrelay.sinks.rendered`); ``tombstones: true`` follows each delete (and
the old key of a key-changing update) with a null-value record of that key,
in the same batch, so in ``exactly_once`` mode in the same transaction.

Two modes:

``exactly_once`` (default)
    A transactional producer with a stable ``transactional.id`` (default
    ``walrelay-<slot>-<destination>``). Batches go into an open Kafka
    transaction as the scheduler hands them over (the sink is a
    :class:`~walrelay.sinks.base.PipelinedSink`); it commits once it has been
    open ``transaction_interval`` or holds ``transaction_bytes``, or at once
    when the scheduler has nothing more (so a quiet stream is not held back,
    and a busy one pays one commit per interval). It holds the records *and*
    a checkpoint record
    ``{"slot", "destination", "last_id"}`` (key ``<slot>/<destination>``)
    on a compacted checkpoint topic: both become visible to ``read_committed``
    consumers together, or neither does. On start (and after any failure
    whose outcome is unknown, e.g. a commit that timed out) the sink creates a
    new producer -- ``init_transactions`` fences the old one and finishes or
    aborts its open transaction -- and reads its checkpoint back with
    ``read_committed``. Replayed events at or below the checkpoint's id are
    skipped. The skip rule is only sound if everything at or below the
    checkpoint was delivered, i.e. if batches commit in id order; so this mode
    asks the scheduler for ``ordered = True``: one transaction at a time,
    ids increasing. (With parallel batches a later batch of other keys could
    commit first; its checkpoint would then claim the earlier batch, and a
    crash before that one commits would lose it.) The batches of a transaction
    that failed are placed again first, in their order; a later batch is
    refused until then.

``at_least_once``
    The idempotent producer (``enable.idempotence``: no duplicates from the
    producer's own retries, order kept per partition), batches in parallel
    (``ordered = False``; the scheduler never puts one key in two batches in
    flight). A batch the pipeline retries after an error can be written twice;
    consumers dedupe by the ``id`` header. For clusters without transactions.

Records are produced on the event loop, a few milliseconds at a time
(``produce`` does not block; on a thread it fought the loop, which reads the
slot, for the GIL on every event); the calls that block (start-up, topic
creation, ``begin_transaction``, ``commit_transaction``, aborts) run on the
sink's one thread, and in ``at_least_once`` mode a poll thread serves the
delivery reports while each batch waits for its own on the loop, so many
batches are in flight at once. ``deliver`` returns once every record of the
batch is acknowledged (``acks=all``) and, in ``exactly_once`` mode, the
transaction is committed. Errors: an unreachable cluster or a timeout
raises :class:`~walrelay.errors.SinkUnavailable` (retried); a record too large
for the broker raises :class:`~walrelay.errors.PoisonEvent`; a missing topic
(with ``auto_create`` off) or an authorization failure raises a permanent
:class:`~walrelay.errors.SinkError` naming the fix. In ``at_least_once`` mode a
record the producer refuses (too large) does not hold back the rest of its
batch; a batch with several failed records raises one error by the policy of
:mod:`walrelay.sinks.base` (transient if any failure is).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import orjson

from walrelay import exact_json, failpoints
from walrelay.config import env_secret
from walrelay.errors import ConfigError, PoisonEvent, SinkError, SinkUnavailable
from walrelay.model import Event, format_event_id, parse_event_id
from walrelay.sinks.base import SinkContext
from walrelay.sinks.common import batch_error, clean_topic, import_extra
from walrelay.sinks.rendered import RecordKeys, kafka_headers
from walrelay.sinks.templates import Naming

if TYPE_CHECKING:
    from confluent_kafka import KafkaError, Producer
    from confluent_kafka.admin import AdminClient

    from walrelay.config import KafkaSinkConfig

__all__ = ["KafkaSink", "message_key"]

log = logging.getLogger("walrelay.sinks.kafka")
_rdlog = logging.getLogger("walrelay.sinks.kafka.librdkafka")

Mode = Literal["exactly_once", "at_least_once"]
_Mark = tuple[int, int]

_RESERVED = (
    "bootstrap.servers",
    "transactional.id",
    "enable.idempotence",
    "acks",
    "isolation.level",
)
_MODULES = ("confluent_kafka", "confluent_kafka.admin")
_SORT = orjson.OPT_SORT_KEYS
_TOMBSTONE_HEADER = "tombstone"
# exactly_once produces on the event loop: it yields to the loop this often (s).
_PRODUCE_SLICE = 0.005
# A one-member key object that canonical JSON (exact_json, sorted keys) writes
# back byte for byte: a plain ASCII name, and an int64 without sign games or a
# plain ASCII string. Such a key_json is the record key as it is.
_CANONICAL_KEY = re.compile(
    rb'\{"[^"\\\x00-\x1f\x7f-\xff]+":(?:-?[1-9][0-9]{0,17}|0|"[^"\\\x00-\x1f\x7f-\xff]*")\}'
)


def _loads(data: bytes) -> Any:
    return exact_json.loads(data)  # a json key column's numbers as written


def message_key(event: Event, table: str) -> bytes:
    """The record key: canonical JSON of the envelope's key (module docstring),
    from :attr:`Event.key_json <walrelay.model.Event>` -- the body is parsed
    only for a logical message, or an event that did not come from the envelope
    builder."""
    if event.op == "message":
        return orjson.dumps({"prefix": _loads(event.body).get("prefix")})
    if event.op != "truncate":
        key_json = event.key_json
        if key_json is not None and _CANONICAL_KEY.fullmatch(key_json):
            return key_json  # what parsing and writing it again gives
        if key_json is None:
            key = _loads(event.body).get("key")
        elif key_json == b"null":
            key = None
        else:
            key = _loads(key_json)
        if key is not None:
            return exact_json.dumps(key, option=_SORT)
    return orjson.dumps({"table": table})


def _client_config(cfg: KafkaSinkConfig, client_id: str) -> dict[str, Any]:
    """librdkafka settings shared by the producer, the admin client and the
    checkpoint reader: servers, security (secrets read from the environment)."""
    client: dict[str, Any] = {"bootstrap.servers": cfg.bootstrap_servers, "client.id": client_id}
    protocol: str | None = cfg.security_protocol
    if protocol is None and (cfg.sasl_mechanism or cfg.tls is not None):
        protocol = ("sasl_" if cfg.sasl_mechanism else "") + (
            "ssl" if cfg.tls is not None else "plaintext"
        )
    if protocol is not None:
        client["security.protocol"] = protocol
    if cfg.sasl_mechanism:
        if not cfg.sasl_username or not cfg.sasl_password_env:
            raise ConfigError(
                f"kafka sink: sasl_mechanism {cfg.sasl_mechanism} needs sasl_username and "
                "sasl_password_env",
                fix="set both (the password is read from that environment variable)",
            )
        client["sasl.mechanism"] = cfg.sasl_mechanism
        client["sasl.username"] = cfg.sasl_username
        client["sasl.password"] = env_secret(cfg.sasl_password_env, "kafka sasl password")
    if cfg.tls is not None:
        tls = cfg.tls
        if tls.ca_file:
            client["ssl.ca.location"] = tls.ca_file
        if tls.cert_file:
            client["ssl.certificate.location"] = tls.cert_file
        if tls.key_file:
            client["ssl.key.location"] = tls.key_file
        if tls.key_password_env:
            client["ssl.key.password"] = env_secret(tls.key_password_env, "kafka tls key")
        client["enable.ssl.certificate.verification"] = tls.verify
        client["ssl.endpoint.identification.algorithm"] = "https" if tls.verify else "none"
    return client


_Header = tuple[str, bytes]


@dataclass(slots=True)
class _Record:
    topic: str
    key: bytes | None
    value: bytes | None  # None: a tombstone (outbox router, tombstone_on_empty)
    headers: list[tuple[str, str | bytes | None]]
    event_id: str


class _Reports:
    """Delivery reports of one at_least_once batch, counted on whichever thread
    serves them (the poll thread, or the producing thread while the local queue
    is full); ``done`` resolves on the event loop once every record produced
    has its report."""

    __slots__ = ("_acked", "_expected", "_lock", "_loop", "done", "failures", "produced")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._lock = threading.Lock()
        self._loop = loop
        self._acked = 0
        self._expected: int | None = None  # known once producing is over
        self.done: asyncio.Future[None] = loop.create_future()
        self.failures: list[tuple[KafkaError, Any]] = []  # (error, message)
        self.produced = 0

    def on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        with self._lock:
            if err is not None:
                self.failures.append((err, msg))
            self._acked += 1
            finished = self._acked == self._expected
        if finished:
            self._resolve()

    def expect(self, produced: int) -> None:
        """Producing is over: ``produced`` records await their reports."""
        with self._lock:
            self.produced = self._expected = produced
            finished = self._acked == produced
        if finished:
            self._resolve()

    def _resolve(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
            self._loop.call_soon_threadsafe(_set_done, self.done)


@dataclass(slots=True)
class _Txn:
    """One exactly_once transaction as its error handling needs it."""

    start: int  # index of its first event in the batch
    end: int = -1  # index after its last event
    failures: list[tuple[KafkaError, Any]] = field(default_factory=list)  # (error, message)
    current: _Record | None = None  # being produced
    committing: bool = False

    def __post_init__(self) -> None:
        self.end = self.start

    def on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        # Called only for failed records (delivery.report.only.error).
        if err is not None:
            self.failures.append((err, msg))


@dataclass(slots=True)
class _Group:
    """The open exactly_once transaction that placed batches share (see
    :meth:`KafkaSink.place`): each batch waits on its future for the commit
    of the transaction that holds its last record."""

    txn: _Txn  # its failures and the record being produced, as _failed needs them
    began: float  # time.monotonic() at begin
    size: int = 0  # bytes of values and keys produced
    last: Event | None = None  # the last event produced into it
    waiting: list[tuple[_Mark, asyncio.Future[None]]] = field(default_factory=list)


def _try_produce(producer: Producer, record: _Record, on_delivery: Any) -> bool:
    """Produce ``record``; False when the local queue is full (nothing done)."""
    try:
        producer.produce(
            record.topic,
            value=record.value,
            key=record.key,
            headers=record.headers,
            on_delivery=on_delivery,
        )
    except BufferError:
        producer.poll(0)
        return False
    return True


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():  # the waiter may have given up (cancelled, timed out)
        future.set_result(None)


class KafkaSink:
    """Produces events to Kafka; see the module docstring."""

    # exactly_once: a checkpoint record in each transaction (see _seal).
    uses_checkpoint = True

    def __init__(self, config: KafkaSinkConfig, context: SinkContext | None = None) -> None:
        self._ck = import_extra("kafka", "confluent-kafka", *_MODULES)
        context = context or SinkContext()
        if config.delivery_timeout <= 0:
            raise ConfigError(
                "kafka sink: delivery_timeout must be > 0",
                fix="set delivery_timeout to e.g. 30",
            )
        if config.effective_linger() >= config.delivery_timeout:
            raise ConfigError(
                f"kafka sink: linger ({config.effective_linger():g}s) must be below "
                f"delivery_timeout ({config.delivery_timeout:g}s)",
                fix="lower linger (records wait at most that long to be sent)",
            )
        reserved = sorted(k for k in config.options if k in _RESERVED)
        if reserved:
            raise ConfigError(
                f"kafka sink: options may not set {', '.join(reserved)} (walrelay sets them)",
                fix="remove them; use bootstrap_servers, mode and transactional_id instead",
            )
        slot, destination = context.slot, context.destination
        self.mode: Mode = config.mode
        self.ordered = config.mode == "exactly_once"
        # Transactional: no replayed id is ever visible to a read_committed
        # consumer, so the engine puts no dedup ledger in front of this sink.
        self.transactional = self.ordered
        self.batch_size = config.batch_size
        self.transaction_interval = config.transaction_interval
        self.transaction_bytes = config.transaction_bytes
        self.transaction_spacing = config.transaction_spacing
        self._committed_at = 0.0  # time.monotonic() of the last commit's answer
        self.bootstrap = config.bootstrap_servers
        self.naming = Naming(
            config.topic,
            config.message_topic,
            prefix=config.prefix,
            setting="kafka topic",
            message_setting="kafka message_topic",
            clean=clean_topic,
        )
        self.slot = slot
        self.destination = destination
        self.transactional_id = config.transactional_id or f"walrelay-{slot}-{destination}"
        self.checkpoint_topic = config.checkpoint_topic
        self.auto_create = config.auto_create
        self.partitions = config.partitions
        self.replication_factor = config.replication_factor
        self.tables = context.tables
        self.delivery_timeout = config.delivery_timeout
        self._client = _client_config(config, f"walrelay-{slot}-{destination}")
        self._producer_config: dict[str, Any] = {
            **self._client,
            "compression.type": config.compression,
            "linger.ms": round(config.effective_linger() * 1000, 3),
            "partitioner": "murmur2_random",  # Java's default: a key lands where Java puts it
            **config.options,
            "acks": "all",
            "enable.idempotence": True,
            "message.timeout.ms": int(config.delivery_timeout * 1000),
            "logger": _rdlog,
            "error_cb": self._on_client_error,
        }
        if self.ordered:
            self._producer_config["transactional.id"] = self.transactional_id
            self._producer_config["transaction.timeout.ms"] = int(
                max(60.0, 2 * config.delivery_timeout) * 1000
            )
            # A failed record fails the commit anyway; reports of the others
            # would only cost a Python call each.
            self._producer_config["delivery.report.only.error"] = True
        self._checkpoint_key = f"{slot}/{destination}".encode()
        self.keys = RecordKeys(config.key_format, message_key)
        self.tombstones = config.tombstones
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._producer: Producer | None = None
        self._admin: AdminClient | None = None
        self._topics_lock = threading.Lock()
        self._poller: threading.Thread | None = None  # at_least_once: _poll_loop
        self._stop_polling = threading.Event()
        self._retired: list[Producer] = []  # replaced producers, for the poll thread
        self._left_open = False  # a cancelled delivery may have left a transaction open
        # (table, op) -> topic, table, the op and table headers: see _records.
        self._targets: dict[tuple[str, str], tuple[str, str, tuple[_Header, _Header]]] = {}
        self._known_topics: set[str] = set()
        self._needs_reset = True
        self._fatal = False
        self._mark: _Mark | None = None
        self.skipped = 0  # replayed events dropped by the checkpoint
        self.transactions = 0  # exactly_once: transactions committed
        self.transaction_events = 0  # events in them
        # exactly_once, placed batches (see place): the open transaction, the
        # commit under way, and the first ids of batches a failed transaction
        # held, which must be placed again first and in this order.
        self.pipelined = self.ordered
        self._group: _Group | None = None
        self._committing: asyncio.Task[SinkError | None] | None = None
        self._redo: collections.deque[_Mark] = collections.deque()
        self._place_lock = asyncio.Lock()

    @classmethod
    def from_config(cls, config: KafkaSinkConfig, context: SinkContext) -> KafkaSink:
        return cls(config, context)

    def __repr__(self) -> str:
        return f"KafkaSink({self.bootstrap!r}, mode={self.mode!r})"

    @property
    def checkpoint(self) -> str | None:
        """The last event id committed with a checkpoint (exactly_once mode)."""
        mark = self._mark
        return None if mark is None else format_event_id(*mark)

    # -- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        if self._executor is not None:
            return
        # One thread produces (librdkafka's produce() does not block); in
        # at_least_once mode a second one serves delivery reports (_poll_loop).
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="walrelay-kafka"
        )
        try:
            await self._call(self._open_sync)
        except BaseException:
            await self.close()
            raise
        if not self.ordered:
            self._stop_polling.clear()
            self._poller = threading.Thread(
                target=self._poll_loop, name="walrelay-kafka-poll", daemon=True
            )
            self._poller.start()

    async def close(self) -> None:
        if self._executor is None:
            return
        committing = self._committing
        if committing is not None:
            await asyncio.wait([committing])  # its outcome reaches its batches
        group, self._group = self._group, None
        if group is not None:
            # Placed, never committed (the pipeline stopped waiting): abort it below.
            self._left_open = True
            for _, fut in group.waiting:
                fut.cancel()
        if self.transactions:
            log.info(
                "kafka sink %s: %d event(s) in %d transaction(s), %.1f each",
                self.bootstrap,
                self.transaction_events,
                self.transactions,
                self.transaction_events / self.transactions,
            )
        executor, self._executor = self._executor, None
        # Deliveries the pipeline gave up waiting for (cancelled at shutdown) still
        # run in the pool: let them finish before the producer goes away.
        await asyncio.to_thread(executor.shutdown, wait=True)
        await asyncio.to_thread(self._close_sync)

    async def deliver(self, events: Sequence[Event]) -> None:
        if not events:
            return
        if self.ordered:
            durable = await self.place(events)
            self.caught_up()  # nothing follows this batch: commit it now
            await durable
        else:
            await self._deliver_idempotent(events)

    async def _call(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` on the sink's thread."""
        executor = self._executor
        if executor is None:
            raise SinkError(f"kafka sink {self.bootstrap}: used before open() or after close()")
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    def _poll_loop(self) -> None:
        """at_least_once: serve delivery reports as they come (the batches waiting
        for them wait on the event loop, see :class:`_Reports`). Producers
        replaced after a fatal error are disposed of here, between two polls."""
        stop = self._stop_polling
        while not stop.is_set():
            retired, self._retired = self._retired, []
            for old in retired:
                _dispose_later(old)
            producer = self._producer
            if producer is None:
                stop.wait(0.05)
            else:
                producer.poll(0.05)

    # -- worker-thread code: start and stop ----------------------------------------

    def _open_sync(self) -> None:
        ck = self._ck
        self._admin = ck.admin.AdminClient({**self._client, "logger": _rdlog})
        try:
            metadata = self._admin.list_topics(timeout=min(self.delivery_timeout, 30.0))
        except ck.KafkaException as exc:
            code = exc.args[0].code() if exc.args and hasattr(exc.args[0], "code") else None
            down = ("_TRANSPORT", "_TIMED_OUT", "_ALL_BROKERS_DOWN", "_RESOLVE")
            if code in {getattr(ck.KafkaError, name) for name in down}:
                # The brokers are down or unreachable: the destination waits for them.
                raise SinkUnavailable(
                    f"kafka sink: cannot reach the cluster at {self.bootstrap}: {_err(exc)}"
                ) from None
            raise ConfigError(
                f"kafka sink: cannot reach the cluster at {self.bootstrap}: {_err(exc)}",
                fix="check bootstrap_servers, the security settings, and that the brokers run",
            ) from None
        existing = {name for name, t in metadata.topics.items() if t.error is None}
        self._known_topics |= existing
        wanted = dict(self.naming.table_names(self.tables))
        missing = sorted(set(wanted) - existing)
        if missing:
            if not self.auto_create:
                raise ConfigError(
                    f"kafka sink: topic(s) {', '.join(missing)} do not exist and auto_create is "
                    "off",
                    fix=f"create them (kafka-topics.sh --create --topic {missing[0]} ...) or set "
                    "auto_create: true",
                )
            self._create_topics(missing, config_error=True)
        if self.ordered:
            if self.checkpoint_topic not in existing and self.uses_checkpoint:
                if not self.auto_create:
                    raise ConfigError(
                        f"kafka sink: checkpoint topic {self.checkpoint_topic} does not exist "
                        "and auto_create is off",
                        fix=f"kafka-topics.sh --create --topic {self.checkpoint_topic} "
                        "--partitions 1 --config cleanup.policy=compact, or set auto_create",
                    )
                self._create_topics(
                    [self.checkpoint_topic],
                    config_error=True,
                    partitions=1,
                    config={
                        "cleanup.policy": "compact",
                        "segment.ms": "3600000",
                        "min.cleanable.dirty.ratio": "0.1",
                    },
                )
            try:
                self._reset_transactional()
            except SinkError as exc:
                raise ConfigError(
                    f"kafka sink: cannot start the transactional producer "
                    f"{self.transactional_id}: {exc}",
                    fix="check that the cluster supports transactions (transaction.state.log "
                    "replication factor <= brokers) and the ACLs on the transactional id, or "
                    "use mode: at_least_once",
                ) from None
            log.info(
                "kafka sink %s: transactional id %s, checkpoint %s",
                self.bootstrap,
                self.transactional_id,
                self.checkpoint or "(none yet)",
            )
        else:
            self._producer = ck.Producer(self._producer_config)
            self._needs_reset = False

    def _close_sync(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            self._stop_polling.set()
            poller.join()
        retired, self._retired = self._retired, []
        for old in retired:
            _dispose(old)
        producer, self._producer = self._producer, None
        if producer is not None and self._left_open:
            # A delivery cancelled mid-transaction: abort it now rather than leave
            # read_committed consumers waiting for transaction.timeout.ms.
            with contextlib.suppress(Exception):
                producer.abort_transaction(min(self.delivery_timeout, 10.0))
        if producer is not None:
            try:
                remaining = producer.flush(min(self.delivery_timeout, 10.0))
            except self._ck.KafkaException as exc:  # a fatal error: nothing more to send
                log.warning("kafka sink %s: closing: %s", self.bootstrap, _err(exc))
                remaining = 0
            if remaining:
                log.warning(
                    "kafka sink %s: %d record(s) not acknowledged at close; they are "
                    "delivered again after restart",
                    self.bootstrap,
                    remaining,
                )
            _dispose(producer)
        self._admin = None

    def _on_client_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = True
            log.error("kafka sink %s: fatal client error: %s", self.bootstrap, err.str())
        else:
            log.debug("kafka sink %s: %s", self.bootstrap, err.str())

    # -- worker-thread code: topics --------------------------------------------------

    def _ensure_topics(self, names: Iterable[str]) -> None:
        missing = {n for n in names if n not in self._known_topics}
        if not missing:
            return
        ck = self._ck
        with self._topics_lock:
            missing -= self._known_topics
            if not missing:
                return
            admin = self._admin
            assert admin is not None
            try:
                metadata = admin.list_topics(timeout=self.delivery_timeout)
            except ck.KafkaException as exc:
                raise SinkUnavailable(
                    f"kafka sink {self.bootstrap}: cannot read topic metadata: {_err(exc)}"
                ) from None
            found = {n for n in missing if n in metadata.topics and not metadata.topics[n].error}
            self._known_topics |= found
            missing -= found
            if not missing:
                return
            if not self.auto_create:
                shown = ", ".join(sorted(missing))
                raise SinkError(
                    f"kafka sink {self.bootstrap}: topic(s) {shown} do not exist and auto_create "
                    f"is off -- fix: create them (kafka-topics.sh --create --topic "
                    f"{min(missing)}) or set auto_create: true",
                    permanent=True,
                )
            self._create_topics(sorted(missing), config_error=False)

    def _create_topics(
        self,
        names: Sequence[str],
        *,
        config_error: bool,
        partitions: int | None = None,
        config: dict[str, str] | None = None,
    ) -> None:
        ck = self._ck
        admin = self._admin
        assert admin is not None
        new = [
            ck.admin.NewTopic(
                n,
                num_partitions=self.partitions if partitions is None else partitions,
                replication_factor=self.replication_factor,
                config=config or {},
            )
            for n in names
        ]
        futures = admin.create_topics(new, operation_timeout=self.delivery_timeout)
        for name, fut in futures.items():
            try:
                fut.result(self.delivery_timeout)
            except ck.KafkaException as exc:
                err = exc.args[0]
                if err.code() == ck.KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                text = f"kafka sink {self.bootstrap}: cannot create topic {name}: {err.str()}"
                if config_error:
                    raise ConfigError(
                        text, fix="create the topic yourself, or grant CREATE on the cluster"
                    ) from None
                if err.retriable():
                    raise SinkUnavailable(text) from None
                raise SinkError(text, permanent=True) from None
            log.info("kafka sink %s: created topic %s", self.bootstrap, name)
        self._known_topics.update(names)

    # -- worker-thread code: delivery -------------------------------------------------
    #
    # Per event, not per batch: an event's records are built, produced and dropped
    # at once (no list of every record of a 50,000-event batch alive at the same
    # time, which made the garbage collector a third of the sink's cost).

    def _records(self, event: Event) -> list[_Record]:
        """The records of one event: one per topic, each followed by its tombstone."""
        eid = event.id
        id_header = ("id", eid.encode())
        route = event.route
        if route is not None:  # set by the outbox router: send as routed
            headers: list[tuple[str, str | bytes | None]] = [
                id_header,
                ("op", event.op.encode()),
                ("table", event.table.encode()),
            ]
            headers += [(k, v.encode()) for k, v in route.headers]
            key = None if route.key is None else route.key.encode()
            return [_Record(route.topic, key, route.value, headers, eid)]
        if event.rendering is None and not self.tombstones:
            # The common case: one topic, known from (table, op) alone.
            pair = (event.table, event.op)
            target = self._targets.get(pair)
            if target is None and event.op != "truncate":
                names = self.naming.names(event)
                if len(names) == 1:
                    topic, table = names[0]
                    tail = (("op", event.op.encode()), ("table", table.encode()))
                    target = (topic, table, tail)
                    self._targets[pair] = target
            if target is not None:
                topic, table, tail = target
                key = self.keys.key(event, table)
                return [_Record(topic, key, event.body, [id_header, *tail], eid)]
        op_header = ("op", event.op.encode())
        out: list[_Record] = []
        extra = kafka_headers(event) if event.rendering is not None else []
        for topic, table in self.naming.names(event):
            table_header = ("table", table.encode())
            key = self.keys.key(event, table)
            sent: list[tuple[str, str | bytes | None]] = [
                id_header,
                op_header,
                table_header,
                *extra,
            ]
            out.append(_Record(topic, key, event.body, sent, eid))
            if self.tombstones:
                # A null value after a delete (and for the old key of an update
                # that changed it), in the same batch, so the same transaction.
                dead = key if event.op == "delete" else self.keys.old_key(event)
                if dead is not None:
                    marks: list[tuple[str, str | bytes | None]] = [
                        id_header,
                        (_TOMBSTONE_HEADER, b"1"),
                        table_header,
                    ]
                    out.append(_Record(topic, dead, None, marks, eid))
        return out

    def _topics(self, events: Sequence[Event]) -> set[str]:
        """Every topic ``events`` go to (one lookup per table and op)."""
        names = self.naming.names
        topics: set[str] = set()
        seen: set[tuple[str, str]] = set()
        for event in events:
            route = event.route
            if route is not None:
                topics.add(route.topic)
                continue
            op = event.op
            if op != "truncate":
                pair = (event.table, op)
                if pair in seen:
                    continue
                seen.add(pair)
            topics.update(topic for topic, _ in names(event))
        return topics

    def _produce(self, producer: Producer, record: _Record, on_delivery: Any) -> None:
        while not _try_produce(producer, record, on_delivery):
            producer.poll(0.05)  # the local queue is full: serve reports, then retry

    async def _deliver_idempotent(self, events: Sequence[Event]) -> None:
        """at_least_once: produce here on the event loop (a few milliseconds at a
        time), then wait here for the delivery reports, which the poll thread
        counts: any number of batches are in flight at once, none holding a
        thread, none fighting the event loop for the GIL."""
        ck = self._ck
        topics = self._topics(events)
        if self._fatal or self._producer is None or not topics <= self._known_topics:
            await self._call(self._prepare_idempotent, topics)
        producer = self._producer
        assert producer is not None
        reports = _Reports(asyncio.get_running_loop())
        on_delivery = reports.on_delivery
        refused: list[SinkError] = []  # records produce() itself rejected
        produced = 0
        clock = time.monotonic
        pause = clock() + _PRODUCE_SLICE
        stop = False
        try:
            for event in events:
                if stop:
                    break
                if self._producer is not producer:  # replaced after a fatal error meanwhile
                    raise SinkUnavailable(
                        f"kafka sink {self.bootstrap}: the producer was replaced after a fatal "
                        "error; the batch is sent again"
                    )
                for record in self._records(event):
                    try:
                        if not _try_produce(producer, record, on_delivery):
                            await self._produce_when_room(producer, record, on_delivery)
                    except ck.KafkaException as exc:
                        error = self._classify(exc.args[0], record)
                        refused.append(error)
                        # A record refused for good does not hold back the others
                        # (their keys differ); after a transient refusal the batch is
                        # retried anyway.
                        if not error.permanent:
                            stop = True
                            break
                    else:
                        produced += 1
                if clock() >= pause:
                    await asyncio.sleep(0)  # let the loop read the slot meanwhile
                    pause = clock() + _PRODUCE_SLICE
        finally:
            reports.expect(produced)
        try:
            await asyncio.wait_for(reports.done, self.delivery_timeout + 30.0)
        except TimeoutError:  # librdkafka reports within message.timeout.ms
            raise SinkUnavailable(
                f"kafka sink {self.bootstrap}: no delivery report within "
                f"{self.delivery_timeout:g} s for a batch from {events[0].id}"
            ) from None
        errors = refused + [self._classify(err, _record_of(msg)) for err, msg in reports.failures]
        if errors:
            raise batch_error(errors, produced + len(refused), "records")

    def _prepare_idempotent(self, topics: set[str]) -> None:
        """On the sink's thread: a producer (a new one after a fatal error) and
        ``topics`` known to exist (created if allowed)."""
        ck = self._ck
        if self._fatal or self._producer is None:
            old, self._producer = self._producer, ck.Producer(self._producer_config)
            self._fatal = False
            if old is not None:
                self._retired.append(old)  # the poll thread may be polling it
        self._ensure_topics(topics)

    def _deliver_transactional(self, events: Sequence[Event]) -> None:
        """exactly_once, all of it on the sink's thread (see :meth:`_deliver_ordered`
        for the sink's own path)."""
        fresh = self._prepare_transactional(events)
        start = 0
        while start < len(fresh):
            start = self._transaction(fresh, start)

    def _prepare_transactional(self, events: Sequence[Event]) -> Sequence[Event]:
        """On the sink's thread: a settled producer, the events past the
        checkpoint, and their topics created."""
        self._settle_producer()
        fresh = self._past_checkpoint(events)
        if fresh:
            self._ensure_topics(self._topics(fresh))
        return fresh

    def _settle_producer(self) -> None:
        """On the sink's thread: a new producer after a failure (fencing the
        old one and settling its transaction), the checkpoint read back."""
        if self._unsettled():
            self._reset_transactional()
            self._left_open = False

    # -- exactly_once: batches placed into a shared transaction --------------------
    #
    # The scheduler hands over the next batch as soon as ``place`` returns (see
    # walrelay.sinks.base.PipelinedSink), so under load the batches read meanwhile
    # join the open transaction until it has held transaction_interval or
    # transaction_bytes, and one commit serves them all; when the scheduler has
    # nothing more (``caught_up``) the transaction commits at once. Records are
    # produced here on the event loop, a few milliseconds at a time (producing on
    # a thread fought the loop, which reads the slot, for the GIL on every event);
    # begin and commit, which block, run on the sink's thread.

    async def place(self, events: Sequence[Event]) -> asyncio.Future[None]:
        """Produce ``events`` into the open transaction (beginning one, or
        committing the open one on the way when it is full); the future is done
        once the transaction holding the last of them is committed."""
        async with self._place_lock:
            return await self._place(events)

    def caught_up(self) -> None:
        """Nothing more to place for now: commit the open transaction."""
        if self._group is not None and self._free_to_commit():
            self._start_commit()

    def _free_to_commit(self) -> bool:
        """No commit under way and no batch being placed (which commits itself)."""
        return self._committing is None and not self._place_lock.locked()

    def _unsettled(self) -> bool:
        """The producer must be made anew (after a failure) before the next transaction."""
        return self._needs_reset or self._fatal or self._producer is None

    async def _place(self, events: Sequence[Event]) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        if self._committing is not None:
            await asyncio.wait([self._committing])  # one transaction at a time
        first = (events[0].commit_lsn, events[0].seq)
        redo = self._redo
        if redo and first != redo[0]:
            raise SinkUnavailable(
                f"kafka sink {self.bootstrap}: the batch from {format_event_id(*first)} "
                "waits until the batches of the failed transaction are sent again "
                f"(next: {format_event_id(*redo[0])})",
                retry_after=0.05,  # soon, not after a backoff grown by each refusal
            )
        if self._group is None and self._unsettled():
            await self._call(self._settle_producer)
        fresh = self._past_checkpoint(events)
        topics = self._topics(fresh)
        if not topics <= self._known_topics:
            await self._call(self._ensure_topics, topics)
        durable: asyncio.Future[None] = loop.create_future()
        if not fresh:  # all of it committed before (a replay): nothing to wait for
            if redo:
                redo.popleft()
            durable.set_result(None)
            return durable
        group = self._group
        ck = self._ck
        producer = self._producer
        assert producer is not None
        try:
            clock = time.monotonic
            pause = clock() + _PRODUCE_SLICE
            records, budget, interval = (
                self._records,
                self.transaction_bytes,
                self.transaction_interval,
            )
            for event in fresh:
                if group is None:
                    group = await self._begin_group(producer)
                txn, on_delivery = group.txn, group.txn.on_delivery
                for record in records(event):
                    txn.current = record
                    if not _try_produce(producer, record, on_delivery):
                        await self._produce_when_room(producer, record, on_delivery)
                    group.size += len(record.value or b"") + len(record.key or b"")
                txn.current = None
                txn.end += 1
                group.last = event
                now = clock()
                if group.size >= budget or now >= group.began + interval:
                    self._start_commit()
                    group = None
                    error = await self._committed()
                    if error is not None:
                        raise error
                    pause = clock() + _PRODUCE_SLICE
                elif now >= pause:
                    await asyncio.sleep(0)  # let the loop read the slot meanwhile
                    pause = clock() + _PRODUCE_SLICE
        except (ck.KafkaException, RuntimeError) as exc:
            if group is None:  # begin_transaction failed: nothing is open
                raise await self._call(self._failed, producer, exc, _Txn(0)) from None
            self._group = None
            error = await self._call(self._failed, producer, exc, group.txn)
            self._fail(
                group,
                SinkUnavailable(
                    f"kafka sink {self.bootstrap}: the transaction was aborted: the batch "
                    f"from {format_event_id(*first)}, placed after this one, failed: {error}"
                ),
            )
            raise error from None
        except asyncio.CancelledError:
            # Left open: the next batch starts a new producer, whose
            # init_transactions settles it; close() aborts it.
            self._needs_reset = True
            self._left_open = True
            dropped, self._group = self._group, None
            if dropped is not None:
                for _, fut in dropped.waiting:
                    fut.cancel()
            raise
        if redo:
            redo.popleft()
        if group is None:
            durable.set_result(None)  # its last record was in the transaction just committed
        else:
            group.waiting.append((first, durable))
        return durable

    def _past_checkpoint(self, events: Sequence[Event]) -> Sequence[Event]:
        """``events`` without those at or below the checkpoint (a replay after a
        restart or a commit whose outcome was unknown)."""
        mark = self._mark
        if mark is None or (events[0].commit_lsn, events[0].seq) > mark:
            return events
        fresh = [e for e in events if (e.commit_lsn, e.seq) > mark]
        skipped = len(events) - len(fresh)
        self.skipped += skipped
        log.info(
            "kafka sink %s: skipped %d replayed event(s) at or below checkpoint %s",
            self.bootstrap,
            skipped,
            self.checkpoint,
        )
        return fresh

    async def _begin_group(self, producer: Producer) -> _Group:
        await self._spaced()
        await self._call(self._begin, producer)
        group = self._group = _Group(_Txn(0), time.monotonic())
        asyncio.get_running_loop().call_later(self.transaction_interval, self._interval_over, group)
        return group

    def _interval_over(self, group: _Group) -> None:
        """``transaction_interval`` after ``group`` began: commit it, unless a
        batch is being placed into it (which commits it itself)."""
        if self._group is group and self._free_to_commit():
            self._start_commit()

    def _start_commit(self) -> None:
        group, self._group = self._group, None
        assert group is not None and self._committing is None
        task = asyncio.get_running_loop().create_task(self._commit_group(group))
        self._committing = task
        task.add_done_callback(self._commit_done)

    def _commit_done(self, task: asyncio.Task[SinkError | None]) -> None:
        if self._committing is task:
            self._committing = None

    async def _committed(self) -> SinkError | None:
        """Wait for the commit under way; its error, if it failed."""
        task = self._committing
        if task is None:
            return None
        await asyncio.wait([task])
        return None if task.cancelled() else task.result()

    async def _commit_group(self, group: _Group) -> SinkError | None:
        """Commit ``group`` with its checkpoint; its batches learn the outcome."""
        producer = self._producer
        assert producer is not None and group.last is not None
        try:
            await self._call(self._commit, producer, group.last, group.txn)
        except (self._ck.KafkaException, RuntimeError) as exc:
            error: SinkError = await self._call(self._failed, producer, exc, group.txn)
            self._fail(group, error)
            return error
        except asyncio.CancelledError:
            self._needs_reset = True
            for _, fut in group.waiting:
                fut.cancel()
            raise
        self._committed_at = time.monotonic()
        self._mark = (group.last.commit_lsn, group.last.seq)
        self.transactions += 1
        self.transaction_events += group.txn.end
        for _, fut in group.waiting:
            if not fut.done():
                fut.set_result(None)
        return None

    def _fail(self, group: _Group, error: SinkError) -> None:
        """``group`` was aborted (or its outcome is unknown): each of its batches
        fails with ``error`` and is placed again, in the same order, before any
        other (the checkpoint then skips what a commit of unknown outcome did
        commit)."""
        self._redo = collections.deque([*(first for first, _ in group.waiting), *self._redo])
        for _, fut in group.waiting:
            if not fut.done():
                fut.set_exception(error)
                fut.exception()  # retrieved: a batch the pipeline stopped waiting for

    async def _spaced(self) -> None:
        """Wait until ``transaction_spacing`` has passed since the last commit."""
        wait = self._committed_at + self.transaction_spacing - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    @staticmethod
    async def _produce_when_room(producer: Producer, record: _Record, on_delivery: Any) -> None:
        """The local queue is full: retry as acknowledgements make room."""
        while True:
            await asyncio.sleep(0.005)  # no event tells when librdkafka frees space
            if _try_produce(producer, record, on_delivery):
                return

    def _transaction(self, events: Sequence[Event], start: int) -> int:
        """One transaction from ``events[start]`` on, with its checkpoint; it ends
        (after an event's last record) once it has taken ``transaction_interval``
        or holds ``transaction_bytes``, or at the end. Returns where the next one
        starts."""
        ck = self._ck
        producer = self._producer
        assert producer is not None
        txn = _Txn(start)
        try:
            self._begin(producer)
            clock = time.monotonic
            deadline = clock() + self.transaction_interval
            budget = self.transaction_bytes
            size = 0
            total = len(events)
            records, produce, on_delivery = self._records, self._produce, txn.on_delivery
            while txn.end < total:
                for record in records(events[txn.end]):
                    txn.current = record
                    produce(producer, record, on_delivery)
                    size += len(record.value or b"") + len(record.key or b"")
                txn.end += 1
                if size >= budget or clock() >= deadline:
                    break
            txn.current = None
            self._commit(producer, events[txn.end - 1], txn)
        except (ck.KafkaException, RuntimeError) as exc:
            raise self._failed(producer, exc, txn) from None
        last = events[txn.end - 1]
        self._mark = (last.commit_lsn, last.seq)
        self.transactions += 1
        self.transaction_events += txn.end - txn.start
        return txn.end

    def _begin(self, producer: Producer) -> None:
        producer.poll(0)
        producer.begin_transaction()

    def _commit(self, producer: Producer, last: Event, txn: _Txn) -> None:
        self._seal(producer, last, txn.on_delivery)
        failpoints.hit(failpoints.KAFKA_BEFORE_COMMIT)
        txn.committing = True
        producer.commit_transaction(self.delivery_timeout)
        failpoints.hit(failpoints.KAFKA_AFTER_COMMIT)

    def _failed(self, producer: Producer, exc: Exception, txn: _Txn) -> SinkError:
        """After a transaction raised ``exc``: abort it (or leave it to the next
        producer when its outcome is unknown); the error to raise."""
        ck = self._ck
        err = exc.args[0] if isinstance(exc, ck.KafkaException) and exc.args else None
        if err is None or not hasattr(err, "txn_requires_abort"):
            # IllegalStateException and the like: start over with a new producer.
            self._needs_reset = True
            return SinkUnavailable(f"kafka sink {self.bootstrap}: transaction failed: {exc}")
        if not txn.committing or err.txn_requires_abort():
            try:
                producer.abort_transaction(self.delivery_timeout)
            except Exception:
                self._needs_reset = True
        else:
            # The commit's outcome is unknown (timeout, lost coordinator): a new
            # producer's init_transactions settles it, the checkpoint tells which.
            self._needs_reset = True
        if err.fatal():
            self._needs_reset = True
        if txn.current is not None:  # produce() itself refused this record
            return self._classify(err, txn.current)
        # Records purged by the abort above report that, not why it failed.
        purged = (ck.KafkaError._PURGE_QUEUE, ck.KafkaError._PURGE_INFLIGHT)
        failed = [(e, _record_of(msg)) for e, msg in txn.failures if e.code() not in purged]
        if failed:
            return self._combine(failed, txn.end - txn.start + 1)
        return self._classify(err, None)

    def _seal(self, producer: Producer, last: Event, on_delivery: Any) -> None:
        """What makes the open transaction's progress durable with it: the
        checkpoint record (a worker's sink commits consumed offsets instead:
        :mod:`walrelay.sinks.kafka_offsets`)."""
        checkpoint = orjson.dumps(
            {"slot": self.slot, "destination": self.destination, "last_id": last.id}
        )
        producer.produce(
            self.checkpoint_topic,
            value=checkpoint,
            key=self._checkpoint_key,
            on_delivery=on_delivery,
        )

    def _reset_transactional(self) -> None:
        """New producer: fence the old one, settle its transaction, read the checkpoint."""
        ck = self._ck
        old, self._producer = self._producer, None
        self._needs_reset = True
        self._fatal = False
        if old is not None:
            _dispose_later(old)
        producer = ck.Producer(self._producer_config)
        try:
            producer.init_transactions(self.delivery_timeout)
        except ck.KafkaException as exc:
            _dispose_later(producer)
            err = exc.args[0]
            raise self._classify(err, None, what="init_transactions") from None
        self._producer = producer
        self._mark = self._read_checkpoint()
        self._needs_reset = False

    def _read_checkpoint(self) -> _Mark | None:
        """The last checkpoint of this slot/destination, read with read_committed.

        Scans each partition of the checkpoint topic backwards in growing
        windows from its end, so a topic that compaction has not cleaned up
        yet is not read whole.
        """
        ck = self._ck
        topic = self.checkpoint_topic
        consumer = ck.Consumer(
            {
                **self._client,
                "group.id": f"{self.transactional_id}.checkpoint-reader",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "logger": _rdlog,
            }
        )
        deadline = time.monotonic() + self.delivery_timeout
        try:
            try:
                metadata = consumer.list_topics(topic, timeout=self.delivery_timeout)
                partitions = sorted(metadata.topics[topic].partitions)
                best: _Mark | None = None
                for partition in partitions:
                    tp = ck.TopicPartition(topic, partition)
                    low, high = consumer.get_watermark_offsets(
                        tp, timeout=self.delivery_timeout, cached=False
                    )
                    window = 256
                    while high > low:
                        start = max(low, high - window)
                        found = self._scan(consumer, partition, start, high, deadline)
                        if found is not None:
                            best = found if best is None else max(best, found)
                            break
                        if start == low:
                            break
                        window *= 16
                return best
            except ck.KafkaException as exc:
                raise SinkUnavailable(
                    f"kafka sink {self.bootstrap}: cannot read checkpoint topic {topic}: "
                    f"{_err(exc)}"
                ) from None
        finally:
            consumer.close()

    def _scan(
        self, consumer: Any, partition: int, start: int, high: int, deadline: float
    ) -> _Mark | None:
        ck = self._ck
        topic = self.checkpoint_topic
        consumer.assign([ck.TopicPartition(topic, partition, start)])
        found: _Mark | None = None
        try:
            while True:
                if time.monotonic() > deadline:
                    raise SinkUnavailable(
                        f"kafka sink {self.bootstrap}: reading checkpoint topic {topic} "
                        f"partition {partition} took longer than {self.delivery_timeout:g} s"
                    )
                msg = consumer.poll(0.2)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() != ck.KafkaError._PARTITION_EOF:
                        raise ck.KafkaException(err)
                    # At the last stable offset. An open transaction of another
                    # destination may hide later records: wait for the true end.
                    position = consumer.position([ck.TopicPartition(topic, partition)])
                    if position[0].offset >= high:
                        return found
                    continue
                if msg.key() != self._checkpoint_key:
                    continue
                value = msg.value()
                if value is None:
                    found = None  # a tombstone: the checkpoint was deleted
                    continue
                try:
                    found = parse_event_id(str(orjson.loads(value)["last_id"]))
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    log.warning(
                        "kafka sink %s: ignoring a malformed checkpoint record at %s[%d]@%s",
                        self.bootstrap,
                        topic,
                        partition,
                        msg.offset(),
                    )
        finally:
            consumer.unassign()

    # -- errors -----------------------------------------------------------------------

    def _classify(
        self, err: KafkaError, record: _Record | None, *, what: str = "delivery"
    ) -> SinkError:
        ck = self._ck
        code = err.code()
        E = ck.KafkaError
        where = f"kafka sink {self.bootstrap}"
        about = f" of event {record.event_id} to topic {record.topic}" if record else ""
        text = f"{where}: {what}{about} failed: {err.str()}"
        if code in (E.MSG_SIZE_TOO_LARGE, E.RECORD_LIST_TOO_LARGE):
            size = len(record.value or b"") if record else 0
            return PoisonEvent(
                f"{text} ({size} bytes; raise the topic's max.message.bytes and the "
                "producer's message.max.bytes option, or filter the column out)"
            )
        if code in (E.UNKNOWN_TOPIC_OR_PART, E._UNKNOWN_TOPIC):
            return SinkError(
                f"{text} -- fix: create the topic or set auto_create: true", permanent=True
            )
        if code in (
            E.TOPIC_AUTHORIZATION_FAILED,
            E.CLUSTER_AUTHORIZATION_FAILED,
            E.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            E.SASL_AUTHENTICATION_FAILED,
            E._AUTHENTICATION,
        ):
            return SinkError(f"{text} -- fix: check the credentials and ACLs", permanent=True)
        # INVALID_MSG: the broker's CORRUPT_MESSAGE (librdkafka's name for it).
        if code in (E.INVALID_RECORD, E.INVALID_MSG, E._INVALID_ARG):
            return PoisonEvent(text)
        return SinkUnavailable(text)

    def _combine(self, failures: list[tuple[KafkaError, _Record]], total: int) -> SinkError:
        """One error for the failed records of a batch (policy: :mod:`walrelay.sinks.base`)."""
        errors = [self._classify(err, record) for err, record in failures]
        return batch_error(errors, total, "records")


def _record_of(msg: Any) -> _Record:
    """The record a delivery report is about (for the error message)."""
    event_id = "(checkpoint)"
    for name, value in msg.headers() or ():
        if name == "id" and value is not None:
            event_id = value.decode()
            break
    return _Record(msg.topic() or "?", msg.key(), msg.value(), [], event_id)


def _err(exc: BaseException) -> str:
    arg = exc.args[0] if exc.args else exc
    text = arg.str() if hasattr(arg, "str") else str(arg)
    return str(text)


def _dispose(producer: Producer) -> None:
    try:
        producer.purge(in_queue=True, in_flight=True, blocking=False)
        producer.poll(0)
        producer.close()
    except Exception as exc:  # closing a broken producer must not hide the real error
        log.debug("kafka sink: error while closing a producer: %s", exc)


def _dispose_later(producer: Producer) -> None:
    """Close a producer we gave up on without blocking delivery on it."""
    threading.Thread(
        target=_dispose, args=(producer,), name="walrelay-kafka-dispose", daemon=True
    ).start()
