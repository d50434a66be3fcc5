"""Every worker follows the compacted `reco.experiments` topic and serves the running experiment.

A group-less consumer (no offsets committed, every partition assigned) reads the topic from the
beginning at startup and then follows it, so `streamrec experiment start/stop` reaches every worker
without a restart. The refresh agent waits for the first read to the topic's end
(`Services.experiments_synced`): after a restart no list goes out before the worker knows which arm
each user is in. Loading the arms' model versions (files, Milvus) runs in a thread; the swap itself
runs on the event loop, between refresh batches, like a model reload.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, TopicPartition

from app.runtime.kafka import consumer, running
from app.runtime.settings import Settings
from models.experiments import Registry
from schemas import topics

if TYPE_CHECKING:  # the CLI reads topics with this module's helpers without loading Faust or torch
    from app.runtime.faust_app import StreamRec
    from app.runtime.services import Services

logger = logging.getLogger(__name__)

POLL_MS = 1_000


async def caught_up(reader: AIOKafkaConsumer, parts: Sequence[TopicPartition]) -> bool:
    """Whether `reader` has read every partition to the high watermark its last fetch reported
    (ListOffsets is wrong on Tansu, DESIGN.md §5; an empty fetch still carries the highwater)."""
    for tp in parts:
        end = reader.highwater(tp)
        if end is None or await reader.position(tp) < end:
            return False
    return True


def topic_reader(settings: Settings) -> AIOKafkaConsumer:
    return consumer(settings, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                    fetch_max_wait_ms=200)


async def assign_all(reader: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Assign every partition of `topic` to a started group-less reader and rewind it to the start."""
    await reader.topics()  # loads the metadata
    parts = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or ())]
    if not parts:
        raise RuntimeError(f"topic {topic} does not exist (`streamrec topics` creates it)")
    reader.assign(parts)
    await reader.seek_to_beginning(*parts)
    return parts


async def apply_running(services: Services, registry: Registry) -> None:
    """Make `services` serve what the registry says runs now (nothing, or one experiment)."""
    wanted = registry.running()
    current = services.experiment.definition if services.experiment is not None else None
    if wanted == current:
        return
    if wanted is None:
        services.end_experiment()
        return
    try:
        loaded = await asyncio.to_thread(services.load_versions, wanted)
    except (FileNotFoundError, ValueError) as exc:  # the arms' versions must be on every worker's model_dir
        logger.error("experiment %s cannot run on this worker: %s; serving the default model", wanted.name, exc)
        services.end_experiment(error=str(exc))
        return
    services.install_experiment(wanted, loaded)


async def follow(settings: Settings, services: Services, registry: Registry) -> None:
    """Read the experiments topic from the beginning, then follow it, applying every change."""
    async with running(topic_reader(settings)) as reader:
        parts = await assign_all(reader, topics.EXPERIMENTS)
        while True:
            batches = await reader.getmany(timeout_ms=POLL_MS)
            changed = False
            for messages in batches.values():
                for message in messages:
                    changed = registry.apply(message.key, message.value) or changed
            synced = services.experiments_synced.is_set()
            if not synced and not await caught_up(reader, parts):
                continue  # apply the topic's final state, not each step of its history
            if changed or not synced:
                await apply_running(services, registry)
            if not synced:
                logger.info("experiments: %d defined, running: %s", len(registry.definitions),
                            services.experiment.name if services.experiment else "none")
                services.experiments_synced.set()


def register(runtime: StreamRec) -> None:
    """The follower as an app task of the worker; `runtime.extras["experiments"]` holds the registry."""
    services = runtime.loaded_services()
    registry = Registry()
    runtime.extras["experiments"] = registry

    @runtime.app.task
    async def follow_experiments() -> None:
        while True:
            try:
                await follow(runtime.settings, services, registry)
            except asyncio.CancelledError:
                raise
            except Exception:  # a broker hiccup must not end experiments on this worker: read again
                logger.exception("experiments follower failed; reading the topic again in 5 s")
                await asyncio.sleep(5.0)
