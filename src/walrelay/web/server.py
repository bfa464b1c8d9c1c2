"""The engine's HTTP server (aiohttp.web).

=================  ======  ==================================================
path               auth    what
=================  ======  ==================================================
``/healthz``       open    200 while streaming, 503 otherwise; JSON body
``/metrics``       open    Prometheus text (:mod:`walrelay.monitor.metrics`)
``/api/status``    token   the status document (JSON)
``/api/history``   token   the charts' last 20 minutes (:mod:`walrelay.web.history`)
``/``              token   the dashboard; without a session, the login form
``/login``         open    POST: form field ``token`` -> session cookie
``/logout``        open    POST: drops the session cookie
``/static/...``    token   the dashboard's script (``style.css`` is open:
                           the login form needs it; it holds no data)
=================  ======  ==================================================

See :mod:`walrelay.web.auth` for where the token comes from. The dashboard is
three static files in the package (HTML, JS, CSS; no build step, no CDN),
served with a Content-Security-Policy that allows nothing but this origin.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from importlib.resources import files
from typing import Any, Protocol

import orjson
from aiohttp import web

from walrelay.web.auth import COOKIE, session_value, token_matches
from walrelay.web.history import History

__all__ = ["HttpServer", "StatusSource"]


class StatusSource(Protocol):
    """What the server shows (walrelay.monitor.service.Services provides it)."""

    def health(self) -> tuple[bool, dict[str, Any]]: ...
    def status(self) -> dict[str, Any]: ...
    def metrics(self) -> tuple[bytes, str]:
        """The Prometheus exposition text and its content type."""
        ...


log = logging.getLogger("walrelay.web")

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_STATIC = {
    "dashboard.js": "text/javascript",
    "style.css": "text/css",
}
_OPEN_STATIC = {"style.css"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _asset(name: str) -> bytes:
    return files("walrelay.web").joinpath("static", name).read_bytes()


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type="application/json",
    )


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    resp = await handler(request)
    resp.headers.setdefault("Content-Security-Policy", _CSP)
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "no-referrer")
    resp.headers.setdefault("X-Frame-Options", "DENY")
    resp.headers.setdefault("Cache-Control", "no-store")
    return resp


class HttpServer:
    """Serves one engine's :class:`~walrelay.monitor.service.Services`."""

    def __init__(
        self,
        services: StatusSource,
        *,
        host: str,
        port: int,
        token: str,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.services = services
        self.host = host
        self.port = port
        self._ssl = ssl_context
        self._token = token
        self._session = session_value(token)
        self._runner: web.AppRunner | None = None
        self.history = History(services.status)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_headers], client_max_size=64 * 1024)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/api/history", self._history)
        app.router.add_get("/", self._index)
        app.router.add_post("/login", self._login)
        app.router.add_post("/logout", self._logout)
        app.router.add_get("/static/{name}", self._static)
        return app

    async def start(self) -> None:
        """Bind and serve; raises OSError when the address is taken."""
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(
                runner, self.host, self.port, reuse_address=True, ssl_context=self._ssl
            )
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.history.start()
        if self.port == 0:
            for addr in runner.addresses:
                if isinstance(addr, tuple):
                    self.port = int(addr[1])
                    break

    async def stop(self) -> None:
        await self.history.stop()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- auth -------------------------------------------------------------------

    def authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            return token_matches(header[7:].strip(), self._token)
        cookie = request.cookies.get(COOKIE)
        return cookie is not None and token_matches(cookie, self._session)

    def _unauthorized(self) -> web.Response:
        resp = _json({"error": "unauthorized: send Authorization: Bearer <token>"}, 401)
        resp.headers["WWW-Authenticate"] = 'Bearer realm="walrelay"'
        return resp

    # -- handlers ---------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        ok, body = self.services.health()
        return _json(body, 200 if ok else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.services.metrics()
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = content_type
        return resp

    async def _status(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return self._unauthorized()
        return _json(self.services.status())

    async def _history(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return self._unauthorized()
        return _json(self.history.to_dict())

    async def _index(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            page = _asset("login.html")
            if "denied" in request.query:
                page = page.replace(
                    b"<!--MESSAGE-->", b'<p class="denied" id="denied">Wrong token.</p>'
                )
            return web.Response(body=page, status=401, content_type="text/html")
        return web.Response(body=_asset("dashboard.html"), content_type="text/html")

    async def _login(self, request: web.Request) -> web.Response:
        form = await request.post()
        given = form.get("token")
        if not isinstance(given, str) or not token_matches(given.strip(), self._token):
            log.warning("http: dashboard login with a wrong token from %s", request.remote)
            raise web.HTTPSeeOther("/?denied=1")
        resp = web.HTTPSeeOther("/")
        resp.set_cookie(COOKIE, self._session, httponly=True, samesite="Strict", path="/")
        raise resp

    async def _logout(self, request: web.Request) -> web.Response:
        resp = web.HTTPSeeOther("/")
        resp.del_cookie(COOKIE, path="/")
        raise resp

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        content_type = _STATIC.get(name)
        if content_type is None:
            raise web.HTTPNotFound()
        if name not in _OPEN_STATIC and not self.authorized(request):
            return self._unauthorized()
        return web.Response(body=_asset(name), content_type=content_type)
