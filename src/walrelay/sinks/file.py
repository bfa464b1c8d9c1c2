"""JSON-lines file sink: one event body per line, exactly once on its own.

The scheduler hands this sink batches in exact id order (``ordered =
True``). Each batch becomes one ``write`` of the joined bodies, followed by
an ``fsync`` according to the policy:

``"batch"`` / ``"always"``
    a batch counts as delivered only after an fsync that began after its
    write: a delivered event survives an OS crash or power loss. The sink is
    a :class:`~walrelay.sinks.base.PipelinedSink`: the next batch is written
    while the previous one's fsync runs, and one fsync covers every batch
    written before it began, so a reader of the file sees each batch as soon
    as it is written, not one fsync later. (The sink writes whole batches,
    so the two names mean the same; ``"always"`` is kept for configs that
    say it.)
``"interval"``
    a background task fsyncs written data at most every ``fsync_interval``
    seconds; an OS crash can lose up to that much acknowledged data.
``"never"``
    leave it to the OS. A crash of walrelay itself loses nothing (the data
    is in the page cache); an OS crash can.

Resume: :meth:`FileSink.open` reads the file's tail, cuts off a torn last
line (a crash in the middle of a write), and takes the ``"id"`` of the last
complete line as the high-water mark. Events with an id at or below it are
replays of what the file already holds (Postgres streams again from the
confirmed LSN after a restart) and are skipped, so every event appears once.
The same mark also guards a batch the pipeline retries after a failed or
cancelled ``deliver`` whose write nevertheless completed.

While a sink has the file open it holds an exclusive ``flock`` on it: a
second writer (another walrelay, another destination) is refused with the
path named, instead of interleaving lines and duplicating ids.

Bodies must not contain a raw newline (JSON encoders escape it); a batch
that would break the line framing is rejected with
:class:`~walrelay.errors.PoisonEvent` instead of corrupting the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Literal

import orjson

from walrelay import failpoints
from walrelay.errors import ConfigError, PoisonEvent, SinkError, SinkUnavailable
from walrelay.model import Event, format_event_id, parse_body, parse_event_id

if TYPE_CHECKING:
    from walrelay.config import FileSinkConfig
    from walrelay.sinks.base import SinkContext

__all__ = ["FileSink", "FsyncPolicy"]

log = logging.getLogger("walrelay.sinks.file")

FsyncPolicy = Literal["always", "batch", "never", "interval"]

_TAIL_CHUNK = 64 * 1024

_Mark = tuple[int, int]
"""(commit_lsn, seq): event ids compared as numbers."""


class FileSink:
    """Appends event bodies as JSON lines to ``path``; see the module docstring."""

    ordered = True
    pipelined: Literal[True] = True  # see walrelay.sinks.base.PipelinedSink
    # Exactly-once on its own (the high-water mark): no dedup ledger in front.
    transactional = True

    def __init__(self, config: FileSinkConfig) -> None:
        if config.fsync_interval <= 0:
            raise ConfigError(
                f"file sink: fsync_interval must be > 0 seconds, got {config.fsync_interval}",
                fix="set fsync_interval to e.g. 1.0",
            )
        self.path = config.path
        self.fsync: FsyncPolicy = config.fsync
        self.fsync_interval = config.fsync_interval
        self.batch_size = config.batch_size
        self._sync_each_batch = config.fsync in ("always", "batch")
        # Everything below is touched by worker threads under _lock.
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        self._mark: _Mark | None = None
        self._dirty = False
        self._skipped = 0  # skipped since last logged
        self._flusher: asyncio.Task[None] | None = None
        # fsync per batch: the file size known durable, the batches waiting for an
        # fsync that has not begun yet, and the task running fsyncs for them.
        self._synced = 0
        self._synced_mark: _Mark | None = None
        self._waiting: list[asyncio.Future[None]] = []
        self._syncer: asyncio.Task[None] | None = None
        # After a failed fsync the file is cut back to _synced; the batches cut
        # off (first ids, in file order) must be written again in that order
        # before anything else, and what was written before counts for nothing
        # (_generation). _unsynced: (end size, first id) of each batch since the
        # last good fsync.
        self._unsynced: list[tuple[int, _Mark]] = []
        self._redo: deque[_Mark] = deque()
        self._generation = 0

    @classmethod
    def from_config(cls, config: FileSinkConfig, context: SinkContext) -> FileSink:
        return cls(config)

    def __repr__(self) -> str:
        return f"FileSink({self.path!r}, fsync={self.fsync!r})"

    @property
    def high_water_mark(self) -> str | None:
        """Id of the last event in the file (None for an empty file or before open)."""
        mark = self._mark
        return None if mark is None else format_event_id(*mark)

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        if self._fd is not None:
            return
        await asyncio.to_thread(self._open_sync)
        if self.fsync == "interval":
            self._flusher = asyncio.create_task(
                self._flush_periodically(), name=f"walrelay-file-fsync:{self.path}"
            )

    async def close(self) -> None:
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        syncer = self._syncer
        if syncer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await syncer  # the fd stays open until the fsync it runs is over
        if self._fd is None:
            return
        await asyncio.to_thread(self._close_sync)
        self._log_skipped()

    # -- delivery ----------------------------------------------------------

    async def deliver(self, events: Sequence[Event]) -> None:
        await (await self.place(events))

    def caught_up(self) -> None:
        """Nothing held back: each batch's fsync starts once it is written."""

    async def place(self, events: Sequence[Event]) -> Awaitable[None]:
        """Write what is new in ``events``; the awaitable completes once it is
        durable as the policy says (see the module docstring)."""
        generation = self._generation
        if events:
            written, generation = await asyncio.to_thread(self._write_batch, events)
            if written and self._skipped:
                self._log_skipped()
        return self._durable(generation)

    def _durable(self, generation: int) -> asyncio.Future[None]:
        """Done once everything written so far has been fsynced (at once unless
        the policy fsyncs every batch); failed if what was written in
        ``generation`` was cut off after a failed fsync."""
        fut = asyncio.get_running_loop().create_future()
        if generation != self._generation:
            fut.set_exception(self._cut_off())
        elif not self._sync_each_batch or self._synced >= self._size:
            fut.set_result(None)
        else:
            self._waiting.append(fut)
            if self._syncer is None:
                self._syncer = asyncio.create_task(
                    self._sync_waiting(), name=f"walrelay-file-fsync:{self.path}"
                )
        return fut

    async def _sync_waiting(self) -> None:
        """One fsync at a time, each for every batch written before it began.
        A failed one fails every batch waiting, also those queued for the next:
        it cut them all off the file (:meth:`_fsync_written`)."""
        try:
            while self._waiting:
                waiting, self._waiting = self._waiting, []
                try:
                    await asyncio.to_thread(self._fsync_written)
                except SinkError as exc:
                    waiting += self._waiting
                    self._waiting = []
                    for fut in waiting:
                        if not fut.done():
                            fut.set_exception(exc)
                else:
                    for fut in waiting:
                        if not fut.done():
                            fut.set_result(None)
        finally:
            self._syncer = None

    def _cut_off(self) -> SinkUnavailable:
        return SinkUnavailable(
            f"file sink {self.path}: a batch written before a failed fsync was cut from"
            " the file; it is written again"
        )

    # -- worker-thread code --------------------------------------------------

    def _open_sync(self) -> None:
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise ConfigError(
                f"file sink: directory {parent!r} of {self.path!r} does not exist",
                fix=f"create it (mkdir -p {parent}) or set the file sink path to an existing "
                "directory",
            )
        if os.path.isdir(self.path):
            raise ConfigError(
                f"file sink: {self.path!r} is a directory",
                fix="set the file sink path to a file name, e.g. <dir>/events.jsonl",
            )
        with self._lock:
            existed = os.path.exists(self.path)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise ConfigError(
                    f"file sink: cannot open {self.path!r}: {exc.strerror}",
                    fix="check the path and the permissions of walrelay's user on it",
                ) from None
            try:
                self._lock_file(fd)
                size, mark = self._recover(fd)
                if self.fsync != "never":
                    # What an earlier run wrote is durable before it is skipped as a replay.
                    os.fsync(fd)
                    if not existed:
                        _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            self._size = self._synced = size
            self._mark = self._synced_mark = mark
            self._dirty = False
            self._skipped = 0
        if mark is not None:
            log.info(
                "file sink %s: resuming after event %s; replayed events up to it are skipped",
                self.path,
                format_event_id(*mark),
            )

    def _lock_file(self, fd: int) -> None:
        """Hold an exclusive flock on the file while this sink has it open: a second
        writer would interleave lines and break the high-water mark's exactly-once.
        The lock goes with the descriptor (closed, or the process gone)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"file sink: {self.path!r} is locked by another writer (another walrelay"
                " or destination writing the same file)",
                fix="give each walrelay destination a file path of its own,"
                " or stop the other writer first",
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"file sink: cannot lock {self.path!r}: {exc.strerror}",
                fix="put the file on a file system that supports flock (not every NFS does)",
            ) from None

    def _recover(self, fd: int) -> tuple[int, _Mark | None]:
        """Truncate a torn tail; return (size, id of the last complete line)."""
        size = os.fstat(fd).st_size
        good_end, line = _scan_tail(fd, size)
        if good_end != size:
            log.warning(
                "file sink %s: cut off a torn last line (%d bytes) left by an interrupted write",
                self.path,
                size - good_end,
            )
            os.ftruncate(fd, good_end)
            if self.fsync != "never":
                os.fsync(fd)
        if line is None:
            return good_end, None
        try:
            record = parse_body(line)
            event_id = record["id"]
            if not isinstance(event_id, str):
                raise TypeError("id is not a string")
            mark = parse_event_id(event_id)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"file sink: cannot resume {self.path!r}: its last line is not a walrelay "
                f"event with an 'id' ({type(exc).__name__}: {str(exc)[:100]})",
                fix="point the file sink at a new file, or move this file away",
            ) from None
        return good_end, mark

    def _write_batch(self, events: Sequence[Event]) -> tuple[int, int]:
        """Write what is new in ``events``; return how many were written, and
        in which generation."""
        with self._lock:
            fd = self._fd
            if fd is None:
                raise SinkError(f"file sink {self.path}: deliver() before open() or after close()")
            generation = self._generation
            mark = self._mark
            if mark is not None:
                last = events[-1]
                if (last.commit_lsn, last.seq) <= mark:
                    self._skipped += len(events)
                    return 0, generation
                first = events[0]
                if (first.commit_lsn, first.seq) <= mark:
                    fresh = [e for e in events if (e.commit_lsn, e.seq) > mark]
                    self._skipped += len(events) - len(fresh)
                    events = fresh
            first_mark = (events[0].commit_lsn, events[0].seq)
            redo = self._redo
            if redo and first_mark != redo[0]:
                raise SinkUnavailable(
                    f"file sink {self.path}: the batch from {format_event_id(*first_mark)}"
                    f" waits until the batches cut off after a failed fsync are written"
                    f" again (next: {format_event_id(*redo[0])})"
                )
            bodies = [e.body for e in events]
            bodies.append(b"")
            data = b"\n".join(bodies)
            if data.count(b"\n") != len(events):
                _reject_multiline(events)
            before = self._size
            try:
                _write_all(fd, data)
            except OSError as exc:
                # Leave no partial batch behind: the pipeline retries it whole.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, before)
                raise SinkUnavailable(
                    f"file sink {self.path}: write failed ({exc.strerror or exc}); "
                    f"{len(events)} events not written"
                ) from None
            self._size = before + len(data)
            last = events[-1]
            self._mark = (last.commit_lsn, last.seq)
            self._dirty = not self._sync_each_batch
            if redo:
                redo.popleft()
            if self._sync_each_batch:
                self._unsynced.append((self._size, first_mark))
            return len(events), generation

    def _fsync_written(self) -> None:
        """fsync what is written (on a thread; writes go on meanwhile). When it
        fails, cut the file back to the last good fsync: pages whose write-back
        failed may be dropped by the kernel while a later fsync succeeds, so the
        batches since are written again rather than trusted."""
        with self._lock:
            fd, size, mark = self._fd, self._size, self._mark
        if fd is None:
            raise SinkError(f"file sink {self.path}: deliver() before open() or after close()")
        try:
            os.fsync(fd)
        except OSError as exc:
            with self._lock:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self._synced)
                self._size = self._synced
                self._mark = self._synced_mark
                self._redo = deque(first for _, first in self._unsynced)
                self._unsynced = []
                self._generation += 1
            raise SinkUnavailable(
                f"file sink {self.path}: fsync failed ({exc.strerror or exc}); the batches"
                " written since the last good fsync are written again"
            ) from None
        with self._lock:
            if size > self._synced:
                self._synced, self._synced_mark = size, mark
                self._unsynced = [u for u in self._unsynced if u[0] > size]
        failpoints.hit(failpoints.FILE_AFTER_FSYNC)

    def _sync_if_dirty(self) -> None:
        with self._lock:
            if self._fd is None or not self._dirty:
                return
            self._dirty = False
            try:
                os.fsync(self._fd)
            except OSError as exc:
                # The batches were acknowledged already: all we can do is say so loudly.
                log.error(
                    "file sink %s: periodic fsync failed (%s); events written in the last "
                    "%.1f s may be lost if the machine crashes",
                    self.path,
                    exc.strerror or exc,
                    self.fsync_interval,
                )

    def _close_sync(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is None:
                return
            try:
                if self.fsync != "never":
                    os.fsync(fd)
            except OSError as exc:
                log.error("file sink %s: final fsync failed: %s", self.path, exc.strerror or exc)
            finally:
                os.close(fd)

    # -- loop-side helpers ---------------------------------------------------

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.fsync_interval)
            if self._dirty:
                await asyncio.to_thread(self._sync_if_dirty)

    def _log_skipped(self) -> None:
        skipped, self._skipped = self._skipped, 0
        if skipped:
            log.info(
                "file sink %s: skipped %d replayed events already in the file (up to %s)",
                self.path,
                skipped,
                self.high_water_mark,
            )


def _write_all(fd: int, data: bytes) -> None:
    n = os.write(fd, data)
    if n == len(data):
        return
    view = memoryview(data)
    while n < len(data):
        n += os.write(fd, view[n:])


def _fsync_dir(path: str) -> None:
    """Make a newly created file's directory entry durable (best effort)."""
    try:
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _scan_tail(fd: int, size: int) -> tuple[int, bytes | None]:
    """Find the end of the last complete line and that line's content.

    Returns ``(good_end, line)``: ``good_end`` is the offset just after the
    last newline (everything after it is a torn write), ``line`` the last
    non-blank complete line or None if there is none. Reads backwards in
    growing chunks, so only the tail of a large file is read.
    """
    buf = b""
    pos = size  # buf holds file[pos:size]
    chunk = _TAIL_CHUNK
    good_end: int | None = None
    while True:
        if pos > 0:
            start = max(0, pos - chunk)
            buf = os.pread(fd, pos - start, start) + buf
            pos = start
            chunk *= 2
        if good_end is None:
            i = buf.rfind(b"\n")
            if i >= 0:
                good_end = pos + i + 1
            elif pos == 0:
                return 0, None
            else:
                continue
        body = buf[: good_end - pos - 1].rstrip(b"\n\r\t ")
        j = body.rfind(b"\n")
        if j >= 0:
            return good_end, body[j + 1 :]
        if pos == 0:
            return good_end, body or None


def _reject_multiline(events: Sequence[Event]) -> None:
    for e in events:
        if b"\n" in e.body:
            raise PoisonEvent(
                f"file sink: body of event {e.id} contains a raw newline, which would break "
                "the JSON-lines framing; encode it as compact JSON"
            )
    raise AssertionError("newline count mismatch without a multi-line body")  # pragma: no cover
