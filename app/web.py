"""The worker's HTTP endpoints (aiohttp, bound to 127.0.0.1 by default): health, readiness, metrics.

/readyz is 200 only when the worker has its partitions, table recovery is done and a model is loaded
(or none exists yet to load): tests and orchestrators wait on it instead of sleeping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_000_000


def build_web_app(readiness: Callable[[], dict], extra_routes: list[web.RouteDef] | None = None) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        state = readiness()
        return web.json_response(state, status=200 if state.get("ready") else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics)])
    app.add_routes(extra_routes or [])
    return app


async def start_web(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    logger.info("HTTP on http://%s:%d (/healthz /readyz /metrics)", host, port)
    return runner
