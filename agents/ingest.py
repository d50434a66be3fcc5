"""Ingest: validate the three input topics, dead-letter what is bad, merge the rest keyed by user_id.

Thin by design: validation lives in schemas/validation.py. A rejected message goes to
reco.deadletter byte-exact (the value is the original bytes) with the reason in its headers.
"""

from __future__ import annotations

import asyncio
import time

from app import topics
from app.counters import BatchCounts
from app.faust_app import StreamRec
from schemas.validation import Rejection, decode_event, encode_event


def deadletter_headers(reason: str, detail: str, topic: str, partition: int, offset: int) -> list:
    return [("reason", reason.encode()), ("detail", detail.encode()[:512]), ("source_topic", topic.encode()),
            ("source_partition", str(partition).encode()), ("source_offset", str(offset).encode())]


def register(sr: StreamRec) -> None:
    events_topic = sr.topics[topics.EVENTS]
    deadletter = sr.topics[topics.DEADLETTER]
    settings = sr.settings

    @sr.app.agent(sr.inputs, name="streamrec.agents.ingest")
    async def ingest(stream):
        limits = sr.services.limits
        async for batch in stream.take_events(settings.ingest_batch, settings.batch_within_s):
            now_ms = int(time.time() * 1000)
            counts = BatchCounts("ingest")
            sent = []
            for event in batch:
                message = event.message
                counts.add(event, "consumed")
                result = decode_event(message.value, message.topic, limits, now_ms)
                if isinstance(result, Rejection):
                    counts.add(event, "deadlettered")
                    headers = deadletter_headers(result.reason, result.detail, message.topic,
                                                 message.partition, message.offset)
                    sent.append(await deadletter.send(key=message.topic.encode(), value=message.value or b"",
                                                      headers=headers))
                else:
                    counts.add(event, "forwarded")
                    sent.append(await events_topic.send(key=result.user_id.encode(), value=encode_event(result)))
            counts.flush(sr)
            await asyncio.gather(*sent)  # delivered before the batch's offsets are acknowledged
