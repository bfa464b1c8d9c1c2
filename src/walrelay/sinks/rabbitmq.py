"""RabbitMQ sink (aio-pika, AMQP 0-9-1).

Every event is published to an exchange from the ``exchange`` template
(default ``{prefix}``, a durable ``topic`` exchange named ``walrelay``) with a
routing key from the ``routing_key`` template (default
``{schema}.{table}.{op}``, e.g. ``public.orders.update``; logical messages use
``message_exchange`` / ``message_routing_key``, default ``message``; a
TRUNCATE is published once per table it truncated). The message:

- body: the JSON envelope, ``content_type`` ``application/json``;
- ``delivery_mode`` persistent, ``message_id`` the event id
  ``<commit_lsn>/<seq>``, ``type`` the op, headers ``walrelay-op`` and
  ``walrelay-table``.

The channel runs in publisher-confirm mode: ``deliver`` returns once the
broker confirmed every message of the batch (for persistent messages routed
to durable queues, after they are written to disk). With ``mandatory`` (the
default) a message no queue is bound for is returned by the broker and the
batch fails with a permanent error naming the exchange and routing key,
instead of being dropped silently.

At least once: RabbitMQ has no deduplication. A batch retried after a lost
connection or a missing confirm can be delivered twice, always with the same
``message_id``, which consumers use to drop the second copy. Batches go in
parallel (``ordered = False``); the scheduler never has two events of one key
in flight, and AMQP keeps publish order on a channel.

Routed events (``event.route``, set by the outbox event router,
:mod:`walrelay.pipeline.outbox_router`) are published as routed: to the configured
exchange (the one the event's table -- or, for a table-less outbox message,
the message exchange -- would use) with ``route.topic`` as the routing key
(the routing key templates are not used); the body is ``route.value``, the
routed payload as JSON; headers: the route's headers, then ``walrelay-op``,
``walrelay-table`` and ``walrelay-key`` (``route.key``, absent when None),
which win over a route header of the same name. A tombstone (``route.value``
None) is an empty body with the header ``walrelay-tombstone: true`` (and no
``content_type``). With ``mandatory``, a routing key no queue is bound for is
the same permanent error as above.

A lost connection fails the batch with
:class:`~walrelay.errors.SinkUnavailable`; the next ``deliver`` reconnects.
With ``auto_create`` (default) exchanges are declared (durable) on first
use; otherwise they are checked passively, at start for every configured
table, and a missing one is a :class:`~walrelay.errors.ConfigError` naming it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from walrelay.config import env_secret
from walrelay.errors import ConfigError, SinkError, SinkUnavailable
from walrelay.model import Event
from walrelay.sinks.base import SinkContext
from walrelay.sinks.common import batch_error, clean_routing_word, import_extra, safe_url
from walrelay.sinks.templates import ROW_OPS, Naming, truncated_tables

if TYPE_CHECKING:
    from types import ModuleType

    from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

    from walrelay.config import RabbitMQSinkConfig

__all__ = ["RabbitMQSink"]

log = logging.getLogger("walrelay.sinks.rabbitmq")


def _connect_options(cfg: RabbitMQSinkConfig) -> tuple[str, dict[str, Any]]:
    """The URL to connect to and aio-pika's options: credentials (secrets read from
    the environment) and TLS (which turns ``amqp://`` into ``amqps://``)."""
    options: dict[str, Any] = {}
    if cfg.username:
        options["login"] = cfg.username
    password = env_secret(cfg.password_env, "rabbitmq password")
    if password is not None:
        options["password"] = password
    url = cfg.url.get_secret_value()
    if cfg.tls is not None:
        options["ssl"] = True
        options["ssl_context"] = cfg.tls.ssl_context()
        if url.startswith("amqp://"):
            url = "amqps://" + url.removeprefix("amqp://")
    return url, options


class RabbitMQSink:
    """Publishes events with publisher confirms; see the module docstring."""

    ordered = False
    # No broker-side dedup: the engine puts its dedup ledger in front.
    transactional = False

    def __init__(self, config: RabbitMQSinkConfig, context: SinkContext | None = None) -> None:
        self._pika = import_extra("rabbitmq", "aio-pika", "aio_pika")
        context = context or SinkContext()
        url, options = _connect_options(config)
        if not url.startswith(("amqp://", "amqps://")):
            raise ConfigError(
                f"rabbitmq sink: {safe_url(url)} is not an amqp:// URL",
                fix="set url to e.g. amqp://user@host:5672/vhost (amqps:// for TLS)",
            )
        if config.timeout <= 0:
            raise ConfigError("rabbitmq sink: timeout must be > 0", fix="set timeout to e.g. 10")
        self._url = url
        self.url = safe_url(url)
        self.exchanges = Naming(
            config.exchange,
            config.message_exchange,
            prefix=config.prefix,
            setting="rabbitmq exchange",
            message_setting="rabbitmq message_exchange",
        )
        self.routing_keys = Naming(
            config.routing_key,
            config.message_routing_key,
            prefix=config.prefix,
            setting="rabbitmq routing_key",
            message_setting="rabbitmq message_routing_key",
            clean=clean_routing_word,
        )
        self.exchange_type = config.exchange_type
        self.auto_create = config.auto_create
        self.mandatory = config.mandatory
        self.tables = context.tables
        self.timeout = config.timeout
        self.unroutable_grace = config.unroutable_grace
        self._connected_at: float | None = None  # time.monotonic() of the last connect
        self.batch_size = config.batch_size
        self._options = options
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}  # on the current channel
        self._checked: set[str] = set()  # exchange names known to exist
        self._lock = asyncio.Lock()
        self._open = False

    @classmethod
    def from_config(cls, config: RabbitMQSinkConfig, context: SinkContext) -> RabbitMQSink:
        return cls(config, context)

    def __repr__(self) -> str:
        return f"RabbitMQSink({self.url!r})"

    # -- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        if self._open:
            return
        try:
            await self._channel_or_reconnect()
        except SinkUnavailable as exc:
            if "AuthenticationError" not in str(exc):
                raise  # the server is down or unreachable: the destination waits for it
            raise ConfigError(
                f"rabbitmq sink: {self.url} refused the credentials: {exc}",
                fix="check url, username/password_env",
            ) from None
        try:
            names = {self.exchanges.for_table(t, op) for t in self.tables for op in ROW_OPS}
            for name in sorted(names):
                await self._exchange(name, config_error=True)
        except BaseException:
            await self._disconnect()
            raise
        self._open = True

    async def close(self) -> None:
        self._open = False
        await self._disconnect()

    async def _disconnect(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        self._exchanges = {}
        if connection is not None:
            try:
                await asyncio.wait_for(connection.close(), self.timeout)
            except Exception as exc:  # closing must not hide why we stopped
                log.debug("rabbitmq sink %s: error while closing: %s", self.url, exc)

    def _broken(self) -> None:
        """Reconnect (new connection, channel, exchange objects) before the next publish."""
        self._channel = None
        self._exchanges = {}

    async def _channel_or_reconnect(self) -> AbstractChannel:
        channel = self._channel
        if channel is not None and not channel.is_closed:
            return channel
        async with self._lock:
            channel = self._channel
            if channel is not None and not channel.is_closed:
                return channel
            await self._disconnect()
            pika = self._pika
            try:
                connection = await pika.connect(self._url, timeout=self.timeout, **self._options)
            except (*pika.exceptions.CONNECTION_EXCEPTIONS, TimeoutError) as exc:
                raise SinkUnavailable(
                    f"rabbitmq sink {self.url}: cannot connect: {type(exc).__name__}: {exc}"
                ) from None
            try:
                fresh: AbstractChannel = await connection.channel(
                    publisher_confirms=True, on_return_raises=self.mandatory
                )
            except BaseException:
                await connection.close()
                raise
            self._connection, self._channel = connection, fresh
            self._connected_at = time.monotonic()
            return fresh

    async def _exchange(self, name: str, *, config_error: bool = False) -> AbstractExchange:
        exchange = self._exchanges.get(name)
        if exchange is not None:
            return exchange
        channel = await self._channel_or_reconnect()
        pika = self._pika
        if name == "" or name in self._checked:
            exchange = await channel.get_exchange(name, ensure=False)
        elif self.auto_create and not name.startswith("amq."):
            try:
                exchange = await channel.declare_exchange(
                    name, self.exchange_type, durable=True, timeout=self.timeout
                )
            except pika.exceptions.ChannelPreconditionFailed as exc:
                self._broken()
                raise self._config_problem(
                    f"exchange {name} exists with other settings than a durable "
                    f"{self.exchange_type} exchange ({exc})",
                    "set exchange_type to match it, or use another exchange name",
                    config_error,
                ) from None
        else:
            # Passive check on a channel of its own: a 404 closes the channel.
            probe = await self._probe_channel()
            try:
                await probe.declare_exchange(name, passive=True, timeout=self.timeout)
            except pika.exceptions.ChannelNotFoundEntity:
                raise self._config_problem(
                    f"exchange {name} does not exist and auto_create is off",
                    f"declare it (rabbitmqadmin declare exchange name={name} "
                    f"type={self.exchange_type} durable=true) or set auto_create: true",
                    config_error,
                ) from None
            finally:
                if not probe.is_closed:
                    await probe.close()
            exchange = await channel.get_exchange(name, ensure=False)
        self._checked.add(name)
        self._exchanges[name] = exchange
        return exchange

    async def _probe_channel(self) -> AbstractChannel:
        await self._channel_or_reconnect()
        connection = self._connection
        assert connection is not None
        return await connection.channel(publisher_confirms=False)

    def _config_problem(self, problem: str, fix: str, config_error: bool) -> Exception:
        text = f"rabbitmq sink {self.url}: {problem}"
        if config_error:
            return ConfigError(text, fix=fix)
        return SinkError(f"{text} -- fix: {fix}", permanent=True)

    # -- delivery -------------------------------------------------------------------

    def _targets(self, event: Event) -> list[tuple[str, str, str]]:
        """(exchange, routing key, table) per copy of the event."""
        op = event.op
        route = event.route
        if route is not None:  # set by the outbox router: as routed
            if op == "message" or not event.table:
                return [(self.exchanges.for_message(), route.topic, event.table)]
            return [(self.exchanges.for_table(event.table, op), route.topic, event.table)]
        if op == "message":
            return [(self.exchanges.for_message(), self.routing_keys.for_message(), "")]
        if op == "begin" or op == "end":  # transaction metadata: the message exchange
            return [(self.exchanges.for_message(), self.routing_keys.transaction_name, "")]
        tables = truncated_tables(event) if op == "truncate" else [event.table]
        out: list[tuple[str, str, str]] = []
        for table in tables:
            target = (
                self.exchanges.for_table(table, op),
                self.routing_keys.for_table(table, op),
                table,
            )
            if all(t[:2] != target[:2] for t in out):
                out.append(target)
        return out

    async def deliver(self, events: Sequence[Event]) -> None:
        if not self._open:
            raise SinkError(f"rabbitmq sink {self.url}: deliver() before open() or after close()")
        if not events:
            return
        pika = self._pika
        persistent = pika.DeliveryMode.PERSISTENT
        publishes: list[tuple[Any, str, str, str]] = []
        try:
            await self._channel_or_reconnect()
            for event in events:
                for exchange_name, routing_key, table in self._targets(event):
                    exchange = await self._exchange(exchange_name)
                    if event.route is not None:
                        message = _routed_message(pika, event, persistent)
                    else:
                        message = pika.Message(
                            event.body,
                            content_type="application/json",
                            delivery_mode=persistent,
                            message_id=event.id,
                            type=event.op,
                            headers={"walrelay-op": event.op, "walrelay-table": table},
                        )
                    publishes.append(
                        (
                            exchange.publish(
                                message,
                                routing_key,
                                mandatory=self.mandatory,
                                timeout=self.timeout,
                            ),
                            event.id,
                            exchange_name,
                            routing_key,
                        )
                    )
        except SinkError:
            _close_all(publishes)
            raise
        except (*pika.exceptions.CONNECTION_EXCEPTIONS, TimeoutError) as exc:
            _close_all(publishes)
            self._broken()
            raise SinkUnavailable(
                f"rabbitmq sink {self.url}: {type(exc).__name__}: {exc}"
            ) from None
        results = await asyncio.gather(*(p[0] for p in publishes), return_exceptions=True)
        self._settle([p[1:] for p in publishes], results)

    def _settle(self, publishes: Sequence[tuple[str, str, str]], results: Sequence[object]) -> None:
        """Raise for the failed publishes ((event id, exchange, routing key) each)."""
        failures: list[SinkError] = []
        for (event_id, exchange_name, routing_key), result in zip(publishes, results, strict=True):
            if isinstance(result, BaseException):
                failures.append(self._classify(result, event_id, exchange_name, routing_key))
        if failures:
            if any(isinstance(f, SinkUnavailable) for f in failures):
                self._broken()
            raise batch_error(failures, len(publishes), "publishes")

    def _classify(
        self, exc: BaseException, event_id: str, exchange: str, routing_key: str
    ) -> SinkError:
        pika = self._pika
        what = (
            f"rabbitmq sink {self.url}: publish of {event_id} to exchange {exchange!r} "
            f"with routing key {routing_key!r}"
        )
        if isinstance(exc, pika.exceptions.PublishError):
            fix = (
                "fix: bind a queue to the exchange for this routing key, or set"
                " mandatory: false to let the broker drop such messages"
            )
            age = None if self._connected_at is None else time.monotonic() - self._connected_at
            if age is not None and age < self.unroutable_grace:
                return SinkError(
                    f"{what}: returned unroutable {age:.1f}s after connecting (retried for"
                    f" unroutable_grace {self.unroutable_grace:g}s: a restarted broker may"
                    f" still be recovering its bindings) -- {fix}"
                )
            return SinkError(f"{what}: returned unroutable -- {fix}", permanent=True)
        if isinstance(exc, pika.exceptions.ChannelNotFoundEntity):
            self._checked.discard(exchange)
            self._exchanges.pop(exchange, None)
            return SinkError(
                f"{what}: the exchange does not exist -- fix: declare it or set auto_create",
                permanent=True,
            )
        if isinstance(exc, pika.exceptions.DeliveryError):
            return SinkError(f"{what}: the broker refused it (nack): {exc}")
        if isinstance(exc, TimeoutError):
            return SinkUnavailable(f"{what}: no confirm within {self.timeout:g} s")
        if isinstance(exc, asyncio.CancelledError):
            return SinkUnavailable(f"{what}: cancelled (connection lost)")
        return SinkUnavailable(f"{what}: {type(exc).__name__}: {exc}")


def _routed_message(pika: ModuleType, event: Event, persistent: Any) -> Any:
    """The AMQP message of a routed event (module docstring)."""
    route = event.route
    assert route is not None
    headers: dict[str, Any] = dict(route.headers)
    headers["walrelay-op"] = event.op
    headers["walrelay-table"] = event.table
    if route.key is not None:
        headers["walrelay-key"] = route.key
    else:
        headers.pop("walrelay-key", None)
    if route.value is None:
        headers["walrelay-tombstone"] = "true"
    else:
        headers.pop("walrelay-tombstone", None)
    return pika.Message(
        b"" if route.value is None else route.value,
        content_type=None if route.value is None else "application/json",
        delivery_mode=persistent,
        message_id=event.id,
        type=event.op,
        headers=headers,
    )


def _close_all(publishes: list[tuple[Any, str, str, str]]) -> None:
    for coro, *_ in publishes:
        coro.close()  # created, never awaited
