"""The worker's HTTP endpoints (aiohttp, bound to 127.0.0.1 by default): health, readiness, metrics.

/readyz is 200 only when the worker has its partitions, table recovery is done and a model is loaded
(or none exists yet to load): tests and orchestrators wait on it instead of sleeping.

Every error is JSON, ``{"error": <code>, "detail": <what was wrong>}``, never a stack trace: one
middleware turns aiohttp's own errors (unknown route 404, wrong method 405, body over MAX_BODY_BYTES
413) and any unhandled exception (500, logged here) into that shape, and rejects a malformed
``{user_id}`` path segment with 400 before any route (API, dashboard, worker state) sees it.
"""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_000_000
MAX_USER_ID = 256  # characters
# /readyz as a metric, set at each scrape: Prometheus cannot call a probe, and the alert on a worker that
# is up but not ready (rebalancing, recovering) needs it (deploy/prometheus/alerts.yml).
READY = Gauge("streamrec_ready", "1 while /readyz answers 200, else 0 (set at scrape time)")
_ERROR_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large",
                415: "unsupported_media_type"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status, headers=headers)


def user_id_problem(user_id: str) -> str | None:
    """Why ``user_id`` is not acceptable from a client (None if it is): 1-MAX_USER_ID printable
    characters without leading or trailing whitespace."""
    if not user_id:
        return "the user id is empty"
    if len(user_id) > MAX_USER_ID:
        return f"the user id has {len(user_id)} characters, at most {MAX_USER_ID} are allowed"
    bad = next((ch for ch in user_id if not ch.isprintable()), None)
    if bad is not None:
        return (f"the user id contains the non-printable character U+{ord(bad):04X} "
                f"({unicodedata.category(bad)}); control and format characters are not allowed")
    if user_id.strip() != user_id:
        return "the user id has leading or trailing whitespace"
    return None


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    user_id = request.match_info.get("user_id")
    if user_id is not None and (problem := user_id_problem(user_id)) is not None:
        return error_response(400, "invalid_user_id", problem)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects and the like are not errors
            raise
        code = _ERROR_CODES.get(exc.status, "http_error")
        if exc.status == 404:
            detail = f"no route for {request.method} {request.path[:200]}"
        elif exc.status == 405:
            detail = f"{request.method} is not allowed here; allowed: {exc.headers.get('Allow', '')}"
        elif exc.status == 413:
            detail = f"the request body is over the limit of {request.client_max_size} bytes"
        else:
            detail = exc.text or exc.reason
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, code, detail, headers)
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("unhandled error on %s %s", request.method, request.path[:200])
        return error_response(500, "internal_error", "the server failed on this request (logged)")


class _ClientParseErrors(logging.Filter):
    """aiohttp's parser answers a request it cannot parse (request line over 8,190 bytes, bad header)
    with a plain-text 400 before any route or middleware runs, and logs it with a full traceback at
    ERROR. That is client input, not a server fault: keep one WARNING line, without the traceback and
    without the request's content (it may hold user ids)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 400) < 500:
            record.msg, record.args = "rejected a malformed HTTP request: %s (%d)", (type(exc).__name__, exc.code)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


_PARSE_ERRORS = _ClientParseErrors()


def build_web_app(readiness: Callable[[], dict], extra_routes: list[web.RouteDef] | None = None) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        state = readiness()
        return web.json_response(state, status=200 if state.get("ready") else 503)

    async def metrics(_: web.Request) -> web.Response:
        READY.set(1.0 if readiness().get("ready") else 0.0)
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_errors])
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics)])
    app.add_routes(extra_routes or [])
    return app


async def start_web(app: web.Application, host: str, port: int) -> web.AppRunner:
    logging.getLogger("aiohttp.server").addFilter(_PARSE_ERRORS)  # once: addFilter ignores a repeat
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    logger.info("HTTP on http://%s:%d (/healthz /readyz /metrics)", host, port)
    return runner
