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

from app import topics
from app.counters import BatchCounts
from app.faust_app import StreamRec, in_partition_of
from models.profile import UserProfile, apply_event, new_profile
from schemas.events import UserEvent

_decode = msgspec.json.Decoder(UserEvent).decode


def load_profile(sr: StreamRec, user_id: str) -> UserProfile:
    raw = sr.profiles.get(user_id.encode())
    return UserProfile.from_dict(orjson.loads(raw)) if raw else new_profile(user_id)


def register(sr: StreamRec) -> None:
    refresh_topic = sr.topics[topics.REFRESH]
    metrics_topic = sr.topics[topics.METRICS]
    settings = sr.settings

    @sr.app.agent(sr.topics[topics.EVENTS], name="streamrec.agents.profile")
    async def profile(stream):
        services = sr.services
        async for batch in stream.take_events(settings.ingest_batch, settings.batch_within_s):
            by_user = defaultdict(list)
            for event in batch:
                by_user[event.key.decode()].append(event)
            counts = BatchCounts("profile")
            to_refresh: dict[int, list[str]] = defaultdict(list)
            switches = []
            for user_id, events in by_user.items():
                state = load_profile(sr, user_id)
                for event in events:
                    record = _decode(event.value)
                    applied = apply_event(state, record, services.params, services.scene_model)
                    if applied.duplicate:
                        counts.add(event, "duplicates")
                        continue
                    counts.add(event, "accepted")
                    services.trending.observe_event(record)
                    if applied.scene_switch is not None:
                        switches.append(applied.scene_switch)
                with in_partition_of(events[-1]):
                    sr.profiles[user_id.encode()] = orjson.dumps(state.to_dict())
                to_refresh[events[-1].message.partition].append(user_id)
            counts.flush(sr)
            sent = [await refresh_topic.send(key=b"users", value=orjson.dumps(users), partition=partition)
                    for partition, users in to_refresh.items()]
            for switch in switches:
                value = orjson.dumps({"metric": "scene_switch", **dataclasses.asdict(switch)})
                sent.append(await metrics_topic.send(key=b"scene_switch", value=value))
            await asyncio.gather(*sent)
