"""Ingest: validate the three input topics, dead-letter what is bad, merge the rest keyed by user_id.

Thin by design: validation lives in schemas/validation.py, dead letters in app/runtime/deadletter.py.
A valid event is decoded once into its record and encoded once onto streamrec.events.
"""

from __future__ import annotations

import asyncio
import time

from app.runtime.counters import BatchCounts, OffsetRanges, counted_offsets
from app.runtime.deadletter import dead_letter
from app.runtime.faust_app import StreamRec
from app.runtime.faust_fixes.batches import acked_only_when_done
from app.runtime.ledger import SOURCE_HEADER, source_id
from schemas import topics
from schemas.validation import Rejection, decode_event, encode_event


def register(runtime: StreamRec) -> None:
    events_topic = runtime.topics[topics.EVENTS]
    deadletter = runtime.topics[topics.DEADLETTER]
    settings = runtime.settings

    @runtime.app.agent(runtime.inputs, name="streamrec.agents.ingest")
    async def ingest(stream):
        limits = runtime.loaded_services().limits
        async for batch in stream.take_events(settings.ingest_batch, settings.batch_within_s):
            with acked_only_when_done(batch):
                now_ms = int(time.time() * 1000)
                counts = BatchCounts("ingest")
                counted: dict[int, dict[str, OffsetRanges]] = {}
                sent = []
                for event in batch:
                    message = event.message
                    if message.partition not in counted:
                        counted[message.partition] = counted_offsets(runtime, "ingest", message.partition)
                    seen = counted[message.partition].get(message.topic)
                    # redelivered after a crash, already counted: sent again (at-least-once), not recounted
                    count = counts.first_count(event, message.topic, message.offset, seen)
                    if count:
                        counts.add(event, "consumed")
                    result = decode_event(message.value, message.topic, limits, now_ms)
                    if isinstance(result, Rejection):
                        if count:
                            counts.add(event, "deadlettered")
                        sent.append(await dead_letter(deadletter, message, result, settings.max_message_bytes))
                    else:
                        if count:
                            counts.add(event, "forwarded")
                        source = source_id(message.topic, message.partition, message.offset)
                        sent.append(await events_topic.send(key=result.user_id.encode(), value=encode_event(result),
                                                            headers=[(SOURCE_HEADER, source.encode())]))
                counts.flush(runtime)
                await asyncio.gather(*sent)  # delivered before the batch's offsets are acknowledged
