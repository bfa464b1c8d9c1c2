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
from typing import BinaryIO

from walrelay.errors import ConfigError, SinkError, SinkUnavailable
from walrelay.model import Event

__all__ = ["StdoutSink"]


class StdoutSink:
    """Writes JSON lines to ``sys.stdout.buffer`` (or ``stream``), flushed per batch.

    The write runs in a worker thread so a slow reader on the other end of
    the pipe stalls delivery, not the event loop (and with it the
    replication keepalives).
    """

    ordered = True

    def __init__(self, batch_size: int = 2000, *, stream: BinaryIO | None = None) -> None:
        if batch_size < 1:
            raise ConfigError(
                f"stdout sink: batch_size must be >= 1, got {batch_size}",
                fix="set batch_size to e.g. 2000",
            )
        self.batch_size = batch_size
        self._given_stream = stream
        self._stream: BinaryIO | None = None
        self._lock = threading.Lock()

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
