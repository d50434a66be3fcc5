"""Profile: fold each user's events into their profile (decay, scene), one table write per user per batch.

The dedupe memory (recent event ids) lives inside the profile value, so a single changelog write
covers both: a crash can never persist one without the other. Each user's row is decoded once and
encoded once per batch (app/runtime/records.py). Users touched by a batch are handed to the refresh
agent as one message per partition, not one per event. Each user's newly accepted events also feed the
feedback stage (app/runtime/feedback.py) from this batch, so nothing reads `streamrec.events` twice.
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
from app.runtime.ledger import SOURCE_HEADER, bounded, classify, header
from app.runtime.records import ProfileRow, decode_row, encode_row, encode_users
from models.experiments import optout_key
from models.state import fold_event
from schemas import topics
from schemas.events import Forget, UserEvent

_decode = msgspec.json.Decoder(UserEvent | Forget).decode
OPTED_OUT = b'{"experiments": "opted out"}'


async def forget(runtime: StreamRec, user_id: str, event: EventT) -> None:
    """Erase a user's rows (changelog tombstones; the feedback row too), store rows, and compacted
    recommendation lists; the user leaves online experiments for good (a marker keyed by a digest of
    the id, models/experiments.py)."""
    key = user_id.encode()
    with in_partition_of(event):
        for table in (runtime.profiles, runtime.recstate):
            if key in table:
                del table[key]
        runtime.recstate[optout_key(user_id)] = OPTED_OUT
    runtime.feedback_stage.forget(user_id, event)
    await (await runtime.store()).forget_user(user_id)
    await runtime.topics[topics.RECOMMENDATIONS].send(key=key, value=None)


def register(runtime: StreamRec) -> None:
    refresh_topic = runtime.topics[topics.REFRESH]
    metrics_topic = runtime.topics[topics.METRICS]
    settings = runtime.settings

    @runtime.app.agent(runtime.topics[topics.EVENTS], name="streamrec.agents.profile")
    async def profile(stream):
        services = runtime.loaded_services()
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
                    key = user_id.encode()
                    row = decode_row(runtime.profiles.get(key), user_id)
                    forgotten = erased = False
                    accepted: list[tuple[UserEvent, EventT]] = []  # for the feedback stage
                    for event in events:
                        message = event.message
                        record = _decode(event.value)
                        if isinstance(record, Forget):
                            row, forgotten = ProfileRow(user_id=user_id), True
                            erased = True
                            accepted.clear()
                            continue
                        forgotten = False
                        if message.partition not in counted:
                            counted[message.partition] = (counted_offsets(runtime, "profile", message.partition)
                                                          .get("events", OffsetRanges()))
                        source = header(message.headers, SOURCE_HEADER)
                        applied = fold_event(row, record, services.params, services.scene_model, services.trending)
                        if not applied.duplicate:
                            row.ledger[record.event_id] = (source, message.offset)
                        if counts.first_count(event, "events", message.offset, counted[message.partition]):
                            counts.add(event, classify(not applied.duplicate, row.ledger.get(record.event_id),
                                                       source, message.offset))
                        if applied.duplicate:
                            continue
                        accepted.append((record, event))
                        if applied.scene_switch is not None:
                            switches.append(applied.scene_switch)
                    if forgotten:
                        await forget(runtime, user_id, events[-1])
                        continue
                    with in_partition_of(events[-1]):
                        row.ledger = bounded(row.ledger, row.recent_event_ids)  # same write as the ring
                        runtime.profiles[key] = encode_row(row)
                    runtime.feedback_stage.on_events(user_id, accepted, restart=erased)
                    to_refresh[events[-1].message.partition].append(user_id)
                counts.flush(runtime)
                sent = [await refresh_topic.send(key=b"users", value=encode_users(users), partition=partition)
                        for partition, users in to_refresh.items()]
                for switch in switches:
                    value = orjson.dumps({"metric": "scene_switch", **dataclasses.asdict(switch)})
                    sent.append(await metrics_topic.send(key=b"scene_switch", value=value))
                await asyncio.gather(*sent)
