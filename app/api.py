"""Serving API for apps that do not speak Kafka: read a user's latest list, post events, OpenAPI.

Served by every worker (beside /healthz /readyz /metrics) and by `streamrec serve` alone (store and
producer, no Faust). POST /events validates with the very code ingest uses (`decode_tagged`), produces
accepted events with acks=all keyed as the frontend would, and answers per event; the stream's
dedupe by event_id still applies downstream, so a client may retry a whole batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer

from app import topics
from app.store import Store
from schemas.events import CatalogItem
from schemas.validation import Limits, Rejection, decode_tagged, encode_event, event_type

MAX_EVENTS = 1_000  # per POST /events; the body is also bounded by web.MAX_BODY_BYTES
_MAX_ID = 256

StoreGetter = Callable[[], Store | None]
ProducerGetter = Callable[[], Awaitable[AIOKafkaProducer]]


def _error(status: int, error: str, detail: str) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status)


def valid_user_id(user_id: str) -> bool:
    return 0 < len(user_id) <= _MAX_ID and user_id.isprintable() and user_id.strip() == user_id


def api_routes(store: StoreGetter, producer: ProducerGetter, limits: Limits) -> list[web.RouteDef]:
    async def recommendations(request: web.Request) -> web.Response:
        user_id = request.match_info["user_id"]
        if not valid_user_id(user_id):
            return _error(400, "invalid_user_id", f"user ids are 1-{_MAX_ID} printable characters, no "
                                                  "leading or trailing spaces")
        current = store()
        if current is None:
            return _error(503, "not_ready", "the store is not open yet")
        record = await current.latest_recommendation(user_id)
        if record is None:
            return _error(404, "not_found", f"no recommendations for user {user_id!r} (unknown user, or no "
                                            "list published yet)")
        return web.Response(body=msgspec.json.encode(record), content_type="application/json")

    async def post_events(request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except web.HTTPRequestEntityTooLarge:
            raise
        except orjson.JSONDecodeError as exc:
            return _error(400, "invalid_json", str(exc)[:160])
        events = body.get("events") if isinstance(body, dict) else body
        if not isinstance(events, list) or not events:
            return _error(400, "invalid_body", 'expected a non-empty JSON array of events or {"events": [...]}')
        if len(events) > MAX_EVENTS:
            return _error(413, "too_many_events", f"at most {MAX_EVENTS} events per request")
        now_ms = int(time.time() * 1000)
        results: list[dict[str, Any]] = []
        sends = []
        kafka = await producer()
        for index, item in enumerate(events):
            result = decode_tagged(orjson.dumps(item), limits, now_ms)
            if isinstance(result, Rejection):
                results.append({"index": index, "status": "rejected", "reason": str(result.reason),
                                "detail": result.detail})
                continue
            key = result.item_id if isinstance(result, CatalogItem) else result.user_id
            topic = topics.TOPIC_BY_TYPE[event_type(result)]
            sends.append((index, await kafka.send(topic, encode_event(result), key=key.encode())))
            results.append({"index": index, "status": "accepted", "topic": topic,
                            "event_id": getattr(result, "event_id", None)})
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
                await producer.start()
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


def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "StreamRec serving API", "version": "1"},
    "paths": {
        "/users/{user_id}/recommendations": {"get": {
            "summary": "The user's latest recommendation list",
            "parameters": [{"name": "user_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "latest list", **_json(_REC)},
                          "400": {"description": "malformed user id", **_json(_ERROR)},
                          "404": {"description": "no list for this user", **_json(_ERROR)}}}},
        "/events": {"post": {
            "summary": "Publish a batch of events (the topic schema plus `type`: click|browse|purchase|catalog)",
            "requestBody": {"required": True, **_json({"type": "array", "maxItems": MAX_EVENTS,
                                                       "items": {"type": "object"}})},
            "responses": {"200": {"description": "per-event results", **_json({"type": "object", "properties": {
                "accepted": {"type": "integer"}, "rejected": {"type": "integer"},
                "results": {"type": "array", "items": {"type": "object", "properties": {
                    "index": {"type": "integer"}, "status": {"type": "string",
                                                             "enum": ["accepted", "rejected", "failed"]},
                    "reason": {"type": "string"}, "detail": {"type": "string"}}}}}})},
                "400": {"description": "not a JSON array of events", **_json(_ERROR)},
                "413": {"description": "body or batch too large"}}}},
        "/healthz": {"get": {"summary": "liveness", "responses": {"200": {"description": "alive"}}}},
        "/readyz": {"get": {"summary": "ready: partitions assigned, tables recovered, model loaded",
                            "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
    },
}
