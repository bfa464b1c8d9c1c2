"""A destination whose server could not be reached when walrelay started.

A sink's ``open`` raising :class:`~walrelay.errors.SinkUnavailable` (the
server down, refused, timed out) does not stop walrelay: the destination
gets a :class:`WaitingSink` instead. It opens the real sink in the
background, retrying with the destination's backoff, and until then every
``deliver`` first tries to open it and otherwise fails with
:class:`~walrelay.errors.SinkUnavailable` -- so the events of that
destination take the same path as during an outage at run time (retried in
memory, or parked under the destination's parking policy), the slot is not
confirmed past them, and the other destinations go on. Only a configuration
problem (:class:`~walrelay.errors.ConfigError`: a missing stream with
``auto_create`` off, credentials refused) still stops start-up; one found
only once the server answers (walrelay is running by then) is reported the
same way, with its own fix, and retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from walrelay.errors import SinkUnavailable, WalrelayError
from walrelay.model import Event, Lsn
from walrelay.pipeline.backoff import Backoff
from walrelay.pipeline.ledger import TrimAware
from walrelay.sinks.base import Sink

__all__ = ["WaitingSink"]

log = logging.getLogger("walrelay.engine")

FIX = "start the destination's server, or correct its address in the config"


class WaitingSink:
    """Wraps a sink whose ``open`` failed with :class:`SinkUnavailable`;
    :attr:`not_ready` says why, in one line with the fix, until it is open."""

    def __init__(self, name: str, sink: Sink, error: SinkUnavailable, backoff: Backoff) -> None:
        self.name = name
        self.inner = sink
        self.batch_size = sink.batch_size
        self.ordered = sink.ordered
        self.transactional = sink.transactional
        self._backoff = backoff
        self._reason: str | None = _one_line(error)
        self._fix = FIX
        self._state = "not reachable yet"
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"WaitingSink({self.inner!r})"

    @property
    def not_ready(self) -> str | None:
        """Why the destination cannot deliver yet (None once open)."""
        if self._reason is None:
            return None
        return (
            f"destination {self.name}: {self._state} ({self._reason}); "
            f"its events wait -- fix: {self._fix}"
        )

    def start(self) -> None:
        """Keep trying to open the sink in the background."""
        if self._task is None and self._reason is not None:
            self._task = asyncio.create_task(self._open_loop(), name=f"walrelay-open-{self.name}")

    async def _open_loop(self) -> None:
        attempt = 0
        while self._reason is not None and not self._closed:
            attempt += 1
            await asyncio.sleep(self._backoff.delay(attempt))
            with contextlib.suppress(SinkUnavailable):
                await self._ensure_open()

    def is_open(self) -> bool:
        """True once the real sink is open."""
        return self._reason is None

    async def _ensure_open(self) -> None:
        if self.is_open():
            return
        async with self._lock:
            if self.is_open():  # opened while this call waited for the lock
                return
            if self._closed:
                raise SinkUnavailable(f"destination {self.name}: closed")
            try:
                await self.inner.open()
            except SinkUnavailable as e:
                self._reason, self._fix, self._state = _one_line(e), FIX, "not reachable yet"
                raise
            except Exception as e:
                # Found once the server answered (a topic missing with auto_create
                # off, ...): walrelay runs on, so it is reported and retried, not fatal.
                known = isinstance(e, WalrelayError)
                reason = _one_line(e.message if isinstance(e, WalrelayError) else e)
                if reason != self._reason:
                    log.error("destination %s: cannot open: %s", self.name, e, exc_info=not known)
                self._reason, self._state = reason, "cannot be opened"
                self._fix = (e.fix if isinstance(e, WalrelayError) else None) or FIX
                raise SinkUnavailable(f"{reason} -- fix: {self._fix}") from None
            self._reason = None
        log.warning("destination %s: its server is reachable now; delivering", self.name)

    async def open(self) -> None:
        await self._ensure_open()

    async def deliver(self, events: Sequence[Event]) -> None:
        if self._reason is not None:
            try:
                await self._ensure_open()
            except SinkUnavailable as e:
                raise SinkUnavailable(f"{self._state}: {e}") from None
        await self.inner.deliver(events)

    def trim_below(self, lsn: Lsn) -> None:
        inner = self.inner
        if self._reason is None and isinstance(inner, TrimAware):
            inner.trim_below(lsn)

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with self._lock:
            if self._reason is None:
                await self.inner.close()


def _one_line(error: BaseException | str) -> str:
    """libpq's messages span lines ("...\\n\\tIs the server running..."): /healthz
    and ``walrelay status`` show one line per destination."""
    return " ".join(str(error).split())
