"""Refresh: coalesce changed users, re-embed them in one micro-batch, recall, re-rank, publish.

Each message on streamrec.refresh lists the users of one partition whose profile changed in a batch;
a take() of many such messages is coalesced to distinct users, so a user with many events in a
burst is refreshed once. `version` is max(previous + 1, generated_at): strictly increasing per user,
also after a crash that lost the last version written.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import faust
import msgspec
import orjson

from agents.profile import load_profile
from app.runtime.counters import BatchCounts
from app.runtime.faust_app import StreamRec
from app.runtime.faust_fixes.batches import acked_only_when_done, in_partition_of
from app.store import ProfileSnapshot
from models.profile import UserProfile
from models.recommender import UserRequest
from schemas import topics
from schemas.events import RecItem, Recommendation

REFRESH_MESSAGES = 64  # refresh-topic messages per take(); each lists one profile batch's users
MAX_SHOWN = 100  # recently shown items remembered per user (down-weighted in the next lists)


def snapshot(profile: UserProfile, now_ms: int) -> ProfileSnapshot:
    """What the serving side reads about a user: scene, top interests, the whole profile as JSON."""
    interests = {c: round(w, 6) for c, w in profile.top_categories(10)}
    return ProfileSnapshot.build(user_id=profile.user_id, scene=profile.scene, interests=interests,
                                 updated_at=now_ms, payload=profile.to_dict())


def register(sr: StreamRec) -> None:
    recommendations = sr.topics[topics.RECOMMENDATIONS]
    settings = sr.settings

    @sr.app.agent(sr.topics[topics.REFRESH], name="streamrec.agents.refresh")
    async def refresh(stream):
        async for batch in stream.take_events(REFRESH_MESSAGES, settings.refresh_within_s):
            with acked_only_when_done(batch):
                anchor = {}
                for event in batch:
                    for user_id in orjson.loads(event.value):
                        anchor[user_id] = event
                users = [u for u in anchor if u.encode() in sr.profiles]  # forgotten users have no profile
                # One message lists a whole profile batch, so a take() can hold thousands of users: refresh
                # them in bounded micro-batches and let the other agents run in between.
                for start in range(0, len(users), settings.refresh_batch):
                    await refresh_users(sr, users[start:start + settings.refresh_batch], anchor, recommendations)
                    await asyncio.sleep(0)


async def refresh_users(sr: StreamRec, users: list[str], anchor: dict, recommendations: faust.TopicT) -> None:
    """Encode, recall and re-rank one micro-batch of users; publish, remember and store their lists."""
    states = {u: orjson.loads(sr.recstate.get(u.encode()) or b"{}") for u in users}
    requests = [UserRequest(load_profile(sr, u), frozenset(states[u].get("shown", ()))) for u in users]
    recommender = sr.services.recommender
    # On the loop, not in a thread: the profile agent mutates Trending between awaits, and a
    # thread reading it meanwhile saw a dict change size mid-iteration.
    results = recommender.recommend(requests, int(time.time() * 1000))
    generated_at = int(time.time() * 1000)
    counts = BatchCounts("refresh")
    sent, records = [], []
    for request, result in zip(requests, results, strict=True):
        user_id, state = result.user_id, states[result.user_id]
        version = max(int(state.get("version", 0)) + 1, generated_at)
        record = Recommendation(
            rec_id=uuid.uuid4().hex, user_id=user_id, version=version, generated_at=generated_at,
            source_ts=request.profile.clock_ms, scene=result.scene, model_version=recommender.model_version,
            items=[RecItem(item_id=r.item_id, score=round(float(r.score), 6), reason=r.reason)
                   for r in result.items])
        listed = {r.item_id for r in result.items}
        shown = [r.item_id for r in result.items] + [i for i in state.get("shown", []) if i not in listed]
        with in_partition_of(anchor[user_id]):
            sr.recstate[user_id.encode()] = orjson.dumps(
                {"version": version, "rec_id": record.rec_id, "shown": shown[:MAX_SHOWN],
                 "generated_at": generated_at, "source_ts": record.source_ts})
        counts.add(anchor[user_id], "published")
        if result.fallback:
            counts.add(anchor[user_id], "fallback")
        records.append(record)
        sent.append(await recommendations.send(key=user_id.encode(), value=msgspec.json.encode(record)))
    counts.flush(sr)
    store = await sr.store()
    await store.put_recommendations(records)
    await store.put_profiles([snapshot(r.profile, generated_at) for r in requests])
    await asyncio.gather(*sent)
