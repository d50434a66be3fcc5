"""Ingest: validate the three input topics, dead-letter what is bad, merge the rest keyed by user_id.

Thin by design: validation lives in schemas/validation.py. A rejected message goes to
reco.deadletter byte-exact (the value is the original bytes) with the reason in its headers.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

from app.runtime.counters import BatchCounts, OffsetRanges, counted_offsets
from app.runtime.faust_app import StreamRec
from app.runtime.faust_fixes.batches import acked_only_when_done
from app.runtime.ledger import SOURCE_HEADER, source_id
from schemas import topics
from schemas.validation import Rejection, decode_event, encode_event

DEADLETTER_PREFIX_BYTES = 64 * 1024


def deadletter_headers(reason: str, detail: str, topic: str, partition: int, offset: int) -> list:
    return [("reason", reason.encode()), ("detail", detail.encode()[:512]), ("source_topic", topic.encode()),
            ("source_partition", str(partition).encode()), ("source_offset", str(offset).encode())]


def deadletter_value(value: bytes | None, headers: list, max_bytes: int) -> bytes:
    """The dead-letter value: the input byte-exact, or for input over `max_bytes` its first
    DEADLETTER_PREFIX_BYTES with its size and SHA-256 in headers. Sending a larger value failed in
    the producer and crashed the agent, whose batch Faust then acked: the batch was lost (measured
    in tests/reliability/test_fuzz.py: 1,549 of ~4,000 messages)."""
    value = value or b""
    if len(value) <= max_bytes:
        return value
    headers += [("truncated_from", str(len(value)).encode()), ("sha256", hashlib.sha256(value).hexdigest().encode())]
    return value[:DEADLETTER_PREFIX_BYTES]


def register(sr: StreamRec) -> None:
    events_topic = sr.topics[topics.EVENTS]
    deadletter = sr.topics[topics.DEADLETTER]
    settings = sr.settings

    @sr.app.agent(sr.inputs, name="streamrec.agents.ingest")
    async def ingest(stream):
        limits = sr.services.limits
        async for batch in stream.take_events(settings.ingest_batch, settings.batch_within_s):
            with acked_only_when_done(batch):
                now_ms = int(time.time() * 1000)
                counts = BatchCounts("ingest")
                counted: dict[int, dict[str, OffsetRanges]] = {}
                sent = []
                for event in batch:
                    message = event.message
                    if message.partition not in counted:
                        counted[message.partition] = counted_offsets(sr, "ingest", message.partition)
                    seen = counted[message.partition].get(message.topic)
                    # redelivered after a crash, already counted: sent again (at-least-once), not recounted
                    count = counts.first_count(event, message.topic, message.offset, seen)
                    if count:
                        counts.add(event, "consumed")
                    result = decode_event(message.value, message.topic, limits, now_ms)
                    if isinstance(result, Rejection):
                        if count:
                            counts.add(event, "deadlettered")
                        headers = deadletter_headers(result.reason, result.detail, message.topic,
                                                     message.partition, message.offset)
                        value = deadletter_value(message.value, headers, settings.max_message_bytes)
                        sent.append(await deadletter.send(key=message.topic.encode(), value=value, headers=headers))
                    else:
                        if count:
                            counts.add(event, "forwarded")
                        source = source_id(message.topic, message.partition, message.offset)
                        sent.append(await events_topic.send(key=result.user_id.encode(), value=encode_event(result),
                                                            headers=[(SOURCE_HEADER, source.encode())]))
                counts.flush(sr)
                await asyncio.gather(*sent)  # delivered before the batch's offsets are acknowledged
