"""Feedback: attribute interactions to served lists and publish windowed quality metrics on reco.metrics.

Thin wiring around models/feedback.py. It reads reco.recommendations and streamrec.events together:
both are keyed by user_id and co-partitioned, so one user's lists and events meet in one task, and the
user's attribution state is one row of the `feedback` table (one write per user per batch). The
window aggregates live in this agent's runtime (`runtime.extras["feedback"]`), not in a table: a crash
loses the open windows' partial sums, never a user's attribution state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import defaultdict, deque

import msgspec
import orjson

from app.runtime.faust_app import StreamRec
from app.runtime.faust_fixes.batches import acked_only_when_done, in_partition_of
from app.serving import experiments, lag
from models.feedback import FeedbackParams, FeedbackWindows, UserFeedback, WindowMetrics
from schemas import topics
from schemas.events import Recommendation, UserEvent

CLOSE_EVERY_S = 2.0
RECENT_WINDOWS = 2_000  # closed window records kept for the dashboard
RECENT_FRESHNESS = 20_000

_decode_rec = msgspec.json.Decoder(Recommendation).decode
_decode_event = msgspec.json.Decoder(UserEvent).decode


def _catalog_size(runtime: StreamRec) -> int:
    model = runtime.services.recommender.model if runtime.services else None
    return len(model.vectors.ids) if model is not None else 0


def _category_of(runtime: StreamRec, item_id: str) -> str | None:
    model = runtime.services.recommender.model if runtime.services else None
    return model.vectors.categories.get(item_id) if model is not None else None


def _is_forget(raw: bytes | None) -> bool:
    try:
        doc = orjson.loads(raw or b"null")
    except orjson.JSONDecodeError:
        return False
    return isinstance(doc, dict) and doc.get("type") == "forget"


def register(runtime: StreamRec) -> None:
    metrics_topic = runtime.topics[topics.METRICS]
    settings = runtime.settings
    windows = FeedbackWindows(FeedbackParams(), category_of=lambda item: _category_of(runtime, item),
                              catalog_size=lambda: _catalog_size(runtime))
    recent: deque[WindowMetrics] = deque(maxlen=RECENT_WINDOWS)
    clock = {"last_arrival": time.monotonic()}
    runtime.extras["feedback"] = windows
    runtime.extras["feedback_recent"] = recent
    fresh: deque[tuple[float, float]] = deque(maxlen=RECENT_FRESHNESS)
    runtime.extras["freshness_recent"] = fresh  # (wall time seen, freshness ms) for the dashboard
    channel = runtime.app.topic(topics.RECOMMENDATIONS, topics.EVENTS, key_serializer="raw", value_serializer="raw",
                           partitions=settings.partitions)

    async def publish(closed: list[WindowMetrics]) -> None:
        if not closed:
            return
        ctr: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
        sent = []
        for w in closed:
            recent.append(w)
            sums = ctr[(w.scene, w.model_version)]
            sums[0] += w.lists
            sums[1] += w.clicks
            sums[2] += w.conversions
            sent.append(await metrics_topic.send(key=b"feedback", value=orjson.dumps(dataclasses.asdict(w))))
        for (scene, model_version), (lists, clicks, conversions) in ctr.items():
            if lists:
                lag.CTR.labels(scene, model_version).set(clicks / lists)
                lag.CONVERSION.labels(scene, model_version).set(conversions / lists)
        experiments.export(closed)  # per-arm counters of online experiments
        await asyncio.gather(*sent)

    def accuracy() -> float | None:
        return runtime.services.scene_model.metrics().accuracy if runtime.services else None

    @runtime.app.agent(channel, name="streamrec.agents.feedback")
    async def feedback(stream):
        async for batch in stream.take_events(settings.ingest_batch, settings.batch_within_s):
            with acked_only_when_done(batch):
                by_user = defaultdict(list)
                for event in batch:
                    by_user[event.key.decode()].append(event)
                now = time.time()
                for user_id, events in by_user.items():
                    key = user_id.encode()
                    raw = runtime.feedback.get(key)
                    state = UserFeedback.from_dict(orjson.loads(raw)) if raw else UserFeedback()
                    forget = False
                    for event in events:
                        message = event.message
                        lag.PROCESSING.labels(message.topic).observe(max(0.0, now - (message.timestamp or now)))
                        if message.topic == topics.RECOMMENDATIONS:
                            if not message.value:
                                continue  # a tombstone (erased user)
                            try:
                                record = _decode_rec(message.value)
                            except msgspec.DecodeError:  # not ours to judge: never stop the stage on it
                                continue
                            if windows.on_list(state, record):
                                lag.RECOMMENDATIONS.labels(record.scene).inc()
                                freshness_ms = record.generated_at - record.source_ts
                                lag.FRESHNESS.observe(max(0.0, freshness_ms / 1000.0))
                                fresh.append((now, float(freshness_ms)))
                            continue
                        try:
                            windows.on_event(state, _decode_event(message.value))
                        except msgspec.DecodeError:  # not a user interaction (e.g. an erase request)
                            forget = forget or _is_forget(message.value)
                    with in_partition_of(events[-1]):
                        if forget:
                            runtime.feedback.pop(key, None)
                        else:
                            runtime.feedback[key] = orjson.dumps(state.to_dict())
                clock["last_arrival"] = time.monotonic()
                await publish(windows.close(scene_model_accuracy=accuracy()))

    @runtime.app.timer(CLOSE_EVERY_S)
    async def close_idle_windows() -> None:
        idle_ms = int((time.monotonic() - clock["last_arrival"]) * 1000)
        await publish(windows.close(idle_ms=idle_ms, scene_model_accuracy=accuracy()))
