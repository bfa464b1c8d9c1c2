"""The public surface of ``walrelay``: pinned, resolvable, and cheap to import."""

from __future__ import annotations

import subprocess
import sys

import walrelay

EXPECTED = [
    "Config",
    "ConfigError",
    "DecodeError",
    "Engine",
    "Event",
    "PoisonEvent",
    "Sink",
    "SinkError",
    "SinkUnavailable",
    "SlotBusy",
    "SlotLost",
    "SourceSetupError",
    "UnknownRelation",
    "WalrelayError",
    "apublish",
    "load_config",
    "parse_config",
    "publish",
]


def test_all_is_pinned() -> None:
    assert sorted(walrelay.__all__) == EXPECTED
    assert len(set(walrelay.__all__)) == len(walrelay.__all__)


def test_every_export_resolves_into_walrelay() -> None:
    for name in walrelay.__all__:
        member = getattr(walrelay, name)
        assert member.__module__.startswith("walrelay"), (name, member.__module__)
        assert name in dir(walrelay)


def test_unknown_attribute_raises() -> None:
    try:
        walrelay.nope  # noqa: B018
    except AttributeError as e:
        assert "nope" in str(e)
    else:
        raise AssertionError("walrelay.nope resolved")


def test_import_is_cheap() -> None:
    code = (
        "import sys, walrelay\n"
        "heavy = [m for m in ('psycopg', 'aiohttp', 'pydantic') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert "psycopg" not in out.split(",")
    assert "aiohttp" not in out.split(",")
