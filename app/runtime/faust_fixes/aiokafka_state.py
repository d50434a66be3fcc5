"""A plain aiokafka consumer's private state, for the lag sampler (app/serving/lag.py)."""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition


async def refresh_metadata(consumer: AIOKafkaConsumer) -> None:
    """Fetch cluster metadata now: a topic created after the consumer started is unknown to it until then."""
    await consumer._client.force_metadata_update()


def forget_fetch_state(consumer: AIOKafkaConsumer, tps: Iterable[TopicPartition]) -> None:
    """Forget highwaters and prefetched records so the next sample waits for fresh fetch answers."""
    assignment = consumer._subscription.subscription.assignment
    for tp in tps:
        state = assignment.state_value(tp)
        state.highwater = None
        state.timestamp = None
    consumer._fetcher._records.clear()
