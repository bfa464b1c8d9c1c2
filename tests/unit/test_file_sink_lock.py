"""The file sink locks its path: a second writer is refused, naming the path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from walrelay.config import FileSinkConfig
from walrelay.errors import ConfigError
from walrelay.sinks.file import FileSink

SECOND_WRITER = """
import asyncio, sys
from walrelay.config import FileSinkConfig
from walrelay.errors import ConfigError
from walrelay.sinks.file import FileSink
try:
    asyncio.run(FileSink(FileSinkConfig(path=sys.argv[1])).open())
except ConfigError as e:
    print(e)
    sys.exit(e.exit_code)
"""


def second_writer(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SECOND_WRITER, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_a_second_writer_process_is_refused_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    first = FileSink(FileSinkConfig(path=str(path)))
    await first.open()
    try:
        other = second_writer(path)
        assert other.returncode == 2, other.stderr
        assert f"file sink: {str(path)!r} is locked by another writer" in other.stdout
        assert "fix:" in other.stdout
        # In the same process too (two destinations on one path).
        with pytest.raises(ConfigError, match="locked by another writer"):
            await FileSink(FileSinkConfig(path=str(path))).open()
    finally:
        await first.close()
    # Released with the file: the next writer gets it.
    assert second_writer(path).returncode == 0
