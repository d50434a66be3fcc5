"""Exact high watermarks for Faust's table recovery, also on brokers whose ListOffsets is wrong.

Measured on the embedded Tansu broker (tests/reliability): ListOffsets(latest) answers the base offset
of the partition's last record batch + 1, not the offset after its last record (15 records sent in 3
batches of 5: it said 11). Faust uses that answer as the changelog high watermark in recovery, so
after a SIGKILL a worker (a) raised ConsistencyError ("persisted offset 173 > highwater 172") and
crashed on every restart, and (b) with no local RocksDB state would stop restoring before the tail of
the last batch, losing table writes. A fetch response carries the true high watermark, so each
partition is probed with one small fetch from the listed offset - 1 (inside the last batch), and the
larger of the two answers is used. On a correct broker the probe only confirms the listed value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping

import aiokafka
from aiokafka import TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth, server_list
from faust.types import TP

from app.runtime.faust_fixes.repair import RepairingConsumer

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 10.0


async def exact_highwaters(probe: aiokafka.AIOKafkaConsumer, listed: Mapping[TP, int],
                           timeout_s: float = PROBE_TIMEOUT_S) -> dict[TP, int]:
    """max(listed, the fetch-reported high watermark) per partition; `probe` is a started, group-less consumer."""
    parts = {TopicPartition(tp.topic, tp.partition): tp for tp in listed}
    probe.assign(list(parts))
    for kafka_tp, tp in parts.items():
        probe.seek(kafka_tp, max(int(listed[tp] or 0) - 1, 0))
    found: dict[TP, int] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(found) < len(parts) and loop.time() < deadline:
        await probe.getmany(*[k for k, tp in parts.items() if tp not in found], timeout_ms=200, max_records=1)
        for kafka_tp, tp in parts.items():
            hw = probe.highwater(kafka_tp)
            if hw is not None:
                found[tp] = hw
    out = {tp: max(int(listed[tp] or 0), found.get(tp, 0)) for tp in listed}
    corrected = {f"{tp.topic}/{tp.partition}": (listed[tp], hw) for tp, hw in out.items() if hw != listed[tp]}
    logger.info("table recovery: high watermarks of %d partitions probed; corrected (listed, fetched): %s",
                len(out), corrected or "none")
    return out


class ExactHighwaterThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread whose `highwaters()` (used by table recovery) are probed, not listed,
    and whose fetches wait at most `app.fetch_max_wait_ms` (Faust hard-codes 1,500 ms).

    Tansu does not answer a waiting fetch when data arrives: it holds it for the whole wait
    (measured: p50 486 ms per hop at 1,500 ms, 17 ms at 100 ms). A list passes three such hops
    (input -> ingest -> profile -> refresh), so the wait is a large part of a list's freshness.
    """

    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.app, "fetch_max_wait_ms", None)
        if wait_ms is not None:
            consumer._fetch_max_wait_ms = int(wait_ms)  # read by AIOKafkaConsumer.start() for its Fetcher
        return consumer

    async def _highwaters(self, partitions: Iterable[TP]) -> Mapping[TP, int]:
        listed = await super()._highwaters(list(partitions))
        if self.consumer.in_transaction or not listed:
            return listed
        conf, transport = self.app.conf, self.transport
        probe = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=server_list(transport.url, transport.default_port), group_id=None,
            enable_auto_commit=False, max_partition_fetch_bytes=64 * 1024, fetch_max_wait_ms=100,
            **credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context))
        await probe.start()
        try:
            return await exact_highwaters(probe, listed)
        finally:
            with contextlib.suppress(Exception):
                await probe.stop()


class ExactHighwaterConsumer(RepairingConsumer):
    """Faust's aiokafka consumer with `ExactHighwaterThread` (and the stop-time commit gate and the
    blocked-partition repair of app/runtime/faust_fixes/repair.py)."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ExactHighwaterThread(self, loop=self.loop, beacon=self.beacon)
