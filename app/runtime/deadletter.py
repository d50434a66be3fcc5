"""Dead letters: a rejected input goes to reco.deadletter byte-exact, with the reason in its headers.

Shared by every agent that validates input (ingest, catalog), so the dead-letter format is one.
"""

from __future__ import annotations

import hashlib
from typing import Any

import faust

from schemas.validation import Rejection

DEADLETTER_PREFIX_BYTES = 64 * 1024


def deadletter_headers(reason: str, detail: str, topic: str, partition: int, offset: int) -> list:
    return [("reason", reason.encode()), ("detail", detail.encode()[:512]), ("source_topic", topic.encode()),
            ("source_partition", str(partition).encode()), ("source_offset", str(offset).encode())]


def deadletter_value(value: bytes | None, headers: list, max_bytes: int) -> bytes:
    """The dead-letter value: the input byte-exact, or for input over `max_bytes` its first
    DEADLETTER_PREFIX_BYTES with its size and SHA-256 in headers, because the producer fails on a
    value that large and the batch was lost (docs/RELIABILITY.md, fault 5)."""
    value = value or b""
    if len(value) <= max_bytes:
        return value
    headers += [("truncated_from", str(len(value)).encode()), ("sha256", hashlib.sha256(value).hexdigest().encode())]
    return value[:DEADLETTER_PREFIX_BYTES]


async def dead_letter(topic: faust.TopicT, message: Any, rejection: Rejection, max_bytes: int) -> Any:
    """Send `message` (a Faust message) to the dead-letter `topic`, keyed by its source topic; returns the
    send's delivery future, for the batch to await before it is acknowledged."""
    headers = deadletter_headers(rejection.reason, rejection.detail, message.topic, message.partition,
                                 message.offset)
    value = deadletter_value(message.value, headers, max_bytes)
    return await topic.send(key=message.topic.encode(), value=value, headers=headers)
