"""An API token file that others can read is refused with the chmod that fixes it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from walrelay.config import HttpConfig
from walrelay.errors import ConfigError
from walrelay.web.auth import resolve_token


def token_file(tmp_path: Path, mode: int) -> Path:
    path = tmp_path / "api.token"
    path.write_text("tok-123\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o666])
def test_a_token_file_readable_by_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = token_file(tmp_path, mode)
    for create in (True, False):
        with pytest.raises(ConfigError) as info:
            resolve_token(HttpConfig(token_file=str(path)), "slot", create=create)
        message = str(info.value)
        assert f"chmod 600 {path}" in message and f"{mode:04o}" in message
        assert "tok-123" not in message


def test_a_private_token_file_is_used(tmp_path: Path) -> None:
    path = token_file(tmp_path, 0o600)
    assert resolve_token(HttpConfig(token_file=str(path)), "slot", create=False) == (
        "tok-123",
        str(path),
    )


def test_a_generated_token_file_is_private_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    token, where = resolve_token(HttpConfig(port=9999), "s", create=True)
    assert os.stat(where).st_mode & 0o777 == 0o600
    assert resolve_token(HttpConfig(port=9999), "s", create=False) == (token, where)
