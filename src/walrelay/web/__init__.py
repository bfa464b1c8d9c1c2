"""The engine's HTTP side: /healthz, /metrics, /api/status and the dashboard."""

from walrelay.web.auth import resolve_token
from walrelay.web.server import HttpServer

__all__ = ["HttpServer", "resolve_token"]
