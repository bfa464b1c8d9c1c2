"""The file sink as a pipelined ordered sink: the next batch is written while
the previous one's fsync runs, a batch is finished only after an fsync that
began after its write, and a failed fsync has every batch since written
again, in file order."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.unit.test_file_sink import events, file_sink, ids_in
from tests.unit.test_scheduler import Recorder
from tests.waiting import wait_for
from walrelay.engine.waiting_sink import WaitingSink
from walrelay.errors import SinkUnavailable
from walrelay.model import Event
from walrelay.pipeline.backoff import Backoff
from walrelay.pipeline.scheduler import Destination
from walrelay.sinks.base import is_pipelined
from walrelay.sinks.file import FileSink

FAST = Backoff(initial=0.001, multiplier=2.0, maximum=0.005)


class HeldFsync:
    """Holds the next fsync until released; then it succeeds or fails with EIO."""

    def __init__(self) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.released = threading.Event()
        self.fail = False
        self.calls = 0

    def wrap(self, real: Callable[[int], None]) -> Callable[[int], None]:
        def fsync(fd: int) -> None:
            self.calls += 1
            if self.armed:
                self.armed = False
                self.entered.set()
                self.released.wait(10)
                if self.fail:
                    raise OSError(5, "Input/output error")
            real(fd)

        return fsync

    def release(self, *, fail: bool) -> None:
        self.fail = fail
        self.released.set()


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldFsync]:
    held = HeldFsync()
    monkeypatch.setattr(os, "fsync", held.wrap(os.fsync))
    yield held
    held.released.set()  # never leave a worker thread waiting


def ids(batch: list[Event]) -> list[str]:
    return [e.id for e in batch]


async def wait_written(path: Path, batch: list[Event]) -> None:
    want = set(ids(batch))
    await wait_for(lambda: want <= set(ids_in(path)), within=5, interval=0.001, what="a write")


async def written_during_a_held_fsync(
    path: Path, held: HeldFsync, first: list[Event], then: list[Event], batch_size: int
) -> tuple[FileSink, Destination, Recorder]:
    """A file sink under a running scheduler: ``first`` put, its fsync held,
    then ``then`` put and seen in the file (readable while the fsync is held:
    not one fsync later)."""
    sink = file_sink(path, batch_size=batch_size)
    await sink.open()
    recorder = Recorder()
    dest = Destination("d", sink, hooks=[recorder], backoff=FAST)
    dest.start()
    held.armed = True
    for e in first:
        await dest.put(e)
    await wait_for(held.entered.is_set, within=5, interval=0.001, what="the first fsync")
    for e in then:
        await dest.put(e)
    await wait_written(path, then)
    return sink, dest, recorder


def test_the_file_sink_is_pipelined(tmp_path: Path) -> None:
    assert is_pipelined(file_sink(tmp_path / "f.jsonl"))


async def test_the_next_batch_is_written_while_the_previous_fsync_runs(
    tmp_path: Path, held: HeldFsync
) -> None:
    path = tmp_path / "f.jsonl"
    first, second = events(1, 3), events(2, 3)
    sink, dest, recorder = await written_during_a_held_fsync(path, held, first, second, 3)
    assert recorder.batches == 0  # nothing is finished before an fsync covers it
    held.release(fail=False)
    assert await dest.drain(timeout=5)
    await dest.stop()
    await sink.close()
    assert ids_in(path) == ids(first + second)
    recorder.assert_once(first + second)


async def test_a_failed_fsync_writes_every_batch_since_again_in_file_order(
    tmp_path: Path, held: HeldFsync
) -> None:
    path = tmp_path / "f.jsonl"
    sink = file_sink(path)
    await sink.open()
    before, a, b, c = events(1, 2), events(2, 2), events(3, 2), events(4, 2)
    await sink.deliver(before)
    held.armed = True
    durable_a = await sink.place(a)
    await wait_for(held.entered.is_set, within=5, interval=0.001, what="a's fsync")
    durable_b = await sink.place(b)  # written while a's fsync runs
    assert ids_in(path) == ids(before + a + b)
    held.release(fail=True)
    for durable in (durable_a, durable_b):
        with pytest.raises(SinkUnavailable, match="fsync failed"):
            await durable
    # Cut back to the last good fsync: a and b count as not written.
    assert ids_in(path) == ids(before)
    # Retried out of order, b and a new batch wait until a is written again.
    for batch in (b, c):
        with pytest.raises(SinkUnavailable, match=f"next: {a[0].id}"):
            await sink.place(batch)
    for batch in (a, b, c):
        await (await sink.place(batch))
    await sink.close()
    assert ids_in(path) == ids(before + a + b + c)


async def test_a_failed_fsync_under_the_scheduler_loses_and_repeats_nothing(
    tmp_path: Path, held: HeldFsync
) -> None:
    path = tmp_path / "f.jsonl"
    sent = [e for lsn in range(1, 9) for e in events(lsn, 3)]
    sink, dest, recorder = await written_during_a_held_fsync(path, held, sent[:12], sent[12:], 4)
    held.release(fail=True)
    assert await dest.drain(timeout=10)
    await dest.stop()
    await sink.close()
    assert dest.failures_total >= 1
    assert ids_in(path) == ids(sent)
    recorder.assert_once(sent)


async def test_an_ordered_sink_behind_a_wrapper_is_delivered_to_one_batch_at_a_time(
    tmp_path: Path,
) -> None:
    # The engine's WaitingSink (a sink whose open failed) has a start() of its
    # own and no place(): only a sink that says pipelined = True is pipelined.
    path = tmp_path / "f.jsonl"
    waiting = WaitingSink("d", file_sink(path), SinkUnavailable("not there yet"), FAST)
    assert not is_pipelined(waiting)
    dest = Destination("d", waiting, backoff=FAST)
    dest.start()
    sent = events(1, 5)
    for e in sent:
        await dest.put(e)
    assert await dest.drain(timeout=5)
    await dest.stop()
    await waiting.close()
    assert dest.failures_total == 0
    assert ids_in(path) == ids(sent)
