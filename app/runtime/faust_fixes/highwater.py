"""Faust's aiokafka consumer thread: table recovery's high watermarks (fault 1) and the fetch wait."""

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

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 10.0


async def exact_highwaters(probe: aiokafka.AIOKafkaConsumer, listed: Mapping[TP, int],
                           timeout_s: float = PROBE_TIMEOUT_S) -> dict[TP, int]:
    """max(listed, the fetch-reported high watermark) per partition; `probe` is a started, group-less consumer.

    Each partition is fetched from its listed offset - 1 (inside the last record batch): a fetch answer
    carries the true high watermark even where ListOffsets(latest) does not (Tansu, fault 1).
    """
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


class ProbedHighwaters(faust_aiokafka.AIOKafkaConsumerThread):
    """Fault 1: table recovery's high watermarks are probed with a fetch, not listed (docs/RELIABILITY.md)."""

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


class FetchWaitFromApp(faust_aiokafka.AIOKafkaConsumerThread):
    """Fetches wait at most the app's `fetch_max_wait_ms`, not Faust's hard-coded 1,500 ms: Tansu holds a
    waiting fetch for all of it, at each of a list's three hops (docs/BENCHMARKS.md)."""

    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.app, "fetch_max_wait_ms", None)
        if wait_ms is not None:
            consumer._fetch_max_wait_ms = int(wait_ms)  # read by AIOKafkaConsumer.start() for its Fetcher
        return consumer
