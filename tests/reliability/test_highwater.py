"""The Tansu ListOffsets fault that broke table recovery after a crash, and its fix (app/runtime/faust_fixes/highwater.py)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.runtime.broker import EmbeddedBroker
from app.runtime.faust_fixes.highwater import exact_highwaters

pytestmark = [pytest.mark.reliability, pytest.mark.integration]


async def _scenario(bootstrap: str) -> tuple[int, dict]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic("hw", 2, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=50)
    await producer.start()
    for _ in range(3):  # three batches of five records on partition 0; partition 1 stays empty
        await asyncio.gather(*[await producer.send("hw", b"x", partition=0) for _ in range(5)])
    await producer.stop()
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await probe.start()
    try:
        tps = [TopicPartition("hw", 0), TopicPartition("hw", 1)]
        listed = await probe.end_offsets(tps)
        return listed[tps[0]], await exact_highwaters(probe, listed)
    finally:
        await probe.stop()


def test_exact_highwaters_are_the_offsets_after_the_last_record(tmp_path) -> None:
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        listed, exact = asyncio.run(_scenario(broker.bootstrap))
    assert exact == {TopicPartition("hw", 0): 15, TopicPartition("hw", 1): 0}
    assert listed <= 15  # Tansu listed 11 here (base offset of the last batch + 1); a correct broker, 15
