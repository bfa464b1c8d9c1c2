"""The delivery ledger: which event ids a destination has already received.

ARCHITECTURE section 2, layer 2 of exactly-once. After a crash PostgreSQL
replays every transaction after the slot's confirmed LSN, so a sink that is
not transactional (webhooks, RabbitMQ) would receive again what it already
had. The engine gives such a destination a :class:`LedgerHook` (a delivery
hook, see :mod:`walrelay.pipeline.hooks`), which for every batch

1. **checks** the ledger (one round trip) and drops the ids it holds;
2. **sends** the rest through the real sink;
3. **records** their ids in the ledger (one round trip);

so a replay is dropped, and a resend can only happen when walrelay dies
between 2 and 3 (then the same ids are sent again: the webhook ``webhook-id``
lets the receiver drop them). The checks and records of batches in flight
at the same time go together: at most one ledger round trip is in flight,
carrying every record and check that waited for it
(:mod:`walrelay.pipeline.ledger_exchange`, group commit).

If the ledger cannot be reached (the backends raise
:class:`LedgerUnavailable`), ``deliver`` waits, retrying the ledger with
backoff: delivery pauses -- nothing is sent unchecked, a batch already sent
waits for its record instead of going out again, and no event counts as
failed (so none is parked because of the ledger) -- and resumes by itself
when the ledger is back. ``ledger_down_since`` / ``ledger_error`` tell
monitoring.

Backends (``ledger:`` in the config):

:class:`RedisLedger` (``{type: redis, url: redis://...}``)
    one sorted set per destination (``<key_prefix><destination>``), member =
    event id, score = commit LSN. A round trip is one Lua script
    (:data:`REDIS_EXCHANGE`): ``ZADD`` the ids to record, the trim
    ``ZREMRANGEBYSCORE -inf (<floor>``, then ``ZMSCORE`` the ids to check,
    answering only the ids found; the ids go as one comma-separated
    argument each way.
    Scores are doubles: exact for LSNs below 2^53 (8 PiB of WAL).
    Durability is Redis's: with ``appendfsync everysec`` a crash *of Redis*
    can forget the last second of records (those events may be sent once
    more, with the same id).
:class:`PostgresLedger` (``{type: postgres}``, the default)
    the table ``<schema>.ledger`` in the state database (state migration 3;
    its statements are in :mod:`walrelay.state.ledger`),
    primary key ``(destination, event_id)``. A round trip is one statement:
    ``insert .. on conflict do nothing`` of the ids to record and the trim
    (at most once a second) as CTEs, and the ``select`` of the ids to check.

Trimming: ids of transactions below the *trim floor* can never be replayed
(the slot's confirmed LSN is past them), so they are removed. The engine
sets the floor through :meth:`LedgerHook.trim_below` from the LSN tracker;
parking, which re-delivers parked events below the confirmed LSN, must
hold the floor at its oldest parked commit LSN.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import psycopg

from walrelay import failpoints
from walrelay.config import masked_dsn
from walrelay.errors import ConfigError, SinkUnavailable
from walrelay.model import Event, Lsn, format_lsn, parse_lsn
from walrelay.pipeline.backoff import Backoff
from walrelay.pipeline.hooks import DeliveryHook
from walrelay.pipeline.ledger_exchange import LedgerExchange
from walrelay.sinks.base import Sink
from walrelay.sinks.common import safe_url
from walrelay.state.durability import require_flushed_commits
from walrelay.state.ledger import LedgerTable

if TYPE_CHECKING:
    from walrelay.config import Config, DestinationConfig

__all__ = [
    "ExchangingLedger",
    "Ledger",
    "LedgerHook",
    "LedgerUnavailable",
    "PostgresLedger",
    "RedisLedger",
    "TrimAware",
    "build_ledger",
    "is_transactional",
    "ledger_hook",
]

log = logging.getLogger("walrelay.ledger")

TRIM_INTERVAL = 1.0
"""Seconds between two trims of one destination's ledger (trims ride along a record)."""


class LedgerUnavailable(SinkUnavailable):
    """The ledger could not be read or written: delivery pauses until it is back."""


@runtime_checkable
class Ledger(Protocol):
    """Remembers delivered event ids per destination."""

    async def open(self) -> None:
        """Prepare (create tables); must not fail because the backend is down."""

    async def close(self) -> None: ...

    async def delivered(self, destination: str, events: Sequence[Event]) -> set[str]:
        """The ids among ``events`` recorded as delivered. Raises :class:`LedgerUnavailable`."""
        ...

    async def record(
        self, destination: str, events: Sequence[Event], trim_below: Lsn | None = None
    ) -> None:
        """Record the ids (idempotent); with ``trim_below``, also forget ids of
        transactions whose commit LSN is below it. Raises :class:`LedgerUnavailable`."""
        ...


@runtime_checkable
class ExchangingLedger(Ledger, Protocol):
    """A ledger that records and checks in one round trip (both backends here)."""

    async def exchange(
        self,
        destination: str,
        record: Sequence[Event],
        check: Sequence[Event],
        trim_below: Lsn | None = None,
    ) -> set[str]:
        """Record ``record`` (and trim, as :meth:`Ledger.record`), then return the
        ids among ``check`` recorded before; one round trip. Raises
        :class:`LedgerUnavailable`."""
        ...

    async def highest(self, destination: str) -> Lsn | None:
        """At least the highest commit LSN recorded (None: nothing is). Raises
        :class:`LedgerUnavailable`."""
        ...


@runtime_checkable
class TrimAware(Protocol):
    """Keeps per-id records and wants to forget old ones: a :class:`LedgerHook`,
    or a sink that dedups by itself (the PostgreSQL sink's applied ids)."""

    def trim_below(self, lsn: Lsn) -> None:
        """No event with a commit LSN below ``lsn`` will be delivered again."""


def is_transactional(sink: Sink) -> bool:
    """True when the sink itself never lets a replayed id be seen twice downstream
    (:attr:`Sink.transactional <walrelay.sinks.base.Sink>`: PostgreSQL, Kafka
    transactions, ...)."""
    return sink.transactional


# --------------------------------------------------------------------------- Redis

REDIS_EXCHANGE = """
local key = KEYS[1]
local args, n = {}, 0
for id in string.gmatch(ARGV[1], '[^,]+') do
  -- the score is the commit LSN, the id's first 16 hex digits (format_event_id)
  args[n + 1] = tonumber(string.sub(id, 1, 16), 16)
  args[n + 2] = id
  n = n + 2
  if n == 1000 then
    redis.call('ZADD', key, unpack(args, 1, n))
    n = 0
  end
end
if n > 0 then redis.call('ZADD', key, unpack(args, 1, n)) end
if ARGV[2] ~= '' then redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. ARGV[2]) end
local found, ids = {}, {}
local function lookup(m)
  local scores = redis.call('ZMSCORE', key, unpack(ids, 1, m))
  for j = 1, m do
    if scores[j] then found[#found + 1] = ids[j] end
  end
end
n = 0
for id in string.gmatch(ARGV[3], '[^,]+') do
  n = n + 1
  ids[n] = id
  if n == 500 then lookup(n); n = 0 end
end
if n > 0 then lookup(n) end
return found
"""
"""Record (ARGV[1], comma-separated ids), trim (ARGV[2], a decimal LSN or ''),
check (ARGV[3]): the ids of ARGV[3] found, in one round trip."""


class RedisLedger:
    """Sorted set per destination; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "walrelay:ledger:",
        timeout: float = 5.0,
    ) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError:  # pragma: no cover - depends on the install
            raise ConfigError(
                "ledger type redis needs the redis client",
                fix="pip install 'walrelay[redis]'",
            ) from None
        self._url = url
        self.key_prefix = key_prefix
        try:
            # No retries inside the client: an outage surfaces at once as
            # LedgerUnavailable and the pipeline's backoff takes over.
            self._client: Any = aioredis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
            )
        except ValueError as e:
            raise ConfigError(
                f"ledger: bad redis url: {e}", fix="use redis://host:port/db"
            ) from None
        from redis.exceptions import RedisError

        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self._exchange = self._client.register_script(REDIS_EXCHANGE)

    @property
    def where(self) -> str:
        return safe_url(self._url)

    def key(self, destination: str) -> str:
        return self.key_prefix + destination

    async def open(self) -> None:
        try:
            await self._client.ping()
            # Loaded now, the first exchange is one EVALSHA, not a NOSCRIPT
            # answer, a SCRIPT LOAD and the EVALSHA again (redis-py's fallback,
            # still there for a server restarted or flushed later).
            await self._client.script_load(REDIS_EXCHANGE)
        except self._errors as e:
            log.warning("ledger %s is not reachable (%s); delivery waits for it", self.where, e)

    async def close(self) -> None:
        await self._client.aclose()

    async def delivered(self, destination: str, events: Sequence[Event]) -> set[str]:
        if not events:
            return set()
        ids = [e.id for e in events]
        try:
            scores = await self._client.zmscore(self.key(destination), ids)
        except self._errors as e:
            raise LedgerUnavailable(f"ledger {self.where}: {type(e).__name__}: {e}") from None
        return {i for i, s in zip(ids, scores, strict=True) if s is not None}

    async def record(
        self, destination: str, events: Sequence[Event], trim_below: Lsn | None = None
    ) -> None:
        key = self.key(destination)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                if events:
                    pipe.zadd(key, {e.id: float(e.commit_lsn) for e in events})
                if trim_below is not None:
                    pipe.zremrangebyscore(key, "-inf", f"({trim_below}")
                await pipe.execute()
        except self._errors as e:
            raise LedgerUnavailable(f"ledger {self.where}: {type(e).__name__}: {e}") from None

    async def exchange(
        self,
        destination: str,
        record: Sequence[Event],
        check: Sequence[Event],
        trim_below: Lsn | None = None,
    ) -> set[str]:
        args = (
            ",".join([e.id for e in record]),
            "" if trim_below is None else str(trim_below),
            ",".join([e.id for e in check]),
        )
        try:
            found = await self._exchange(keys=[self.key(destination)], args=args)
        except self._errors as e:
            raise LedgerUnavailable(f"ledger {self.where}: {type(e).__name__}: {e}") from None
        return {i.decode() if isinstance(i, bytes) else str(i) for i in found}

    async def highest(self, destination: str) -> Lsn | None:
        try:
            top = await self._client.zrange(self.key(destination), -1, -1, withscores=True)
        except self._errors as e:
            raise LedgerUnavailable(f"ledger {self.where}: {type(e).__name__}: {e}") from None
        if not top:
            return None
        # A double: above 2^53 it may be below the LSN by up to half a spacing
        # (at most 2^10 below 2^64): round up past it.
        score = int(top[0][1])
        return score if score < 2**53 else score + 2**11

    def __repr__(self) -> str:
        return f"RedisLedger({self.where!r})"


# --------------------------------------------------------------------------- PostgreSQL


class PostgresLedger:
    """The ``ledger`` table in the state database; see the module docstring."""

    def __init__(self, dsn: str, *, schema: str = "walrelay", connect_timeout: float = 5.0) -> None:
        self._dsn = dsn
        self.schema = schema
        self.connect_timeout = connect_timeout
        self._conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
        self._lock = asyncio.Lock()
        self._table = LedgerTable(schema)

    @property
    def where(self) -> str:
        return f"{masked_dsn(self._dsn)} schema {self.schema}"

    async def open(self) -> None:
        try:
            await self._connection()
        except LedgerUnavailable as e:
            log.warning("%s; delivery waits for it", e)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def _connection(self) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        self._conn = None
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=max(1, round(self.connect_timeout)),
                application_name="walrelay-ledger",
            )
        except psycopg.OperationalError as e:
            raise LedgerUnavailable(
                f"ledger {self.where}: cannot connect: {str(e).strip()}"
            ) from None
        try:
            from walrelay.state.migrations import migrate

            await migrate(conn, self.schema)
            await require_flushed_commits(conn)  # a lost record would mean a resend
        except psycopg.OperationalError as e:
            await conn.close()
            raise LedgerUnavailable(f"ledger {self.where}: {str(e).strip()}") from None
        self._conn = conn
        return conn

    async def _run(self, fn: Any) -> Any:
        async with self._lock:
            conn = await self._connection()
            try:
                return await fn(conn)
            except psycopg.OperationalError as e:
                self._conn = None
                await conn.close()
                raise LedgerUnavailable(f"ledger {self.where}: {str(e).strip()}") from None

    async def delivered(self, destination: str, events: Sequence[Event]) -> set[str]:
        if not events:
            return set()
        ids = [e.id for e in events]
        lsns = [e.commit_lsn for e in events]
        low, high = format_lsn(min(lsns)), format_lsn(max(lsns))

        async def q(conn: psycopg.AsyncConnection[tuple[Any, ...]]) -> set[str]:
            return await self._table.delivered(conn, destination, ids, low, high)

        result: set[str] = await self._run(q)
        return result

    async def record(
        self, destination: str, events: Sequence[Event], trim_below: Lsn | None = None
    ) -> None:
        ids = [e.id for e in events]
        lsns = [format_lsn(e.commit_lsn) for e in events]

        trim = None if trim_below is None else format_lsn(trim_below)

        async def q(conn: psycopg.AsyncConnection[tuple[Any, ...]]) -> None:
            await self._table.record(conn, destination, ids, lsns, trim)

        await self._run(q)

    async def exchange(
        self,
        destination: str,
        record: Sequence[Event],
        check: Sequence[Event],
        trim_below: Lsn | None = None,
    ) -> set[str]:
        recorded = ",".join([e.id for e in record]) if record else None
        trim = None if trim_below is None else format_lsn(trim_below)
        checked = low = high = None
        if check:
            checked = ",".join([e.id for e in check])
            lsns = [e.commit_lsn for e in check]
            low, high = format_lsn(min(lsns)), format_lsn(max(lsns))

        async def q(conn: psycopg.AsyncConnection[tuple[Any, ...]]) -> set[str]:
            return await self._table.exchange(conn, destination, recorded, trim, checked, low, high)

        result: set[str] = await self._run(q)
        return result

    async def highest(self, destination: str) -> Lsn | None:
        async def q(conn: psycopg.AsyncConnection[tuple[Any, ...]]) -> str | None:
            return await self._table.highest(conn, destination)

        top: str | None = await self._run(q)
        return None if top is None else parse_lsn(top)

    def __repr__(self) -> str:
        return f"PostgresLedger({self.where!r})"


# --------------------------------------------------------------------------- the wrapper


_T = TypeVar("_T")

_ANY_SEQ = 2**63


class LedgerHook(DeliveryHook):
    """check -> send -> record around a non-transactional sink, as a delivery
    hook (:mod:`walrelay.pipeline.hooks`): ``before_send`` drops the ids the
    ledger holds, ``after_send`` records the ids sent.

    Checks and records of batches in flight at the same time share ledger
    round trips (see :class:`~walrelay.pipeline.ledger_exchange.LedgerExchange`):
    one round trip records the ids of the batches just sent and checks those
    of the batches about to be sent.

    ``sole_writer``: this process is the only one that records under
    ``ledger_key`` (the relay: its slot admits one walrelay at a time; not a
    Kafka worker, whose group shares the key). Then a batch needs no check
    when every event in it is above both the highest commit LSN the ledger
    held at :meth:`open` and every event this hook has let through since:
    no one can have recorded it. The stream is such batches; only a replay
    (after a restart or a reconnect) and events that waited behind their key
    are checked. Such a batch still goes out only once the ledger answered
    a round trip ending after it came (the one in flight, usually recording
    other batches, or a new one), so nothing is sent while the ledger is
    down. While the ledger's highest LSN is unknown (it was down at open, or
    the backend cannot tell) every batch is checked.
    """

    def __init__(
        self,
        ledger: Ledger,
        destination: str,
        *,
        ledger_key: str | None = None,
        ledger_backoff: Backoff | None = None,
        sole_writer: bool = False,
    ) -> None:
        self.ledger = ledger
        self.sole_writer = sole_writer
        self.destination = destination
        # Event ids are positions in one slot's history: the ledger entries of
        # a destination are namespaced by slot so that two walrelays (two
        # slots) sharing a state database never take each other's ids.
        self.ledger_key = ledger_key or destination
        self._ledger_backoff = ledger_backoff or Backoff(initial=0.1, multiplier=2.0, maximum=5.0)
        self._trim_floor: Lsn | None = None
        self._trimmed_floor: Lsn | None = None
        self._last_trim = 0.0
        self._exchange = LedgerExchange(self._round_trip)
        self._exchanging = ledger if isinstance(ledger, ExchangingLedger) else None
        self._calls = 0  # backend calls (one per round trip when the ledger exchanges)
        # sole_writer: every id the ledger can hold is at or below this (commit
        # LSN, seq); None while unknown (then every batch is checked).
        self._high: tuple[Lsn, int] | None = None
        # Stats.
        self.unchecked = 0  # events sent without a check (above everything recorded)
        self.replays_dropped = 0  # events the ledger already had
        self.sent = 0
        self.check_retries = 0  # checks retried while the ledger was down
        self.record_retries = 0  # records retried while the ledger was down
        self.ledger_down_since: float | None = None  # monotonic time, while unreachable
        self.ledger_error: str | None = None

    def __repr__(self) -> str:
        return f"LedgerHook({self.destination!r}, {self.ledger!r})"

    async def open(self) -> None:
        await self.ledger.open()
        if self.sole_writer and self._exchanging is not None:
            try:
                lsn = await self._exchanging.highest(self.ledger_key)
            except LedgerUnavailable as e:
                log.info("destination %s: %s; every batch is checked", self.destination, e)
                return
            # Any seq of the highest commit LSN may be recorded.
            self._high = (-1, 0) if lsn is None else (lsn, _ANY_SEQ)

    async def close(self) -> None:
        if self.replays_dropped:
            log.info(
                "destination %s: the ledger dropped %d replayed event(s) already delivered",
                self.destination,
                self.replays_dropped,
            )
        exchange = self._exchange
        if exchange.round_trips:
            log.info(
                "destination %s: %d event(s) sent behind the ledger (%d unchecked): %d round "
                "trip(s) (%d without ids), %.1f ids each",
                self.destination,
                self.sent,
                self.unchecked,
                exchange.round_trips,
                exchange.bare_round_trips,
                exchange.ids / exchange.round_trips,
            )
        exchange.cancel()
        await self.ledger.close()

    @property
    def ledger_calls(self) -> int:
        """Calls made to the ledger: one per round trip for a ledger that
        exchanges (both backends), else one per check and one per record."""
        return self._calls

    @property
    def ledger_ids(self) -> int:
        """Ids sent to the ledger, checks and records (``/ ledger_calls``: ids per call)."""
        return self._exchange.ids

    async def _round_trip(self, records: list[Event], checks: list[Event]) -> set[str]:
        """Record ``records`` (with the trim when due), then check ``checks``."""
        ledger, key = self.ledger, self.ledger_key
        trim = self._take_trim() if records else None
        if self._exchanging is not None:
            self._calls += 1
            found = await self._exchanging.exchange(key, records, checks, trim_below=trim)
        else:
            found = set()
            if records:
                self._calls += 1
                await ledger.record(key, records, trim_below=trim)
            if checks:
                self._calls += 1
                found = await ledger.delivered(key, checks)
        if trim is not None:
            self._trimmed_floor = trim
        return found

    def trim_below(self, lsn: Lsn) -> None:
        if self._trim_floor is None or lsn > self._trim_floor:
            self._trim_floor = lsn

    def _take_trim(self) -> Lsn | None:
        floor = self._trim_floor
        if floor is None or floor == self._trimmed_floor:
            return None
        now = time.monotonic()
        if now - self._last_trim < TRIM_INTERVAL:
            return None
        self._last_trim = now
        return floor

    async def before_send(self, events: Sequence[Event]) -> Sequence[Event]:
        if not events:
            return events
        high = self._high
        if high is not None:
            keys = [(e.commit_lsn, e.seq) for e in events]
            top = max(keys)
            if min(keys) > high:  # no one can have recorded any of them
                self._high = top  # let through: from now on, the same ids are checked
                # Still only while the ledger answers (one round trip ending
                # after now, usually another batch's record).
                await self._until_ledger(self._ready, events, "check")
                self.unchecked += len(events)
                return events
        done = await self._until_ledger(self._exchange.check, events, "check")
        if self._high is not None:
            # Let through now (the replays too: harmless, they are recorded).
            self._high = max(self._high, max((e.commit_lsn, e.seq) for e in events))
        if not done:
            return events
        todo = [e for e in events if e.id not in done]
        self.replays_dropped += len(events) - len(todo)
        log.debug(
            "destination %s: %d replayed event(s) already delivered, dropped",
            self.destination,
            len(events) - len(todo),
        )
        return todo

    async def _ready(self, _: Sequence[Event]) -> None:
        await self._exchange.ready()

    async def after_send(self, events: Sequence[Event]) -> None:
        if not events:
            return
        self.sent += len(events)
        # Record until the ledger takes it: the batch was sent, and sending it
        # again because the ledger is down would be a duplicate we can avoid.
        await self._until_ledger(self._exchange.record, events, "record")
        failpoints.hit(failpoints.LEDGER_AFTER_RECORD)

    async def _until_ledger(
        self, call: Callable[[Sequence[Event]], Awaitable[_T]], events: Sequence[Event], what: str
    ) -> _T:
        """``call(events)``, retried with backoff while the ledger is unreachable.

        An outage of the ledger pauses delivery (the batch stays in flight:
        nothing is sent unchecked, nothing is counted as failed or parked)
        and delivery resumes by itself when the ledger answers again."""
        attempt = 0
        while True:
            try:
                result = await call(events)
            except LedgerUnavailable as e:
                attempt += 1
                if what == "record":
                    self.record_retries += 1
                else:
                    self.check_retries += 1
                self.ledger_error = str(e)
                if self.ledger_down_since is None:
                    self.ledger_down_since = time.monotonic()
                    log.warning(
                        "destination %s: ledger unreachable (%s); delivery paused until it is"
                        " back (batches already sent wait to be recorded, not resent)",
                        self.destination,
                        e,
                    )
                await asyncio.sleep(self._ledger_backoff.delay(attempt))
                continue
            if self.ledger_down_since is not None:
                log.info(
                    "destination %s: ledger is back after %.1fs; delivery resumes",
                    self.destination,
                    time.monotonic() - self.ledger_down_since,
                )
                self.ledger_down_since = None
                self.ledger_error = None
            return result


# --------------------------------------------------------------------------- from config


def build_ledger(config: Config, destination: DestinationConfig) -> Ledger | None:
    """The ledger ``destination`` uses (its own ``ledger:`` or the top-level one), or None."""
    from walrelay.config import NoLedgerConfig, RedisLedgerConfig

    cfg = destination.ledger if destination.ledger is not None else config.ledger
    if isinstance(cfg, NoLedgerConfig):
        return None
    if isinstance(cfg, RedisLedgerConfig):
        return RedisLedger(
            cfg.url.get_secret_value(), key_prefix=cfg.key_prefix, timeout=cfg.timeout
        )
    # The state database: state.dsn / state.schema when the config has them.
    state = getattr(config, "state", None)
    dsn = cfg.dsn.get_secret_value() if cfg.dsn is not None else None
    if dsn is None and state is not None and getattr(state, "dsn", None) is not None:
        value = state.dsn
        dsn = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    if dsn is None:
        dsn = config.source.dsn_value
    schema = cfg.ledger_schema or str(getattr(state, "schema", None) or "walrelay")
    return PostgresLedger(dsn, schema=schema)


def ledger_hook(
    sink: Sink, config: Config, destination: DestinationConfig, *, sole_writer: bool = False
) -> LedgerHook | None:
    """The hook that puts ``sink`` behind its destination's ledger; None when
    the sink is transactional or the ledger is off (``ledger: {type: none}``).
    ``sole_writer``: see :class:`LedgerHook` (the relay, not a Kafka worker)."""
    if is_transactional(sink):
        return None
    ledger = build_ledger(config, destination)
    if ledger is None:
        return None
    return LedgerHook(
        ledger,
        destination.name,
        ledger_key=f"{config.source.slot}/{destination.name}",
        sole_writer=sole_writer,
    )
