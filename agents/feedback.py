"""Feedback: publish the feedback stage's closed windows on reco.metrics and as Prometheus gauges.

The stage itself (app/runtime/feedback.py) is fed by the profile and refresh agents from the batches
they already hold, so this module subscribes to no topic: it is a timer that closes the windows the
watermark has passed (advanced by idle wall time, so a quiet stream still closes them) and publishes
them. Windows close at most CLOSE_EVERY_S after their end + grace.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import defaultdict

import orjson

from app.runtime.faust_app import StreamRec
from app.serving import experiments, lag
from models.feedback import WindowMetrics
from schemas import topics

CLOSE_EVERY_S = 2.0


def register(runtime: StreamRec) -> None:
    metrics_topic = runtime.topics[topics.METRICS]
    stage = runtime.feedback_stage

    async def publish(closed: list[WindowMetrics]) -> None:
        if not closed:
            return
        ctr: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
        sent = []
        for w in closed:
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

    @runtime.app.timer(CLOSE_EVERY_S)
    async def close_idle_windows() -> None:
        await publish(stage.close())
