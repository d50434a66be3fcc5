"""Forgetting a user (privacy): the store at once, the stream state through the user's own partition.

The request travels on the internal events topic keyed by the user, so it is ordered after every
event of theirs already there and is handled by the task that owns their state: it deletes the
profile and recommendation-state rows (changelog tombstones), the store rows, and writes a tombstone
to the compacted reco.recommendations topic so compaction drops their lists too.
"""

from __future__ import annotations

import time

from app.runtime.kafka import producer, running
from app.runtime.settings import Settings
from app.store.cli import forget_user_store
from schemas import topics
from schemas.events import Forget
from schemas.validation import encode_event


async def request_forget(settings: Settings, user_id: str) -> None:
    async with running(producer(settings)) as kafka:  # reach Kafka before erasing anything
        await forget_user_store(user_id, settings)
        value = encode_event(Forget(user_id=user_id, ts=int(time.time() * 1000)))
        await kafka.send_and_wait(topics.EVENTS, value, key=user_id.encode())
