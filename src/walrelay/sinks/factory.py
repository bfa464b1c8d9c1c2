"""Build a sink from its config. Each sink module is imported only when used."""

from __future__ import annotations

from collections.abc import Sequence

from walrelay.config import (
    FileSinkConfig,
    KafkaSinkConfig,
    NatsSinkConfig,
    PostgresSinkConfig,
    RabbitMQSinkConfig,
    RedisSinkConfig,
    StdoutSinkConfig,
    WebhookSinkConfig,
)
from walrelay.sinks.base import Sink


def build_sink(
    cfg: FileSinkConfig
    | StdoutSinkConfig
    | WebhookSinkConfig
    | KafkaSinkConfig
    | NatsSinkConfig
    | RedisSinkConfig
    | RabbitMQSinkConfig
    | PostgresSinkConfig,
    *,
    slot: str = "walrelay",
    destination: str = "default",
    tables: Sequence[str] = (),
) -> Sink:
    """``slot``/``destination`` name the Kafka transactional id and checkpoint;
    ``tables`` lets broker sinks check (or create) their topics, streams and
    exchanges at start-up."""
    if isinstance(cfg, FileSinkConfig):
        from walrelay.sinks.file import FileSink

        return FileSink(
            cfg.path,
            fsync=cfg.fsync,
            fsync_interval=cfg.fsync_interval,
            batch_size=cfg.batch_size,
        )
    if isinstance(cfg, StdoutSinkConfig):
        from walrelay.sinks.stdout import StdoutSink

        return StdoutSink(batch_size=cfg.batch_size)
    if isinstance(cfg, KafkaSinkConfig):
        from walrelay.sinks.kafka import KafkaSink

        return KafkaSink.from_config(cfg, slot=slot, destination=destination, tables=tables)
    if isinstance(cfg, NatsSinkConfig):
        from walrelay.sinks.nats import NatsSink

        return NatsSink.from_config(cfg, tables=tables)
    if isinstance(cfg, RedisSinkConfig):
        from walrelay.sinks.redis_streams import RedisStreamsSink

        return RedisStreamsSink.from_config(cfg, tables=tables)
    if isinstance(cfg, RabbitMQSinkConfig):
        from walrelay.sinks.rabbitmq import RabbitMQSink

        return RabbitMQSink.from_config(cfg, tables=tables)
    if isinstance(cfg, PostgresSinkConfig):
        from walrelay.sinks.postgres import PostgresSink

        return PostgresSink.from_config(cfg, destination=destination)
    from walrelay.sinks.webhook import WebhookSink

    return WebhookSink(
        cfg.url.get_secret_value(),
        secret=cfg.secret(),
        timeout=cfg.timeout,
        headers=cfg.headers,
        max_connections=cfg.max_connections,
        batch_size=cfg.batch_size,
    )
