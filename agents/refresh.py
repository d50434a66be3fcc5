"""Refresh: coalesce changed users, re-embed them in one micro-batch, recall, re-rank, publish.

Each message on streamrec.refresh lists the users of one partition whose profile changed in a batch;
a take() of many such messages is coalesced to distinct users, so a user with many events in a
burst is refreshed once. `version` is max(previous + 1, generated_at): strictly increasing per user,
also after a crash that lost the last version written.

Each profile row is read and decoded once; its bytes go to the store as the snapshot's payload as
they are, and each list is encoded once, the same bytes going to Kafka and to the store. The lists
feed the feedback stage (app/runtime/feedback.py) as records, before they are sent: the worker does
not read `reco.recommendations` back.

While an online experiment runs, the micro-batch is split by arm (a salted hash of the user id,
models/experiments.py) and each arm's users are encoded, recalled and ranked with that arm's model
version; their lists carry `experiment`, `arm` and the arm's `model_version`. A user who asked to be
forgotten (an opt-out marker in `recstate`) is served the default version, outside the experiment.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import faust
from faust.types import EventT

from app.runtime.counters import BatchCounts
from app.runtime.faust_app import StreamRec
from app.runtime.faust_fixes.batches import acked_only_when_done, in_partition_of
from app.runtime.records import RecState, decode_recstate, decode_users, encode_recstate
from app.store import ProfileSnapshot
from models.experiments import optout_key
from models.profile import UserProfile, decode_profile
from models.ranking import RankedList
from models.recommender import Recommender, UserRequest
from schemas import topics
from schemas.events import EncodedRecommendation, RecItem, Recommendation

REFRESH_MESSAGES = 64  # refresh-topic messages per take(); each lists one profile batch's users
MAX_SHOWN = 100  # recently shown items remembered per user (down-weighted in the next lists)


def snapshot(profile: UserProfile, payload: bytes, now_ms: int) -> ProfileSnapshot:
    """What the serving side reads about a user: scene, top interests, and the profile's table bytes."""
    interests = {c: round(w, 6) for c, w in profile.top_categories(10)}
    return ProfileSnapshot(user_id=profile.user_id, scene=profile.scene, interests=interests, updated_at=now_ms,
                           payload=payload)


def register(runtime: StreamRec) -> None:
    recommendations = runtime.topics[topics.RECOMMENDATIONS]
    settings = runtime.settings

    @runtime.app.agent(runtime.topics[topics.REFRESH], name="streamrec.agents.refresh")
    async def refresh(stream):
        await runtime.loaded_services().experiments_synced.wait()  # arms known before any list goes out
        async for batch in stream.take_events(REFRESH_MESSAGES, settings.refresh_within_s):
            with acked_only_when_done(batch):
                anchor = {}
                for event in batch:
                    for user_id in decode_users(event.value):
                        anchor[user_id] = event
                users = list(anchor)
                # One message lists a whole profile batch, so a take() can hold thousands of users: refresh
                # them in bounded micro-batches and let the other agents run in between.
                for start in range(0, len(users), settings.refresh_batch):
                    await refresh_users(runtime, users[start:start + settings.refresh_batch], anchor, recommendations)
                    await asyncio.sleep(0)


async def refresh_users(runtime: StreamRec, users: list[str], anchor: dict, recommendations: faust.TopicT) -> None:
    """Encode, recall and re-rank one micro-batch of users; publish, remember and store their lists, and
    feed them to the feedback stage."""
    # Read when the micro-batch starts: a user forgotten since has no row and gets no list.
    rows = {u: raw for u in users if (raw := runtime.profiles.get(u.encode()))}
    if not rows:
        return
    states = {u: decode_recstate(runtime.recstate.get(u.encode())) for u in rows}
    services = runtime.loaded_services()
    retired = services.unavailable  # the catalog's retired items: in no list, whatever brings them
    requests = [UserRequest(decode_profile(raw), frozenset(states[u].shown), retired) for u, raw in rows.items()]
    # Grouped by the model version that serves each user: one encoder call and one recall per group.
    experiment = services.experiment  # one experiment state for the whole micro-batch
    groups: dict[tuple[str | None, str | None], tuple[Recommender, list[UserRequest]]] = {}
    for request in requests:
        key: tuple[str | None, str | None] = (None, None)
        recommender = services.recommender
        if experiment is not None and runtime.recstate.get(optout_key(request.user_id)) is None:
            arm = experiment.arm_of(request.user_id)
            key, recommender = (experiment.name, arm), experiment.arms[arm]
        groups.setdefault(key, (recommender, []))[1].append(request)
    now_ms = int(time.time() * 1000)
    served: list[tuple[UserRequest, RankedList, str, str | None, str | None]] = []
    for (name, arm), (recommender, group) in groups.items():
        # On the loop, not in a thread: the profile agent mutates Trending between awaits, and a
        # thread reading it meanwhile saw a dict change size mid-iteration.
        results = recommender.recommend(group, now_ms)
        served += [(request, result, recommender.model_version, name, arm)
                   for request, result in zip(group, results, strict=True)]
    generated_at = int(time.time() * 1000)
    counts = BatchCounts("refresh")
    built: list[tuple[Recommendation, EventT]] = []
    for request, result, model_version, name, arm in served:
        user_id, state = result.user_id, states[result.user_id]
        version = max(state.version + 1, generated_at)
        record = Recommendation(
            rec_id=uuid.uuid4().hex, user_id=user_id, version=version, generated_at=generated_at,
            source_ts=request.profile.clock_ms, scene=result.scene, model_version=model_version,
            items=[RecItem(item_id=r.item_id, score=round(float(r.score), 6), reason=r.reason)
                   for r in result.items], experiment=name, arm=arm)
        listed = {r.item_id for r in result.items}
        shown = [r.item_id for r in result.items] + [i for i in state.shown if i not in listed]
        with in_partition_of(anchor[user_id]):
            runtime.recstate[user_id.encode()] = encode_recstate(
                RecState(version=version, rec_id=record.rec_id, shown=tuple(shown[:MAX_SHOWN]),
                         generated_at=generated_at, source_ts=record.source_ts))
        counts.add(anchor[user_id], "published")
        if result.fallback:
            counts.add(anchor[user_id], "fallback")
        built.append((record, anchor[user_id]))
    # Before the first await: a user's next event can only answer a list the feedback stage holds.
    new_lists = runtime.feedback_stage.on_lists(built)
    lists = [EncodedRecommendation.of(record) for record, _ in built]
    sent = [await recommendations.send(key=encoded.record.user_id.encode(), value=encoded.raw)
            for encoded in lists]
    counts.flush(runtime)
    store = await runtime.store()
    await store.put_recommendations(lists)
    await store.put_profiles([snapshot(r.profile, rows[r.profile.user_id], generated_at) for r in requests])
    await asyncio.gather(*sent)
    runtime.feedback_stage.published(new_lists)  # on Kafka: the list counter and freshness histogram
