"""Serving API for apps that do not speak Kafka: read a user's latest list, post events, OpenAPI.

Served by every worker (beside /healthz /readyz /metrics) and by `streamrec serve` alone (store and
producer, no Faust). POST /events validates with the very code ingest uses (`decode_tagged`), produces
accepted events with acks=all keyed as the frontend would, and answers per event; the stream's
dedupe by event_id still applies downstream, so a client may retry a whole batch.

Request errors are JSON ``{"error", "detail"}`` (app/serving/web.py's middleware also covers 404/405/413 and
malformed ``{user_id}`` path segments): a body that is not JSON is 400 ``invalid_json``, JSON that is
not a non-empty array of events (or ``{"events": [...]}``) is 400 ``invalid_body``, more than MAX_EVENTS
events is 413 ``too_many_events``; each event of a well-formed batch is accepted or rejected on its own
with the validation reason. Kafka unreachable is 503 ``kafka_unavailable``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer

from app.serving.web import MAX_BODY_BYTES, MAX_USER_ID, error_response
from app.store import Store
from schemas import topics
from schemas.events import CatalogItem
from schemas.validation import Limits, Rejection, decode_tagged, encode_event, event_type

logger = logging.getLogger(__name__)

MAX_EVENTS = 1_000  # per POST /events; the body is also bounded by web.MAX_BODY_BYTES

StoreGetter = Callable[[], Store | None]
ProducerGetter = Callable[[], Awaitable[AIOKafkaProducer]]
_error = error_response


def _json_kind(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def body_problem(body: object) -> str | None:
    """Why a parsed POST /events body is not a batch (None if it is one)."""
    if isinstance(body, dict):
        if "events" not in body:
            return 'expected a JSON array of events or {"events": [...]}; got an object without "events"'
        body = body["events"]
        if not isinstance(body, list):
            return f'"events" must be an array of event objects, got {_json_kind(body)}'
    elif not isinstance(body, list):
        return f'expected a JSON array of events or {{"events": [...]}}, got {_json_kind(body)}'
    if not body:
        return "the batch is empty: send at least one event"
    return None


def api_routes(store: StoreGetter, producer: ProducerGetter, limits: Limits) -> list[web.RouteDef]:
    async def recommendations(request: web.Request) -> web.Response:
        user_id = request.match_info["user_id"]  # checked by app/serving/web.py's middleware (400 if malformed)
        current = store()
        if current is None:
            return _error(503, "not_ready", "the store is not open yet")
        record = await current.latest_recommendation(user_id)
        if record is None:
            return _error(404, "not_found", f"no recommendations for user {user_id!r} (unknown user, or no "
                                            "list published yet)")
        return web.Response(body=msgspec.json.encode(record), content_type="application/json")

    async def post_events(request: web.Request) -> web.Response:
        raw = await request.read()  # over MAX_BODY_BYTES: 413, answered by app/serving/web.py's middleware
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return _error(400, "invalid_json", f"the body is not valid JSON: {str(exc)[:160]}")
        problem = body_problem(body)
        if problem is not None:
            return _error(400, "invalid_body", problem)
        events = body["events"] if isinstance(body, dict) else body
        if len(events) > MAX_EVENTS:
            return _error(413, "too_many_events", f"{len(events)} events in one request; at most {MAX_EVENTS}")
        now_ms = int(time.time() * 1000)
        results: list[dict[str, Any]] = []
        sends = []
        try:
            kafka = await producer()
        except Exception as exc:  # noqa: BLE001 - the client gets a clear 503, the log the cause
            logger.warning("POST /events: Kafka producer unavailable: %s", exc)
            return _error(503, "kafka_unavailable", "events cannot be published right now; retry later")
        for index, item in enumerate(events):
            result = decode_tagged(orjson.dumps(item), limits, now_ms)
            if isinstance(result, Rejection):
                results.append({"index": index, "status": "rejected", "reason": str(result.reason),
                                "detail": result.detail})
                continue
            key = result.item_id if isinstance(result, CatalogItem) else result.user_id
            topic = topics.TOPIC_BY_TYPE[event_type(result)]
            results.append({"index": index, "status": "accepted", "topic": topic,
                            "event_id": getattr(result, "event_id", None)})
            try:
                sends.append((index, await kafka.send(topic, encode_event(result), key=key.encode())))
            except Exception as exc:  # noqa: BLE001 - reported per event, the rest still count
                results[index] = {"index": index, "status": "failed", "reason": "produce_failed",
                                  "detail": str(exc)[:160]}
        for index, future in sends:
            try:
                await future  # acks=all: accepted means the broker has it
            except Exception as exc:  # noqa: BLE001 - reported per event, the rest still count
                results[index] = {"index": index, "status": "failed", "reason": "produce_failed",
                                  "detail": str(exc)[:160]}
        accepted = sum(r["status"] == "accepted" for r in results)
        return web.json_response({"accepted": accepted, "rejected": len(results) - accepted, "results": results})

    async def openapi(_: web.Request) -> web.Response:
        return web.json_response(OPENAPI)

    return [web.get("/users/{user_id}/recommendations", recommendations), web.post("/events", post_events),
            web.get("/openapi.json", openapi)]


class LazyProducer:
    """One acks=all producer, started on first use and shared by the requests of one process."""

    def __init__(self, make: Callable[[], AIOKafkaProducer]) -> None:
        self._make = make
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def __call__(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = self._make()
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()  # no half-started client left behind; the next call retries
                    raise
                self._producer = producer
        return self._producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


_ERROR = {"type": "object", "required": ["error", "detail"],
          "properties": {"error": {"type": "string"}, "detail": {"type": "string"}}}
_REC = {"type": "object", "required": ["rec_id", "user_id", "version", "generated_at", "source_ts", "scene",
                                       "model_version", "items"],
        "properties": {"rec_id": {"type": "string"}, "user_id": {"type": "string"},
                       "version": {"type": "integer", "description": "strictly increasing per user"},
                       "generated_at": {"type": "integer", "description": "epoch ms"},
                       "source_ts": {"type": "integer", "description": "ts of the newest event reflected"},
                       "scene": {"type": "string", "enum": ["browsing", "shopping", "post_purchase"]},
                       "model_version": {"type": "string"},
                       "items": {"type": "array", "items": {"type": "object", "properties": {
                           "item_id": {"type": "string"}, "score": {"type": "number"},
                           "reason": {"type": "string"}}}}}}

_BATCH = {"type": "array", "minItems": 1, "maxItems": MAX_EVENTS, "items": {"type": "object"}}


def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "StreamRec serving API", "version": "1"},
    "paths": {
        "/users/{user_id}/recommendations": {"get": {
            "summary": "The user's latest recommendation list",
            "parameters": [{"name": "user_id", "in": "path", "required": True,
                            "schema": {"type": "string", "minLength": 1, "maxLength": MAX_USER_ID,
                                       "description": "printable characters, no leading or trailing space"}}],
            "responses": {"200": {"description": "latest list", **_json(_REC)},
                          "400": {"description": "malformed user id", **_json(_ERROR)},
                          "404": {"description": "no list for this user", **_json(_ERROR)}}}},
        "/events": {"post": {
            "summary": "Publish a batch of events (the topic schema plus `type`: click|browse|purchase|catalog)",
            "requestBody": {"required": True, **_json({"oneOf": [
                _BATCH, {"type": "object", "required": ["events"], "properties": {"events": _BATCH}}]})},
            "responses": {"200": {"description": "per-event results", **_json({"type": "object", "properties": {
                "accepted": {"type": "integer"}, "rejected": {"type": "integer"},
                "results": {"type": "array", "items": {"type": "object", "properties": {
                    "index": {"type": "integer"}, "status": {"type": "string",
                                                             "enum": ["accepted", "rejected", "failed"]},
                    "reason": {"type": "string"}, "detail": {"type": "string"}}}}}})},
                "400": {"description": "invalid_json (not JSON) or invalid_body (not a non-empty array of "
                                       "events)", **_json(_ERROR)},
                "413": {"description": f"body_too_large (over {MAX_BODY_BYTES} bytes) or too_many_events",
                        **_json(_ERROR)},
                "503": {"description": "kafka_unavailable", **_json(_ERROR)}}}},
        "/healthz": {"get": {"summary": "liveness", "responses": {"200": {"description": "alive"}}}},
        "/readyz": {"get": {"summary": "ready: partitions assigned, tables recovered, model loaded",
                            "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
    },
}
