"""Consumer lag against a known backlog: pause a real worker (SIGSTOP), produce a known number of events
per partition, compare the reported lag (library, `streamrec lag`) with it; resume and see it drain to 0.

Own broker and worker: freezing the session worker would stall the other tests.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from app.runtime.broker import EmbeddedBroker
from app.runtime.kafka import ensure_topics
from app.runtime.settings import Settings
from app.serving.lag import PartitionLag, sample_once
from app.tools.process import WorkerProcess
from schemas import topics
from tests.waiting import wait_for

INPUT = (topics.CLICK, topics.BROWSE, topics.PURCHASE)
BACKLOG = {(topics.CLICK, 0): 37, (topics.CLICK, 1): 23, (topics.BROWSE, 1): 11}


@pytest.fixture(scope="module")
def lag_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedBroker, WorkerProcess]]:
    root = tmp_path_factory.mktemp("lag")
    with EmbeddedBroker(log_path=root / "broker.log") as broker:
        asyncio.run(ensure_topics(Settings(kafka_bootstrap=broker.bootstrap)))
        worker = WorkerProcess(broker.bootstrap, root / "worker", env={"STREAMREC_MODEL_DIR": str(root / "none")})
        with worker:
            worker.wait_ready(timeout_s=120)
            yield broker, worker
        print(worker.log_tail())


def produce(bootstrap: str, plan: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
    """Send `n` valid events to each (topic, partition); return the first message's broker timestamp."""

    async def go() -> dict[tuple[str, int], int]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        first: dict[tuple[str, int], int] = {}
        try:
            for (topic, partition), n in plan.items():
                for i in range(n):
                    now = int(time.time() * 1000)
                    value = (f'{{"event_id":"lag-{topic}-{partition}-{i}","user_id":"lag{i}","ts":{now},'
                             + ('"item_id":"i1"}' if topic == topics.CLICK else '"page":"home"}')).encode()
                    meta = await producer.send_and_wait(topic, value, key=f"lag{i}".encode(), partition=partition)
                    first.setdefault((topic, partition), meta.timestamp)
        finally:
            await producer.stop()
        return first

    return asyncio.run(go())


def lags(bootstrap: str) -> dict[tuple[str, int], PartitionLag]:
    samples = asyncio.run(sample_once(Settings(kafka_bootstrap=bootstrap)))
    return {(s.topic, s.partition): s for s in samples}


def input_lag_is_zero(bootstrap: str) -> bool:
    current = lags(bootstrap)
    return all(current[(t, p)].lag == 0 for t in INPUT for p in (0, 1))


def test_lag_equals_known_backlog_then_drains(lag_worker: tuple[EmbeddedBroker, WorkerProcess]) -> None:
    broker, worker = lag_worker
    produce(broker.bootstrap, {(topics.CLICK, 0): 1, (topics.CLICK, 1): 1})  # warm-up: the group commits
    wait_for(lambda: worker.stats().get("ingest.consumed", 0) >= 2, timeout_s=60)
    wait_for(lambda: input_lag_is_zero(broker.bootstrap), timeout_s=60)
    before = lags(broker.bootstrap)

    assert worker.proc is not None
    os.kill(worker.proc.pid, signal.SIGSTOP)
    try:
        first_ts = produce(broker.bootstrap, BACKLOG)
        reported = lags(broker.bootstrap)
        cli = subprocess.run([sys.executable, "-m", "app.cli", "lag", "--bootstrap", broker.bootstrap],
                             check=False, capture_output=True, text=True, timeout=60,
                             cwd=Path(__file__).resolve().parents[2])
    finally:
        os.kill(worker.proc.pid, signal.SIGCONT)

    for topic in INPUT:
        for partition in (0, 1):
            expected = BACKLOG.get((topic, partition), 0)
            got = reported[(topic, partition)]
            print(f"{topic}/{partition}: produced while paused {expected}, reported lag {got.lag}, "
                  f"committed {got.committed}, highwater {got.highwater}, age {got.age_s}")
            assert got.lag == expected
            assert got.highwater == (before[(topic, partition)].highwater or 0) + expected
            if expected:
                assert got.oldest_ts == first_ts[(topic, partition)] and got.age_s is not None and got.age_s >= 0
    assert cli.returncode == 0, cli.stderr
    rows = {(cols[1], int(cols[2])): int(cols[5]) for cols in map(str.split, cli.stdout.splitlines())
            if len(cols) == 7 and cols[1] in INPUT}
    assert rows == {(t, p): BACKLOG.get((t, p), 0) for t in INPUT for p in (0, 1)}
    assert "total lag:" in cli.stdout

    # resumed: the backlog drains, in our sampler and in the worker's own (Prometheus, dashboard JSON)
    wait_for(lambda: worker.stats().get("ingest.consumed", 0) >= 2 + sum(BACKLOG.values()), timeout_s=90)
    wait_for(lambda: input_lag_is_zero(broker.bootstrap), timeout_s=60)

    def worker_reports_zero() -> bool:
        data = httpx.get(f"{worker.url}/dashboard/data", timeout=10).json()
        own = {(s["topic"], s["partition"]): s for s in data["lag"]}
        return bool(own) and all(own[(t, p)]["lag"] == 0 and own[(t, p)]["highwater"] ==
                                 reported[(t, p)].highwater for t in INPUT for p in (0, 1))

    wait_for(worker_reports_zero, timeout_s=60)
    metrics = httpx.get(f"{worker.url}/metrics", timeout=10).text
    assert 'kafka_consumergroup_lag{group="streamrec",partition="0",topic="ecom.click"} 0.0' in metrics
    assert f'kafka_topic_partition_current_offset{{partition="0",topic="ecom.click"}} {1 + 37}.0' in metrics
