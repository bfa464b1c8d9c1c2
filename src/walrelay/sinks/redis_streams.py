"""Redis Streams sink (redis-py asyncio).

Every event is one ``XADD`` to a stream from the ``stream`` template (default
``{prefix}:{schema}.{table}``; logical messages: ``message_stream``, default
``{prefix}:messages``; a TRUNCATE to the stream of each table it truncated),
with fields ``id`` (the event id), ``op``, ``table`` and ``body`` (the JSON
envelope) and an **explicit entry id** ``<commit_lsn>-<seq>`` (decimal): the
event id in Redis's ``<ms>-<seq>`` form.

Exactly once: Redis refuses an entry id equal to or below the stream's last
id ("The ID specified in XADD is equal or smaller than the target stream top
item"). A replayed event -- a batch retried after a lost connection, or
events Postgres streams again after a restart -- is therefore rejected by
Redis itself; the sink treats exactly that error as "already delivered",
counts it and logs it at debug level. The rule holds because each stream
receives ids in increasing order, which is why the sink asks the scheduler
for ``ordered = True`` (one batch at a time, exact id order): with parallel
batches a later id could reach a stream first, and the earlier event would
then be rejected as if it were a replay -- lost. A batch is still one round
trip: all its ``XADD`` commands go in one pipeline.

``maxlen`` caps each stream (``MAXLEN ~ n`` with ``approximate_maxlen``);
trimming never lowers the stream's last id, so replays stay rejected.
``auto_create: false`` uses ``XADD ... NOMKSTREAM``: a stream that does not
exist is an error naming the stream instead of a silent new key.

Routed events (``event.route``, set by the outbox event router,
:mod:`walrelay.pipeline.outbox_router`) are sent as routed: one ``XADD`` (same entry
id) to the stream ``route.topic`` (the stream template is not used), with
fields ``id``, ``op``, ``table``, ``key`` (``route.key``; absent when None),
``body`` (``route.value``, the routed payload as JSON) and the route's headers
as further fields (a header named like one of the sink's own fields is left
out). A tombstone (``route.value`` None) has an empty ``body`` and the field
``tombstone`` = ``1``. ``auto_create: false`` applies to routed streams too.

Durability is Redis's: an acknowledged ``XADD`` survives a Redis crash only
as far as its persistence settings allow (``appendonly yes`` with
``appendfsync always`` for no loss; ``everysec`` can lose the last second).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from walrelay import failpoints
from walrelay.config import env_secret
from walrelay.errors import ConfigError, PoisonEvent, SinkError, SinkUnavailable
from walrelay.model import Event
from walrelay.sinks.base import SinkContext
from walrelay.sinks.common import batch_error, import_extra, safe_url
from walrelay.sinks.templates import Naming

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from walrelay.config import RedisSinkConfig

__all__ = ["RedisStreamsSink", "entry_id"]

log = logging.getLogger("walrelay.sinks.redis")

_REPLAYED = "equal or smaller than the target stream top item"
_OWN_FIELDS = frozenset(("id", "op", "table", "key", "body", "tombstone"))


def entry_id(event: Event) -> str:
    """The stream entry id of an event: ``<commit_lsn>-<seq>``."""
    return f"{event.commit_lsn}-{event.seq}"


def _client_options(cfg: RedisSinkConfig) -> tuple[str, dict[str, Any]]:
    """The URL to connect to and the client's options: credentials (secrets read
    from the environment) and TLS (which turns ``redis://`` into ``rediss://``)."""
    url = cfg.url.get_secret_value()
    options: dict[str, Any] = {}
    if cfg.username:
        options["username"] = cfg.username
    password = env_secret(cfg.password_env, "redis password")
    if password is not None:
        options["password"] = password
    if cfg.tls is not None:
        tls = cfg.tls
        parts = urlsplit(url)
        if parts.scheme == "redis":
            url = urlunsplit(("rediss", *parts[1:]))
        options["ssl_ca_certs"] = tls.ca_file
        options["ssl_certfile"] = tls.cert_file
        options["ssl_keyfile"] = tls.key_file
        options["ssl_password"] = env_secret(tls.key_password_env, "redis tls key")
        options["ssl_cert_reqs"] = "required" if tls.verify else "none"
        options["ssl_check_hostname"] = tls.verify
    return url, options


class RedisStreamsSink:
    """XADDs events to Redis streams with explicit ids; see the module docstring."""

    ordered = True
    # Redis rejects a replayed entry id: no dedup ledger needed in front.
    transactional = True

    def __init__(self, config: RedisSinkConfig, context: SinkContext | None = None) -> None:
        self._redis = import_extra("redis", "redis", "redis.asyncio", "redis.exceptions")
        context = context or SinkContext()
        url, options = _client_options(config)
        if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                f"redis sink: {safe_url(url)} is not a redis:// URL",
                fix="set url to e.g. redis://host:6379/0 (rediss:// for TLS)",
            )
        if config.timeout <= 0:
            raise ConfigError("redis sink: timeout must be > 0", fix="set timeout to e.g. 10")
        self._url = url
        self.url = safe_url(url)
        self.naming = Naming(
            config.stream,
            config.message_stream,
            prefix=config.prefix,
            setting="redis stream",
            message_setting="redis message_stream",
        )
        self.maxlen = config.maxlen
        self.approximate_maxlen = config.approximate_maxlen
        self.auto_create = config.auto_create
        self.tables = context.tables
        self.timeout = config.timeout
        self.batch_size = config.batch_size
        self._options = options
        self._packer = _XaddPacker(config.maxlen, config.approximate_maxlen, not config.auto_create)
        self._client: Redis | None = None
        self.replayed = 0  # XADDs Redis rejected as already stored

    @classmethod
    def from_config(cls, config: RedisSinkConfig, context: SinkContext) -> RedisStreamsSink:
        return cls(config, context)

    def __repr__(self) -> str:
        return f"RedisStreamsSink({self.url!r})"

    async def open(self) -> None:
        if self._client is not None:
            return
        redis = self._redis
        # No socket_timeout: redis-py would arm a timer for every reply it reads
        # (a fifth of the process's CPU at 500 XADDs a batch); each round trip
        # runs under one asyncio.timeout instead, and redis-py drops a
        # connection whose read was cancelled, so no stale reply is read later.
        client = redis.asyncio.Redis.from_url(
            self._url,
            socket_timeout=None,
            socket_connect_timeout=self.timeout,
            **self._options,
        )
        try:
            async with asyncio.timeout(self.timeout):
                await client.ping()
            if not self.auto_create:
                for stream, table in sorted(self.naming.table_names(self.tables).items()):
                    async with asyncio.timeout(self.timeout):
                        kind = await client.type(stream)
                    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
                    if kind != "stream":
                        state = "does not exist" if kind == "none" else f"is a {kind}"
                        raise ConfigError(
                            f"redis sink {self.url}: stream {stream} (table {table}) {state} "
                            "and auto_create is off",
                            fix=f"create it (XGROUP CREATE {stream} <group> $ MKSTREAM) or set "
                            "auto_create: true",
                        )
        except (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            TimeoutError,
        ) as exc:
            await client.aclose()
            if isinstance(exc, redis.exceptions.AuthenticationError):
                raise ConfigError(
                    f"redis sink {self.url}: authentication refused: {exc}",
                    fix="check username and password_env",
                ) from None
            raise SinkUnavailable(
                f"redis sink {self.url}: cannot connect: {type(exc).__name__}: {exc}"
            ) from None
        except redis.exceptions.RedisError as exc:
            await client.aclose()
            raise ConfigError(
                f"redis sink: cannot use {self.url}: {type(exc).__name__}: {exc}",
                fix="check url, username/password_env and TLS settings, and that Redis runs",
            ) from None
        except BaseException:
            await client.aclose()
            raise
        self._client = client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.aclose()
            except Exception as exc:  # closing must not hide why we stopped
                log.debug("redis sink %s: error while closing: %s", self.url, exc)

    async def deliver(self, events: Sequence[Event]) -> None:
        client = self._client
        if client is None:
            raise SinkError(f"redis sink {self.url}: deliver() before open() or after close()")
        if not events:
            return
        redis = self._redis
        names = self.naming.names
        pack = self._packer
        sent: list[tuple[Event, str]] = []
        wire: list[bytes] = []
        for event in events:
            eid = entry_id(event)
            route = event.route
            if route is not None:  # set by a router (walrelay.pipeline.outbox_router): as routed
                pack.command(wire, route.topic, eid, _routed_fields(event))
                sent.append((event, route.topic))
                continue
            for stream, table in names(event):
                pack.entry(wire, stream, eid, event.id, event.op, table, event.body)
                sent.append((event, stream))
        try:
            async with asyncio.timeout(self.timeout):
                results = await self._round_trip(client, wire, len(sent))
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            raise SinkUnavailable(
                f"redis sink {self.url}: {type(exc).__name__}: {exc} "
                f"({len(sent)} XADDs from {events[0].id})"
            ) from None
        except redis.exceptions.RedisError as exc:
            raise SinkError(f"redis sink {self.url}: {type(exc).__name__}: {exc}") from None
        failpoints.hit(failpoints.REDIS_AFTER_XADD)
        await self._settle(sent, results)

    async def _round_trip(self, client: Redis, wire: list[bytes], replies: int) -> list[Any]:
        """Send the packed commands on one pooled connection and read their
        ``replies``: what a redis-py pipeline (``transaction=False``) does, with
        the same retries (the connection's ``Retry``), without its per-command
        packing and dispatch. A reply that is an error is returned, not raised."""
        errors = self._redis.exceptions
        pool = client.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]

        async def attempt() -> list[Any]:
            await conn.send_packed_command(wire)
            results: list[Any] = []
            read = conn.read_response
            try:
                for _ in range(replies):
                    try:
                        results.append(await read())
                    except errors.ResponseError as exc:
                        results.append(exc)
            except BaseException:
                # Replies of the rest of the batch may still be on the socket.
                await conn.disconnect(nowait=True)
                raise
            return results

        async def failed(_: Exception) -> None:
            await conn.disconnect()

        try:
            results: list[Any] = await conn.retry.call_with_retry(attempt, failed)
            return results
        finally:
            await pool.release(conn)

    async def _settle(self, sent: Sequence[tuple[Event, str]], results: Sequence[Any]) -> None:
        """Count the replays among the XADD results; raise for the failed ones."""
        replayed = 0
        failures: list[SinkError] = []
        claimed: list[tuple[Event, str]] = []
        for (event, stream), result in zip(sent, results, strict=True):
            if result is None:
                failures.append(
                    SinkError(
                        f"redis sink {self.url}: stream {stream} does not exist and auto_create "
                        f"is off (event {event.id}) -- fix: create the stream or set "
                        "auto_create: true",
                        permanent=True,
                    )
                )
            elif isinstance(result, Exception):
                if _REPLAYED in str(result):
                    claimed.append((event, stream))
                else:
                    failures.append(self._classify(result, event, stream))
        if claimed:
            missing = await self._not_stored(claimed)
            replayed = len(claimed) - len(missing)
            failures.extend(missing)
        if failures:
            raise batch_error(failures, len(sent), "XADDs")
        if replayed:
            self.replayed += replayed
            log.debug(
                "redis sink %s: %d replayed event(s) already in their streams, skipped",
                self.url,
                replayed,
            )

    async def _not_stored(self, claimed: Sequence[tuple[Event, str]]) -> list[SinkError]:
        """Of the XADDs Redis refused as "equal or smaller than the top item",
        the ones whose entry is *not* in the stream: not replays but gaps (an
        earlier XADD to the stream failed while a later one went in), which no
        retry can fill in order. Loud and permanent, never counted as delivered."""
        client = self._client
        assert client is not None
        pipe = client.pipeline(transaction=False)
        for event, stream in claimed:
            eid = entry_id(event)
            pipe.xrange(stream, eid, eid)
        try:
            async with asyncio.timeout(self.timeout):
                found = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            raise SinkUnavailable(
                f"redis sink {self.url}: checking {len(claimed)} replayed entries: {exc}"
            ) from None
        errors: list[SinkError] = []
        for (event, stream), entries in zip(claimed, found, strict=True):
            if isinstance(entries, Exception):
                errors.append(self._classify(entries, event, stream))
            elif not entries:
                errors.append(
                    SinkError(
                        f"redis sink {self.url}: stream {stream} is past entry id "
                        f"{entry_id(event)} but does not hold it (event {event.id} was not "
                        "stored while a later event of the stream was, and Redis never takes "
                        "an id below its top one; walrelay retries it, delivering nothing "
                        "later) -- fix: see the earlier XADD error of this stream in the log; "
                        "to go on, RENAME the stream aside (walrelay starts a new one with "
                        "this event) and let its consumers finish the old one",
                        permanent=True,
                    )
                )
        return errors

    def _classify(self, exc: Exception, event: Event, stream: str) -> SinkError:
        redis = self._redis
        text = f"redis sink {self.url}: XADD {stream} {entry_id(event)} (event {event.id}): {exc}"
        if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
            return SinkUnavailable(text)
        message = str(exc)
        if message.startswith("WRONGTYPE"):
            return SinkError(f"{text} -- fix: {stream} is not a stream; rename it", permanent=True)
        if "OOM" in message or "LOADING" in message or "READONLY" in message:
            return SinkUnavailable(text)
        if "max" in message and "bulk" in message:
            return PoisonEvent(text)
        return SinkError(text, permanent=False)


class _XaddPacker:
    """``XADD`` commands in the Redis protocol (RESP), as redis-py would send
    them: ``XADD <stream> [NOMKSTREAM] [MAXLEN [~] <n>] <id> <field> <value> ...``,
    strings in UTF-8. What comes before the entry id is made once per stream;
    redis-py packed every argument of every command (half of the sink's CPU)."""

    _HEADS = 10_000  # streams whose command head is kept, at most

    def __init__(self, maxlen: int | None, approximate: bool, nomkstream: bool) -> None:
        options: list[bytes] = [b"NOMKSTREAM"] if nomkstream else []
        if maxlen is not None:
            options += [b"MAXLEN", b"~"] if approximate else [b"MAXLEN"]
            options.append(str(maxlen).encode())
        self._options = options
        self._heads: dict[tuple[str, int], bytes] = {}

    def _head(self, stream: str, fields: int) -> bytes:
        head = self._heads.get((stream, fields))
        if head is None:
            args = [b"XADD", stream.encode(), *self._options]
            head = b"*%d\r\n" % (len(args) + 1 + 2 * fields) + b"".join(map(_bulk, args))
            if len(self._heads) >= self._HEADS:
                self._heads.clear()
            self._heads[(stream, fields)] = head
        return head

    def entry(
        self, out: list[bytes], stream: str, eid: str, msg_id: str, op: str, table: str, body: bytes
    ) -> None:
        """Append the XADD of an event's entry (fields id, op, table, body) to ``out``."""
        e, i, o, t = eid.encode(), msg_id.encode(), op.encode(), table.encode()
        out.append(self._head(stream, 4))
        out.append(
            b"$%d\r\n%b\r\n$2\r\nid\r\n$%d\r\n%b\r\n$2\r\nop\r\n$%d\r\n%b\r\n"
            b"$5\r\ntable\r\n$%d\r\n%b\r\n$4\r\nbody\r\n$%d\r\n"
            % (len(e), e, len(i), i, len(o), o, len(t), t, len(body))
        )
        out.append(body)
        out.append(b"\r\n")

    def command(
        self, out: list[bytes], stream: str, eid: str, fields: dict[str, str | bytes]
    ) -> None:
        """Append the XADD of an entry with any ``fields`` to ``out``."""
        out.append(self._head(stream, len(fields)))
        out.append(_bulk(eid.encode()))
        for name, value in fields.items():
            out.append(_bulk(name.encode()))
            out.append(_bulk(value if isinstance(value, bytes) else value.encode()))


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def _routed_fields(event: Event) -> dict[str, str | bytes]:
    """The entry fields of a routed event (module docstring)."""
    route = event.route
    assert route is not None
    fields: dict[str, str | bytes] = {"id": event.id, "op": event.op, "table": event.table}
    if route.key is not None:
        fields["key"] = route.key
    if route.value is None:
        fields["body"] = b""
        fields["tombstone"] = "1"
    else:
        fields["body"] = route.value
    for name, value in route.headers:
        if name not in _OWN_FIELDS:
            fields.setdefault(name, value)
    return fields
