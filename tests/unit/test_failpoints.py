"""Failpoint spec parsing and actions (the crash itself is tested in a child process)."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from walrelay import failpoints
from walrelay.errors import ConfigError


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    failpoints.reload("")


def test_off_by_default_and_parsing() -> None:
    failpoints.reload("")
    assert failpoints.active() == {}
    failpoints.hit(failpoints.SINK_AFTER_SEND)  # nothing happens
    failpoints.reload(
        "sink.before_send=crash; sink.after_send=crash@3, "
        "ledger.after_record=sleep:0.01;kafka.after_commit=off"
    )
    assert failpoints.active() == {
        "sink.before_send": "crash@1",
        "sink.after_send": "crash@3",
        "ledger.after_record": "sleep:0.01",
        "kafka.after_commit": "off",
    }


@pytest.mark.parametrize(
    "spec",
    [
        "x",
        "=crash",
        "sink.after_send=boom",
        "sink.after_send=crash@0",
        "sink.after_send=crash@x",
        "sink.after_send=sleep:-1",
        "no.such_point=crash",
    ],
)
def test_bad_specs_are_refused(spec: str) -> None:
    with pytest.raises(failpoints.FailpointSpecError):
        failpoints.reload(spec)


def test_sleep_stalls() -> None:
    failpoints.reload("pipeline.after_finish=sleep:0.05")
    t0 = time.monotonic()
    failpoints.hit(failpoints.PIPELINE_AFTER_FINISH)
    assert time.monotonic() - t0 >= 0.05


def test_crash_exits_137_on_the_nth_hit() -> None:
    code = (
        "from walrelay import failpoints\n"
        "for i in range(5):\n"
        "    print(i, flush=True)\n"
        "    failpoints.hit(failpoints.SINK_AFTER_SEND)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"WALRELAY_FAILPOINTS": "sink.after_send=crash@3", "PATH": ""},
        timeout=60,
    )
    assert result.returncode == failpoints.EXIT_CODE
    assert result.stdout.split() == ["0", "1", "2"]
    assert "failpoint sink.after_send: crash" in result.stderr


def test_points_are_documented() -> None:
    doc = failpoints.__doc__ or ""
    for name in failpoints.POINTS:
        assert f"``{name}``" in doc


def test_constants_match_points() -> None:
    names = {
        getattr(failpoints, attr)
        for attr in failpoints.__all__
        if attr.isupper() and attr not in ("ENV_VAR", "EXIT_CODE", "POINTS")
    }
    assert names == set(failpoints.POINTS)
    assert len(failpoints.POINTS) == len(set(failpoints.POINTS))
    for name in failpoints.POINTS:
        assert getattr(failpoints, name.upper().replace(".", "_")) == name


def test_unknown_point_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        failpoints.reload("sink.after_sned=crash")
    text = str(info.value)
    assert "unknown failpoint 'sink.after_sned'" in text
    assert "\n" not in text
    for name in failpoints.POINTS:
        assert name in (info.value.fix or "")
    assert failpoints.active() == {}  # nothing half-applied


def test_unknown_point_in_env_is_one_line_from_the_cli(tmp_path: Path) -> None:
    config = tmp_path / "walrelay.yaml"
    config.write_text("source: {dsn: 'postgresql://nowhere.invalid/x'}\n")
    result = subprocess.run(
        [sys.executable, "-m", "walrelay", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        env={"WALRELAY_FAILPOINTS": "kafka.before_comit=crash", "PATH": ""},
        timeout=60,
    )
    assert result.returncode == ConfigError.exit_code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("walrelay: error: WALRELAY_FAILPOINTS: unknown failpoint")
    assert "'kafka.before_comit'" in lines[0]
    assert "kafka.before_commit" in lines[0]


def _hit_call_sites() -> list[tuple[Path, ast.Call]]:
    src = Path(failpoints.__file__).resolve().parent
    sites: list[tuple[Path, ast.Call]] = []
    for path in sorted(src.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "hit"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "failpoints"
            ):
                sites.append((path, node))
    return sites


def test_every_hit_call_site_uses_a_known_constant() -> None:
    """``failpoints.hit(...)`` in src/ must name a constant from POINTS: a string
    literal (or an unknown name) would be a point no spec can switch on."""
    sites = _hit_call_sites()
    assert sites, "no failpoints.hit(...) call found in src/"
    constants = {
        attr for attr in dir(failpoints) if getattr(failpoints, attr, None) in failpoints.POINTS
    }
    bad: list[str] = []
    for path, call in sites:
        where = f"{path.name}:{call.lineno}"
        arg = call.args[0] if len(call.args) == 1 and not call.keywords else None
        if (
            isinstance(arg, ast.Attribute)
            and isinstance(arg.value, ast.Name)
            and arg.value.id == "failpoints"
            and arg.attr in constants
        ):
            continue
        bad.append(f"{where}: failpoints.hit({ast.unparse(call.args[0]) if call.args else ''})")
    assert not bad, "use a failpoints constant:\n" + "\n".join(bad)
