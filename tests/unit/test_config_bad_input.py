"""Bad input is one line naming the key and the fix, exit 2, for every subcommand
that reads a config -- never a traceback, never a fragment of a password."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from walrelay.cli import main
from walrelay.config_file import MAX_CONFIG_BYTES
from walrelay.testing.pgcluster import free_port

SECRET = "Sw0rdfish-SECRET"
CLOSED_PORT = free_port()  # nothing listens: every connection is refused at once

# Every subcommand that reads --config (``failed`` first prints its deprecation line).
CONFIG_COMMANDS = [
    ["run"],
    ["status", "--timeout", "0.2"],
    ["backfill", "--destination", "f", "--table", "t", "--no-wait"],
    ["parking", "list"],
    ["failed", "list"],
]
DSN_COMMANDS = [["doctor", "--dsn"], ["outbox", "maintain", "--dsn"], ["outbox", "init", "--dsn"]]
_DEPRECATED = "`walrelay failed` is deprecated"


def base_config(tmp: Path) -> dict[str, Any]:
    return {
        "source": {
            "dsn": f"host=127.0.0.1 port={CLOSED_PORT} user=u password={SECRET} "
            "dbname=x connect_timeout=1",
            "tables": ["public.t"],
        },
        "destinations": [{"name": "f", "sink": {"type": "file", "path": str(tmp / "out.jsonl")}}],
        "http": {"port": CLOSED_PORT},
    }


@pytest.fixture(autouse=True)
def _no_libpq_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("PGHOST", "PGPORT", "PGSERVICE", "PGPASSWORD", "WALRELAY_DSN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "1")
    monkeypatch.setenv("PGPORT", str(CLOSED_PORT))
    monkeypatch.setenv("PGHOST", "127.0.0.1")
    yield


def invoke(args: list[str]) -> Result:
    return CliRunner().invoke(main, args, catch_exceptions=True)


def error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if _DEPRECATED not in line]


def assert_one_line_exit_2(result: Result, *, secret: str | None = SECRET) -> str:
    """The result is exit 2 with one line on stderr and no traceback; that line."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"uncaught {result.exception!r}"
    )
    lines = error_lines(result)
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    if secret is not None:
        assert secret not in result.output
    return lines[0]


def write(tmp: Path, data: bytes | str | dict[str, Any]) -> Path:
    path = tmp / "walrelay.yaml"
    if isinstance(data, dict):
        data = yaml.safe_dump(data)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def with_source(tmp: Path, **source: Any) -> dict[str, Any]:
    config = base_config(tmp)
    config["source"].update(source)
    return config


def with_sink(tmp: Path, **sink: Any) -> dict[str, Any]:
    config = base_config(tmp)
    config["destinations"][0]["sink"].update(sink)
    return config


BAD_FILES: dict[str, Callable[[Path], bytes | str | dict[str, Any]]] = {
    "utf16": lambda tmp: yaml.safe_dump(base_config(tmp)).encode("utf-16"),
    "utf16-no-bom": lambda tmp: yaml.safe_dump(base_config(tmp)).encode("utf-16-le"),
    "latin1": lambda tmp: yaml.safe_dump(base_config(tmp)).replace("u ", "\xe9 ").encode("latin1"),
    "duplicate-key": lambda tmp: yaml.safe_dump(base_config(tmp)).replace(
        "tables:", "slot: a\n  slot: b\n  tables:"
    ),
    "too-big": lambda tmp: b"#" * (MAX_CONFIG_BYTES + 1),
    "inf-duration": lambda tmp: with_source(tmp, status_interval=float("inf")),
    "inf-string": lambda tmp: yaml.safe_dump(base_config(tmp)).replace(
        "tables:", "status_interval: .inf\n  tables:"
    ),
    "nan-duration": lambda tmp: with_source(tmp, status_interval=float("nan")),
    "zero-status-interval": lambda tmp: with_source(tmp, status_interval=0),
    "huge-duration": lambda tmp: with_source(tmp, status_interval="9" * 400),
    "size-out-of-range": lambda tmp: with_source(tmp, spill_memory_bytes="99999999GiB"),
    "zero-size": lambda tmp: with_source(tmp, spill_memory_bytes=0),
    "batch-out-of-range": lambda tmp: with_sink(tmp, batch_size=10**30),
    "password-with-space": lambda tmp: with_source(
        tmp, dsn=f"host=127.0.0.1 password={SECRET} more user=u"
    ),
    "url-password-with-space": lambda tmp: with_source(
        tmp, dsn=f"postgresql://u:{SECRET} x@127.0.0.1/db"
    ),
    "unterminated-quote": lambda tmp: with_source(tmp, dsn=f"host=h password='{SECRET}"),
    "bad-percent": lambda tmp: with_source(tmp, dsn=f"postgresql://u:{SECRET}%zz@h/db"),
    "not-a-mapping": lambda tmp: "- just\n- a list\n",
    "billion-laughs": lambda tmp: (
        "a: &a [x, x]\n"
        + "".join(f"a{i}: &a{i} [*{'a' if i == 0 else f'a{i - 1}'}, *a]\n" for i in range(200))
    ),
}

# What the one line must name for each bad file.
NAMED = {
    "utf16": "UTF-16",
    "utf16-no-bom": "NUL bytes",
    "latin1": "not UTF-8",
    "duplicate-key": "'slot' appears twice",
    "too-big": "larger than 1 MiB",
    "inf-duration": "source.status_interval: must be a finite duration",
    "inf-string": "source.status_interval: must be a finite duration",
    "nan-duration": "source.status_interval: must be a finite duration",
    "zero-status-interval": "source.status_interval: must be more than 0",
    "huge-duration": "source.status_interval: must be a finite duration",
    "size-out-of-range": "source.spill_memory_bytes: must be at most 1 PiB",
    "zero-size": "source.spill_memory_bytes: must be more than 0",
    "batch-out-of-range": "destinations.0.sink.file.batch_size: must be at most 1,000,000",
    "password-with-space": "source.dsn: not a valid libpq connection string",
    "url-password-with-space": "source.dsn: not a valid libpq connection string",
    "unterminated-quote": "source.dsn: not a valid libpq connection string",
    "bad-percent": "source.dsn: not a valid libpq connection string",
    "not-a-mapping": "expected a mapping",
    "billion-laughs": "more than 100 aliases",
}


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("bad", sorted(BAD_FILES))
def test_every_config_command_refuses_bad_input_in_one_line(
    tmp_path: Path, command: list[str], bad: str
) -> None:
    path = write(tmp_path, BAD_FILES[bad](tmp_path))
    line = assert_one_line_exit_2(invoke([*command, "--config", str(path)]))
    assert NAMED[bad] in line
    assert "fix:" in line


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=lambda c: c[0])
def test_connection_refused_is_one_line_with_the_dsn_masked(
    tmp_path: Path, command: list[str]
) -> None:
    path = write(tmp_path, base_config(tmp_path))
    line = assert_one_line_exit_2(invoke([*command, "--config", str(path)]))
    assert "password=***" in line
    assert "refused" in line


@pytest.mark.parametrize("command", DSN_COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize(
    "dsn",
    [
        f"host=127.0.0.1 password={SECRET} more",
        f"postgresql://u:{SECRET} x@127.0.0.1/db",
        f"host=127.0.0.1 port={CLOSED_PORT} password={SECRET}",
    ],
)
def test_dsn_options_are_one_line_without_the_password(command: list[str], dsn: str) -> None:
    assert_one_line_exit_2(invoke([*command, dsn]))


# -- the property: random documents and DSNs, every subcommand -------------------------

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
_documents = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_SETTINGS = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
_KEYS = ["source", "destinations", "dsn", "tables", "sink", "type", "name", "http", "state"]
_DSN_PARTS = [
    "postgresql://", "postgres://", "u", ":", SECRET, "@", "127.0.0.1", f":{CLOSED_PORT}", "/db",
    "?", "&", "password=", "host=127.0.0.1 ", "port=", str(CLOSED_PORT), "user=u ", "dbname=",
    "sslmode=", "require", "connect_timeout=1 ", "service=", "options=", "'", "\\", " ", "=",
    "%", "%20", "%zz", "#", "\n", "\x00", "é",
]  # fmt: skip
_dsns = st.lists(st.sampled_from(_DSN_PARTS) | st.text(max_size=4), max_size=12).map("".join)


def _mutated(tmp: Path) -> st.SearchStrategy[Any]:
    """A valid config with one value (at any depth) replaced by random data."""

    def mutate(data: tuple[list[str], Any]) -> Any:
        path, value = data
        config: Any = copy.deepcopy(base_config(tmp))
        node = config
        for key in path[:-1]:
            child = node.get(key) if isinstance(node, dict) else None
            if not isinstance(child, dict):
                break
            node = child
        if isinstance(node, dict):
            node[path[-1]] = value
        return config

    paths = st.lists(st.sampled_from(_KEYS), min_size=1, max_size=3)
    return st.tuples(paths, _documents).map(mutate)


def _secret_may_show(dsn: str) -> bool:
    """Whether printing ``dsn`` masked may legitimately show SECRET (as a user, host ...)."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return False  # nothing of an unparsable DSN may be shown
    return any(SECRET in str(v) for k, v in params.items() if k != "password")


def _documents_for(tmp: Path) -> st.SearchStrategy[bytes]:
    as_yaml = (_documents | _mutated(tmp)).map(lambda d: yaml.safe_dump(d).encode())
    raw = st.binary(max_size=64) | st.text(max_size=64).map(str.encode)
    return as_yaml | raw


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=lambda c: c[0])
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_random_documents_are_exit_2_in_one_line(
    tmp_path: Path, command: list[str], data: st.DataObject
) -> None:
    document = data.draw(_documents_for(tmp_path))
    path = write(tmp_path, document)
    assert_one_line_exit_2(invoke([*command, "--config", str(path)]), secret=None)


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=lambda c: c[0])
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(dsn=_dsns)
def test_random_dsns_in_config_are_exit_2_in_one_line(
    tmp_path: Path, command: list[str], dsn: str
) -> None:
    path = write(tmp_path, with_source(tmp_path, dsn=dsn))
    secret = None if _secret_may_show(dsn) else SECRET
    assert_one_line_exit_2(invoke([*command, "--config", str(path)]), secret=secret)


@pytest.mark.parametrize("command", DSN_COMMANDS, ids=lambda c: " ".join(c[:2]))
@settings(max_examples=50, deadline=None)
@given(dsn=_dsns.filter(lambda d: "\x00" not in d and d.strip() != ""))
def test_random_dsn_options_are_exit_2_in_one_line(command: list[str], dsn: str) -> None:
    secret = None if _secret_may_show(dsn) else SECRET
    assert_one_line_exit_2(invoke([*command, dsn]), secret=secret)
