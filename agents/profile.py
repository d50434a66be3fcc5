"""Profile: fold each user's events into their profile (decay, scene), one table write per user per batch.

The dedupe memory (recent event ids) lives inside the profile value, so a single changelog write
covers both: a crash can never persist one without the other. Users touched by a batch are handed to
the refresh agent as one message per partition, not one per event.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import defaultdict

import msgspec
import orjson
from faust.types import EventT

from app.runtime.counters import BatchCounts, OffsetRanges, counted_offsets
from app.runtime.faust_app import StreamRec
from app.runtime.faust_fixes.batches import acked_only_when_done, in_partition_of
from app.runtime.ledger import LEDGER_KEY, SOURCE_HEADER, bounded, classify, header
from models.profile import UserProfile, apply_event, new_profile
from schemas import topics
from schemas.events import Forget, UserEvent

_decode = msgspec.json.Decoder(UserEvent | Forget).decode


def load_profile(sr: StreamRec, user_id: str) -> UserProfile:
    raw = sr.profiles.get(user_id.encode())
    return UserProfile.from_dict(orjson.loads(raw)) if raw else new_profile(user_id)


async def forget(sr: StreamRec, user_id: str, event: EventT) -> None:
    """Erase a user's rows (changelog tombstones), store rows, and compacted recommendation lists."""
    key = user_id.encode()
    with in_partition_of(event):
        for table in (sr.profiles, sr.recstate):
            if key in table:
                del table[key]
    await (await sr.store()).forget_user(user_id)
    await sr.topics[topics.RECOMMENDATIONS].send(key=key, value=None)


def register(sr: StreamRec) -> None:
    refresh_topic = sr.topics[topics.REFRESH]
    metrics_topic = sr.topics[topics.METRICS]
    settings = sr.settings

    @sr.app.agent(sr.topics[topics.EVENTS], name="streamrec.agents.profile")
    async def profile(stream):
        services = sr.services
        async for batch in stream.take_events(settings.ingest_batch, settings.batch_within_s):
            with acked_only_when_done(batch):
                by_user = defaultdict(list)
                for event in batch:
                    by_user[event.key.decode()].append(event)
                counts = BatchCounts("profile")
                to_refresh: dict[int, list[str]] = defaultdict(list)
                switches = []
                counted: dict[int, OffsetRanges] = {}
                for user_id, events in by_user.items():
                    raw = orjson.loads(sr.profiles.get(user_id.encode()) or b"null")
                    state = UserProfile.from_dict(raw) if raw else new_profile(user_id)
                    first_seen: dict[str, list] = dict(raw.get(LEDGER_KEY, {})) if raw else {}
                    forgotten = False
                    for event in events:
                        message = event.message
                        record = _decode(event.value)
                        if isinstance(record, Forget):
                            state, forgotten, first_seen = new_profile(user_id), True, {}
                            continue
                        forgotten = False
                        if message.partition not in counted:
                            counted[message.partition] = (counted_offsets(sr, "profile", message.partition)
                                                          .get("events", OffsetRanges()))
                        source = header(message.headers, SOURCE_HEADER)
                        applied = apply_event(state, record, services.params, services.scene_model)
                        if not applied.duplicate:
                            first_seen[record.event_id] = [source, message.offset]
                        if counts.first_count(event, "events", message.offset, counted[message.partition]):
                            counts.add(event, classify(not applied.duplicate, first_seen.get(record.event_id),
                                                       source, message.offset))
                        if applied.duplicate:
                            continue
                        services.trending.observe_event(record)
                        if applied.scene_switch is not None:
                            switches.append(applied.scene_switch)
                    if forgotten:
                        await forget(sr, user_id, events[-1])
                        continue
                    with in_partition_of(events[-1]):
                        value = state.to_dict()
                        value[LEDGER_KEY] = bounded(first_seen, state.recent_event_ids)  # same write as the ring
                        sr.profiles[user_id.encode()] = orjson.dumps(value)
                    to_refresh[events[-1].message.partition].append(user_id)
                counts.flush(sr)
                sent = [await refresh_topic.send(key=b"users", value=orjson.dumps(users), partition=partition)
                        for partition, users in to_refresh.items()]
                for switch in switches:
                    value = orjson.dumps({"metric": "scene_switch", **dataclasses.asdict(switch)})
                    sent.append(await metrics_topic.send(key=b"scene_switch", value=value))
                await asyncio.gather(*sent)
