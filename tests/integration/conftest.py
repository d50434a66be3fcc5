"""Fixtures for integration tests: a real Tansu broker, a trained model, a real worker process.

One broker and one worker serve the whole session (a worker takes seconds to get its partitions);
tests use their own user ids and compare counter deltas, so they do not depend on each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.runtime.broker import EmbeddedBroker
from app.runtime.kafka import ensure_topics
from app.runtime.settings import Settings
from app.tools.process import WorkerProcess
from app.tools.simulator import simulate
from app.tools.training import train_model
from models.vectors import ItemVectors
from schemas import topics
from schemas.events import CatalogItem, Recommendation
from schemas.validation import encode_event
from tests.waiting import describe, timed_out

_decode_rec = msgspec.json.Decoder(Recommendation).decode


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(log_path=tmp_path_factory.mktemp("broker") / "broker.log") as running:
        asyncio.run(ensure_topics(Settings(kafka_bootstrap=running.bootstrap)))
        yield running


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained on simulated shop history: item vectors know the category structure."""
    root = tmp_path_factory.mktemp("models")
    events = [e for e in simulate(n_users=300, n_items=600, n_categories=12, n_events=30_000, seed=3,
                                  start_ts_ms=int(time.time() * 1000) - 86_400_000)
              if not isinstance(e, CatalogItem)]
    train_model(events, root, dim=32)
    return root


@pytest.fixture(scope="session")
def item_vectors(model_dir: Path) -> ItemVectors:
    (version,) = [p for p in model_dir.iterdir() if (p / "meta.json").exists()]
    return ItemVectors.load(version / "vectors")


@pytest.fixture(scope="session")
def worker(broker: EmbeddedBroker, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    data_dir = tmp_path_factory.mktemp("worker")
    process = WorkerProcess(broker.bootstrap, data_dir,
                            env={"STREAMREC_MODEL_DIR": str(model_dir), "STREAMREC_VECTOR_DIM": "32"})
    with process:
        process.wait_ready(timeout_s=120)
        yield process
    print(process.log_tail())


class Kafka:
    """Produce to and read from the test broker synchronously (each call runs its own event loop)."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    def send(self, items: list[tuple[str, bytes | None, bytes]]) -> None:
        async def go() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
            await producer.start()
            try:
                for topic, key, value in items:
                    await producer.send_and_wait(topic, value, key=key)
            finally:
                await producer.stop()

        asyncio.run(go())

    def send_events(self, events: list) -> None:
        self.send([(topics.TOPIC_BY_TYPE[type(e).__name__.lower()], e.user_id.encode(), encode_event(e))
                   for e in events])

    def read_until(self, topic: str, done: Callable[[list], bool], timeout_s: float = 60.0,
                   key: bytes | None = None, what: str | None = None,
                   show: Callable[[list], str] | None = None) -> list:
        """Read `topic` from the beginning (optionally only `key`) until done(messages) and return them.

        Past `timeout_s` it fails (TimeoutError), saying what it waited for (`what`, else done's source)
        and what it read (`show(messages)`, else the last few messages)."""

        async def go() -> list:
            reader = AIOKafkaConsumer(topic, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest",
                                      enable_auto_commit=False, group_id=None)
            await reader.start()
            seen: list = []
            deadline = time.monotonic() + timeout_s
            try:
                while True:
                    batches = await reader.getmany(timeout_ms=500)
                    for messages in batches.values():
                        seen.extend(m for m in messages if key is None or m.key == key)
                    if done(seen):
                        return seen
                    if time.monotonic() >= deadline:
                        where = topic if key is None else f"{topic} key {key!r}"
                        raise timed_out(f"{what or describe(done)} (on {where})", timeout_s,
                                        (show or _show_messages)(seen))
            finally:
                await reader.stop()

        return asyncio.run(go())

    def recommendations(self, user_id: str, done: Callable[[list[Recommendation]], bool],
                        timeout_s: float = 60.0, what: str | None = None) -> list[Recommendation]:
        """The user's lists from the beginning, once done(lists) holds; fails past `timeout_s`."""
        messages = self.read_until(topics.RECOMMENDATIONS, lambda ms: done([_decode_rec(m.value) for m in ms]),
                                   timeout_s, key=user_id.encode(), what=what or describe(done),
                                   show=_show_lists)
        return [_decode_rec(m.value) for m in messages]


def _show_messages(messages: list) -> str:
    last = [(m.key, m.value if m.value is None else m.value[:300], m.headers) for m in messages[-5:]]
    return f"{len(messages)} messages; the last {len(last)}: {last}"


def _show_lists(messages: list) -> str:
    lists = [_decode_rec(m.value) for m in messages if m.value is not None]
    return (f"{len(lists)} lists (version, source_ts, scene, items): "
            f"{[(r.version, r.source_ts, r.scene, len(r.items)) for r in lists[-10:]]}")


@pytest.fixture(scope="session")
def kafka(broker: EmbeddedBroker) -> Kafka:
    return Kafka(broker.bootstrap)


@contextlib.contextmanager
def private_pipeline(root: Path, env: dict[str, str]) -> Iterator[tuple[Kafka, WorkerProcess]]:
    """An own broker and worker, for tests that stop the worker, swap its model or account for all it publishes
    (the session worker serves every other test at once)."""
    with EmbeddedBroker(log_path=root / "broker.log") as running:
        asyncio.run(ensure_topics(Settings(kafka_bootstrap=running.bootstrap)))
        process = WorkerProcess(running.bootstrap, root / "worker", env=env)
        with process:
            process.wait_ready(timeout_s=120)
            yield Kafka(running.bootstrap), process
        print(process.log_tail())


def read_topic(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list:
    """Every message on `topic` now, partition by partition in offset order: read up to each high
    watermark as the fetcher reports it (ListOffsets is wrong on Tansu, DESIGN.md §5)."""

    async def go() -> list:
        reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
        await reader.start()
        try:
            await reader.topics()  # loads the metadata
            parts = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or ())]
            assert parts, f"no topic {topic} on {bootstrap}"
            reader.assign(parts)
            await reader.seek_to_beginning(*parts)
            out: dict[TopicPartition, list] = {tp: [] for tp in parts}
            deadline = time.monotonic() + timeout_s
            while True:
                for tp, messages in (await reader.getmany(timeout_ms=300)).items():
                    out[tp].extend(messages)
                ends = {tp: reader.highwater(tp) for tp in parts}
                behind = [tp for tp, end in ends.items() if end is None or await reader.position(tp) < end]
                if not behind:
                    return [m for tp in parts for m in out[tp]]
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{topic} not read to its high watermarks {ends} in {timeout_s}s")
        finally:
            await reader.stop()

    return asyncio.run(go())
