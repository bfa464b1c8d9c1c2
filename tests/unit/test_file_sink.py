"""File sink (JSON lines, exactly-once resume) and stdout sink."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from walrelay.config import FileSinkConfig, StdoutSinkConfig, parse_config
from walrelay.errors import ConfigError, PoisonEvent, SinkUnavailable
from walrelay.model import Event, format_event_id
from walrelay.sinks import file as file_mod
from walrelay.sinks.base import Sink
from walrelay.sinks.file import FileSink
from walrelay.sinks.stdout import StdoutSink

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def file_sink(path: Path | str, **settings: object) -> FileSink:
    return FileSink(FileSinkConfig(path=str(path), **settings))


def make_event(lsn: int, seq: int, **extra: object) -> Event:
    eid = format_event_id(lsn, seq)
    body = orjson.dumps({"id": eid, "op": "insert", "table": "public.t", **extra})
    return Event(
        commit_lsn=lsn,
        seq=seq,
        op="insert",
        table="public.t",
        keys=(str(seq),),
        body=body,
        xid=1,
        committed_at=T0,
    )


def events(lsn: int, n: int, start: int = 0) -> list[Event]:
    return [make_event(lsn, s) for s in range(start, start + n)]


def ids_in(path: Path) -> list[str]:
    return [orjson.loads(line)["id"] for line in path.read_bytes().splitlines()]


@pytest.fixture
def fsync_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


async def test_is_a_sink_and_writes_lines(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    sink = file_sink(path)
    assert isinstance(sink, Sink)
    assert sink.ordered is True
    assert sink.batch_size == 2000
    await sink.open()
    batch = events(0x100, 3)
    await sink.deliver(batch)
    await sink.deliver(events(0x200, 2))
    await sink.close()
    data = path.read_bytes()
    assert data.endswith(b"\n")
    assert data.splitlines()[0] == batch[0].body
    assert ids_in(path) == [format_event_id(0x100, s) for s in range(3)] + [
        format_event_id(0x200, s) for s in range(2)
    ]


@pytest.mark.parametrize("policy", ["always", "batch"])
async def test_fsync_per_batch(tmp_path: Path, fsync_calls: list[int], policy: str) -> None:
    sink = file_sink(tmp_path / "f.jsonl", fsync=policy)
    await sink.open()
    fsync_calls.clear()
    await sink.deliver(events(1, 5))
    assert len(fsync_calls) == 1
    await sink.deliver(events(2, 5))
    assert len(fsync_calls) == 2
    await sink.close()


async def test_fsync_never(tmp_path: Path, fsync_calls: list[int]) -> None:
    sink = file_sink(tmp_path / "f.jsonl", fsync="never")
    await sink.open()
    for lsn in range(1, 4):
        await sink.deliver(events(lsn, 5))
    await sink.close()
    assert fsync_calls == []
    assert len(ids_in(tmp_path / "f.jsonl")) == 15


async def test_fsync_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    synced = asyncio.Event()
    real = os.fsync

    def signalling(fd: int) -> None:
        real(fd)
        loop.call_soon_threadsafe(synced.set)

    sink = file_sink(tmp_path / "f.jsonl", fsync="interval", fsync_interval=0.01)
    await sink.open()
    monkeypatch.setattr(os, "fsync", signalling)
    await sink.deliver(events(1, 5))
    assert not synced.is_set()  # deliver itself does not fsync
    await asyncio.wait_for(synced.wait(), timeout=10)
    await sink.close()
    assert len(ids_in(tmp_path / "f.jsonl")) == 5


async def test_resume_skips_replayed_events(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "f.jsonl"
    sink = file_sink(path)
    await sink.open()
    await sink.deliver(events(0x10, 4))
    await sink.deliver(events(0x20, 3))
    await sink.close()

    # A restart replays from an older confirmed LSN: the batches straddle the mark.
    sink = file_sink(path)
    await sink.open()
    assert sink.high_water_mark == format_event_id(0x20, 2)
    caplog.set_level(logging.INFO, logger="walrelay.sinks.file")
    await sink.deliver(events(0x10, 4))  # entirely old
    await sink.deliver(events(0x20, 3) + events(0x30, 2))  # old prefix, new tail
    await sink.deliver(events(0x40, 1))
    await sink.close()

    expected = (
        [format_event_id(0x10, s) for s in range(4)]
        + [format_event_id(0x20, s) for s in range(3)]
        + [format_event_id(0x30, s) for s in range(2)]
        + [format_event_id(0x40, 0)]
    )
    assert ids_in(path) == expected
    assert any("skipped 7 replayed events" in r.getMessage() for r in caplog.records)


async def test_retry_of_completed_batch_is_not_duplicated(tmp_path: Path) -> None:
    # A deliver whose write completed but whose caller saw an error/cancel is retried
    # by the pipeline with the same events: they must not appear twice.
    path = tmp_path / "f.jsonl"
    sink = file_sink(path)
    await sink.open()
    batch = events(0x10, 3)
    await sink.deliver(batch)
    await sink.deliver(batch)
    await sink.close()
    assert len(ids_in(path)) == 3


async def test_ids_compare_numerically(tmp_path: Path) -> None:
    # seq 10 sorts after seq 9 although "10" < "9" as text.
    path = tmp_path / "f.jsonl"
    sink = file_sink(path)
    await sink.open()
    await sink.deliver(events(0x10, 11))
    await sink.close()
    sink = file_sink(path)
    await sink.open()
    assert sink.high_water_mark == format_event_id(0x10, 10)
    await sink.deliver(events(0x10, 12))
    await sink.close()
    assert len(ids_in(path)) == 12


async def test_torn_last_line_is_truncated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "f.jsonl"
    sink = file_sink(path)
    await sink.open()
    await sink.deliver(events(0x10, 3))
    await sink.close()
    # Crash in the middle of writing the next batch.
    torn = make_event(0x20, 0).body[:17]
    with path.open("ab") as f:
        f.write(make_event(0x10, 3).body + b"\n" + torn)

    caplog.set_level(logging.WARNING, logger="walrelay.sinks.file")
    sink = file_sink(path)
    await sink.open()
    assert any("torn" in r.getMessage() for r in caplog.records)
    assert sink.high_water_mark == format_event_id(0x10, 3)
    await sink.deliver(events(0x10, 4) + events(0x20, 2))
    await sink.close()
    assert ids_in(path) == [format_event_id(0x10, s) for s in range(4)] + [
        format_event_id(0x20, s) for s in range(2)
    ]


async def test_file_with_only_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"id":"00000')
    sink = file_sink(path)
    await sink.open()
    assert sink.high_water_mark is None
    assert path.read_bytes() == b""
    await sink.deliver(events(1, 2))
    await sink.close()
    assert len(ids_in(path)) == 2


async def test_long_last_line_and_blank_lines(tmp_path: Path) -> None:
    # The tail reader must look further back than its first chunk.
    path = tmp_path / "f.jsonl"
    big = make_event(0x50, 7, pad="x" * 300_000)
    path.write_bytes(make_event(0x50, 6).body + b"\n" + big.body + b"\n\n\n")
    sink = file_sink(path)
    await sink.open()
    assert sink.high_water_mark == format_event_id(0x50, 7)
    await sink.close()


async def test_resumes_after_a_json_number_beyond_double(tmp_path: Path) -> None:
    # A jsonb column's 1e400 is in the body verbatim; orjson refuses to read it.
    path = tmp_path / "f.jsonl"
    body = (
        b'{"id":"%s","op":"insert","record":{"doc":{"x":1e400}}}'
        % format_event_id(0x50, 3).encode()
    )
    path.write_bytes(body + b"\n")
    sink = file_sink(path)
    await sink.open()
    assert sink.high_water_mark == format_event_id(0x50, 3)
    await sink.close()


async def test_foreign_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"hello world\n")
    with pytest.raises(ConfigError, match="not a walrelay event"):
        await file_sink(path).open()


async def test_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "f.jsonl"
    with pytest.raises(ConfigError) as info:
        await file_sink(path).open()
    text = str(info.value)
    assert str(tmp_path / "nope") in text
    assert "mkdir -p" in text
    assert info.value.exit_code == 2


async def test_path_is_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        await file_sink(tmp_path).open()


def test_bad_policy() -> None:
    with pytest.raises(ConfigError, match="fsync"):
        parse_config(
            {
                "source": {"dsn": "dbname=x", "tables": ["t"]},
                "destinations": [
                    {"name": "f", "sink": {"type": "file", "path": "x", "fsync": "sometimes"}}
                ],
            }
        )


async def test_multiline_body_is_poison(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    sink = file_sink(path)
    await sink.open()
    bad = make_event(1, 1)
    bad.body = b'{"id":"0000000000000001/1",\n"x":1}'
    with pytest.raises(PoisonEvent, match="0000000000000001/0000000001"):
        await sink.deliver([make_event(1, 0), bad])
    await sink.deliver([make_event(1, 0)])
    await sink.close()
    assert ids_in(path) == [format_event_id(1, 0)]


async def test_write_error_leaves_no_partial_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f.jsonl"
    sink = file_sink(path)
    await sink.open()
    await sink.deliver(events(1, 2))

    def failing(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(SinkUnavailable, match="No space left") as info:
        await sink.deliver(events(2, 2))
    assert info.value.permanent is False
    monkeypatch.undo()
    assert len(ids_in(path)) == 2  # the failed batch was cut off again
    await sink.deliver(events(2, 2))  # the pipeline's retry writes it
    await sink.close()
    assert len(ids_in(path)) == 4


async def test_cancelled_deliver_then_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cancel deliver while its write runs in the worker thread; close waits for it.
    path = tmp_path / "f.jsonl"
    sink = file_sink(path)
    await sink.open()
    entered = threading.Event()
    release = threading.Event()
    real_write = file_mod._write_all

    def slow_write(fd: int, data: bytes) -> None:
        entered.set()
        release.wait(10)
        real_write(fd, data)

    monkeypatch.setattr(file_mod, "_write_all", slow_write)
    task = asyncio.create_task(sink.deliver(events(1, 3)))
    await asyncio.to_thread(entered.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    await sink.deliver(events(1, 3))  # the retry: already written, skipped
    await sink.close()
    assert len(ids_in(path)) == 3


async def test_stdout_sink() -> None:
    out = io.BytesIO()
    sink = StdoutSink(StdoutSinkConfig(), stream=out)
    assert isinstance(sink, Sink)
    assert sink.ordered is True and sink.batch_size == 2000
    await sink.open()
    batch = events(1, 3)
    await sink.deliver(batch)
    await sink.close()
    assert out.getvalue() == b"".join(e.body + b"\n" for e in batch)
