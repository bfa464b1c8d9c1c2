"""A fast webhook receiver for bench/brokers.py, run as its own process.

    python bench/webhook_receiver.py PORT

``POST /<path>`` reads the body, remembers the request's ``webhook-id`` under
``<path>`` and answers ``204``; ``GET /count/<path>`` answers how many distinct
ids ``<path>`` has received. No signature check and no access log: the
receiver should cost the sender under test as little as possible, and cost
walrelay and its reference the same.
"""

from __future__ import annotations

import sys
from collections import defaultdict

from aiohttp import web


def app() -> web.Application:
    seen: defaultdict[str, set[str]] = defaultdict(set)

    async def receive(request: web.Request) -> web.Response:
        await request.read()
        seen[request.match_info["path"]].add(request.headers.get("webhook-id", ""))
        return web.Response(status=204)

    async def count(request: web.Request) -> web.Response:
        return web.Response(text=str(len(seen[request.match_info["path"]])))

    application = web.Application()
    application.router.add_post("/{path}", receive)
    application.router.add_get("/count/{path}", count)
    return application


if __name__ == "__main__":
    web.run_app(app(), host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
