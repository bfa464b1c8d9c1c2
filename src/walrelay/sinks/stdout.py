"""Standard-output sink: one event body per line, for piping into other tools.

At least once: a restart replays events since the confirmed LSN, and
stdout cannot be read back to skip them (use the file sink for that).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, BinaryIO

from walrelay.errors import SinkError, SinkUnavailable
from walrelay.model import Event

if TYPE_CHECKING:
    from walrelay.config import StdoutSinkConfig
    from walrelay.sinks.base import SinkContext

__all__ = ["StdoutSink"]


class StdoutSink:
    """Writes JSON lines to ``sys.stdout.buffer`` (or ``stream``), flushed per batch.

    The write runs in a worker thread so a slow reader on the other end of
    the pipe stalls delivery, not the event loop (and with it the
    replication keepalives).
    """

    ordered = True
    # stdout cannot be read back: a replay is written again (the ledger drops it).
    transactional = False

    def __init__(self, config: StdoutSinkConfig, *, stream: BinaryIO | None = None) -> None:
        self.batch_size = config.batch_size
        self._given_stream = stream
        self._stream: BinaryIO | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: StdoutSinkConfig, context: SinkContext) -> StdoutSink:
        return cls(config)

    def __repr__(self) -> str:
        return "StdoutSink()"

    async def open(self) -> None:
        self._stream = self._given_stream if self._given_stream is not None else sys.stdout.buffer

    async def deliver(self, events: Sequence[Event]) -> None:
        stream = self._stream
        if stream is None:
            raise SinkError("stdout sink: deliver() before open() or after close()")
        if not events:
            return
        bodies = [e.body for e in events]
        bodies.append(b"")
        await asyncio.to_thread(self._write, stream, b"\n".join(bodies))

    def _write(self, stream: BinaryIO, data: bytes) -> None:
        with self._lock:
            try:
                stream.write(data)
                stream.flush()
            except OSError as exc:  # BrokenPipeError: the reader went away
                raise SinkUnavailable(f"stdout sink: write failed: {exc}") from None

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self._flush, stream)

    def _flush(self, stream: BinaryIO) -> None:
        with self._lock:
            stream.flush()
