"""Failpoint spec parsing and actions (the crash itself is tested in a child process)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from walrelay import failpoints


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    failpoints.reload("")


def test_off_by_default_and_parsing() -> None:
    failpoints.reload("")
    assert failpoints.active() == {}
    failpoints.hit("sink.after_send")  # nothing happens
    failpoints.reload("a.b=crash; c.d=crash@3, e.f=sleep:0.01;g.h=off")
    assert failpoints.active() == {
        "a.b": "crash@1",
        "c.d": "crash@3",
        "e.f": "sleep:0.01",
        "g.h": "off",
    }


@pytest.mark.parametrize("spec", ["x", "=crash", "a=boom", "a=crash@0", "a=crash@x", "a=sleep:-1"])
def test_bad_specs_are_refused(spec: str) -> None:
    with pytest.raises(failpoints.FailpointSpecError):
        failpoints.reload(spec)


def test_sleep_stalls() -> None:
    failpoints.reload("slow=sleep:0.05")
    t0 = time.monotonic()
    failpoints.hit("slow")
    assert time.monotonic() - t0 >= 0.05


def test_crash_exits_137_on_the_nth_hit() -> None:
    code = (
        "from walrelay import failpoints\n"
        "for i in range(5):\n"
        "    print(i, flush=True)\n"
        "    failpoints.hit('p')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"WALRELAY_FAILPOINTS": "p=crash@3", "PATH": ""},
        timeout=60,
    )
    assert result.returncode == failpoints.EXIT_CODE
    assert result.stdout.split() == ["0", "1", "2"]
    assert "failpoint p: crash" in result.stderr


def test_points_are_documented() -> None:
    doc = failpoints.__doc__ or ""
    for name in failpoints.POINTS:
        assert f"``{name}``" in doc
