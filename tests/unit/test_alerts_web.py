"""The HTTP side without an engine: where the token comes from, what needs it."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from walrelay.config import HttpConfig
from walrelay.errors import ConfigError
from walrelay.web.auth import default_token_file, resolve_token
from walrelay.web.server import HttpServer


def test_token_from_env_file_or_generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("WR_TOKEN", " tok-env \n")
    assert resolve_token(HttpConfig(token_env="WR_TOKEN"), "s", create=True) == (
        "tok-env",
        "$WR_TOKEN",
    )
    monkeypatch.delenv("WR_TOKEN")
    with pytest.raises(ConfigError, match="WR_TOKEN is not set"):
        resolve_token(HttpConfig(token_env="WR_TOKEN"), "s", create=True)
    f = tmp_path / "tok"
    f.write_text("from-file\n")
    f.chmod(0o600)  # a token file others can read is refused
    assert resolve_token(HttpConfig(token_file=str(f)), "s", create=False)[0] == "from-file"

    # Nothing configured: generated once, private, reused; status (create=False) reads it.
    cfg = HttpConfig(port=9999)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_token(cfg, "myslot", create=False)
    token, where = resolve_token(cfg, "myslot", create=True)
    path = default_token_file("myslot", 9999)
    assert where == str(path) and path.parent == tmp_path / "state" / "walrelay"
    assert len(token) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert resolve_token(cfg, "myslot", create=True)[0] == token
    assert resolve_token(cfg, "myslot", create=False)[0] == token


class StubServices:
    def health(self) -> tuple[bool, dict[str, Any]]:
        return False, {"status": "reconnecting"}

    def status(self) -> dict[str, Any]:
        return {"state": "reconnecting", "secret": "rows"}


async def test_token_required_except_healthz_login_and_css() -> None:
    server = HttpServer(StubServices(), host="127.0.0.1", port=0, token="s3cret")  # type: ignore[arg-type]
    await server.start()
    try:
        assert server.port != 0
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(f"{server.url}/healthz") as r:
                assert r.status == 503 and (await r.json())["status"] == "reconnecting"
            async with http.get(f"{server.url}/api/status") as r:
                assert r.status == 401
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
            async with http.get(
                f"{server.url}/api/status", headers={"Authorization": "Bearer wrong"}
            ) as r:
                assert r.status == 401
            async with http.get(
                f"{server.url}/api/status", headers={"Authorization": "Bearer s3cret"}
            ) as r:
                assert r.status == 200 and (await r.json())["secret"] == "rows"
                assert "default-src 'none'" in r.headers["Content-Security-Policy"]
            async with http.get(f"{server.url}/static/dashboard.js") as r:
                assert r.status == 401
            async with http.get(f"{server.url}/static/style.css") as r:
                assert r.status == 200
            async with http.get(f"{server.url}/static/../auth.py") as r:
                assert r.status == 404
            async with http.get(f"{server.url}/") as r:
                assert r.status == 401 and 'name="token"' in await r.text()
            # The login form: a wrong token is refused, the right one sets the cookie.
            async with http.post(f"{server.url}/login", data={"token": "nope"}) as r:
                assert r.status == 401 and "Wrong token" in await r.text()
            async with http.post(
                f"{server.url}/login", data={"token": "s3cret"}, allow_redirects=False
            ) as r:
                assert r.status == 303 and r.headers["Location"] == "/"
                set_cookie = r.headers["Set-Cookie"]
            assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
            assert "s3cret" not in set_cookie
            async with http.get(f"{server.url}/") as r:
                assert r.status == 200 and 'id="chart-throughput"' in await r.text()
            async with http.get(f"{server.url}/api/status") as r:
                assert r.status == 200
            async with http.post(f"{server.url}/logout") as r:
                assert r.status == 401
            async with http.get(f"{server.url}/api/status") as r:
                assert r.status == 401
    finally:
        await server.stop()
