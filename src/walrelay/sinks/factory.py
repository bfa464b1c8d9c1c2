"""Build a sink from its config. Each sink module is imported only when used."""

from __future__ import annotations

from walrelay.config import FileSinkConfig, StdoutSinkConfig, WebhookSinkConfig
from walrelay.sinks.base import Sink


def build_sink(cfg: FileSinkConfig | StdoutSinkConfig | WebhookSinkConfig) -> Sink:
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
    from walrelay.sinks.webhook import WebhookSink

    return WebhookSink(
        cfg.url.get_secret_value(),
        secret=cfg.secret(),
        timeout=cfg.timeout,
        headers=cfg.headers,
        max_connections=cfg.max_connections,
        batch_size=cfg.batch_size,
    )
