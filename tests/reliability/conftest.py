"""Fault-injection harness: a private broker per test, real worker processes, and the ledger checks.

Each test gets its own Tansu broker (the faults freeze or starve it) and its own worker data dir.
`STREAMREC_RELIABILITY_SCALE=full` runs the sizes of issue 5; the default is a reduced configuration
sized for CI. Measured figures are appended to $STREAMREC_RELIABILITY_REPORT (JSON lines) when set,
which is how docs/RELIABILITY.md was filled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.runtime.broker import EmbeddedBroker
from app.runtime.kafka import ensure_topics
from app.runtime.settings import Settings
from app.tools.process import WorkerProcess
from app.tools.simulator import simulate
from app.tools.training import train_model
from schemas import topics
from schemas.events import CatalogItem, UserEvent
from schemas.validation import encode_event

FULL = os.environ.get("STREAMREC_RELIABILITY_SCALE", "").lower() == "full"
APP_ID = "streamrec"
CONSUMED_TOPICS = (*topics.INPUT_TOPICS, topics.EVENTS, topics.REFRESH)
_decode_event = msgspec.json.Decoder(UserEvent).decode


def scale(reduced: int, full: int) -> int:
    return full if FULL else reduced


FULL_TIMEOUT_S = 4 * 3600  # per test at full scale; pyproject's 900 s is for the reduced sizes


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """At full scale a test replays 10-100x the events: give it hours, not pyproject's 15 minutes."""
    if FULL:
        for item in items:
            if item.get_closest_marker("reliability") and not item.get_closest_marker("timeout"):
                item.add_marker(pytest.mark.timeout(FULL_TIMEOUT_S))


def report(fault: str, **figures: object) -> None:
    """Print a measured row (pytest -s shows it) and append it to the report file if one is named."""
    row = {"fault": fault, "scale": "full" if FULL else "reduced", **figures}
    print("RELIABILITY", json.dumps(row))
    path = os.environ.get("STREAMREC_RELIABILITY_REPORT")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps(row) + "\n")


def now_ms() -> int:
    return int(time.time() * 1000)


def shop_events(n_events: int, n_users: int, seed: int) -> list[UserEvent]:
    """Simulated user events (no catalog), all in the past so every one is valid.

    The simulated clock runs from a day ago, but with many events per user it runs past now (88 h
    for 30,000 events of 200 users): those events are rightly dead-lettered as too far in the future,
    which made the full-scale tests count them as lost. The whole timeline is shifted back instead."""
    now = now_ms()
    events = [e for e in simulate(n_users=n_users, n_items=500, n_categories=12, n_events=n_events, seed=seed,
                                  start_ts_ms=now - 86_400_000) if not isinstance(e, CatalogItem)][:n_events]
    shift = max(0, max((e.ts for e in events), default=0) - (now - 60_000))
    return [msgspec.structs.replace(e, ts=e.ts - shift) for e in events] if shift else events



@dataclass
class Cluster:
    """One broker, one worker data dir, and the helpers every fault test needs."""

    broker: EmbeddedBroker
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)
    partitions: int = field(default_factory=lambda: Settings().partitions)

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def worker(self, *, fresh_state: bool = False) -> WorkerProcess:
        """Start a worker on the shared data dir; fresh_state drops RocksDB so tables recover from changelogs."""
        if fresh_state:
            import shutil

            shutil.rmtree(self.data_dir / "faust", ignore_errors=True)
        process = WorkerProcess(self.bootstrap, self.data_dir, env=self.env)
        self.workers.append(process)
        return process.start()

    def member(self, name: str) -> WorkerProcess:
        """Start one more worker in the group, beside the others: its own data dir (RocksDB, the
        milvus-lite file lock, its log) and web port, but the shared SQLite store, as workers share
        Cassandra at scale, so `stored_profiles` sees every user whoever refreshed them last."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        process = WorkerProcess(self.bootstrap, self.data_dir.parent / f"member-{name}",
                                env={**self.env, "STREAMREC_SQLITE_PATH": str(self.data_dir / "streamrec.db")})
        self.workers.append(process)
        return process.start()

    # --- producing ---------------------------------------------------------------------------------
    def send_raw(self, items: Iterable[tuple[str, bytes | None, bytes]], rate: float | None = None,
                 chunk: int = 500, stop: threading.Event | None = None,
                 progress: Callable[[int], None] | None = None) -> int:
        """Produce (topic, key, value) with acks=all; optionally paced at `rate` messages/s. Returns count.

        `stop` ends the flow early (what was sent is then a prefix of `items`); `progress` is told the
        count acknowledged after each chunk."""
        async def go() -> int:
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5,
                                        max_request_size=8 * 1024 * 1024, request_timeout_ms=120_000)
            await producer.start()
            n, pending, t0 = 0, [], time.monotonic()
            try:
                for topic, key, value in items:
                    if stop is not None and stop.is_set():
                        break
                    pending.append(await producer.send(topic, value, key=key))
                    n += 1
                    if len(pending) >= chunk:
                        await asyncio.gather(*pending)
                        pending = []
                        if progress is not None:
                            progress(n)
                        if rate:
                            ahead = n / rate - (time.monotonic() - t0)
                            if ahead > 0:
                                await asyncio.sleep(ahead)
                await asyncio.gather(*pending)
            finally:
                await producer.stop()
            return n

        return asyncio.run(go())

    def send_events(self, events: Iterable[UserEvent], rate: float | None = None, chunk: int = 500,
                    stop: threading.Event | None = None, progress: Callable[[int], None] | None = None) -> int:
        return self.send_raw(((topics.TOPIC_BY_TYPE[type(e).__name__.lower()], e.user_id.encode(),
                               encode_event(e)) for e in events), rate, chunk, stop, progress)

    # --- reading -----------------------------------------------------------------------------------
    def read_topic(self, topic: str) -> list:
        """Every message of `topic`, partition by partition in offset order (up to the high watermark)."""
        async def go() -> list:
            reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None,
                                      max_partition_fetch_bytes=16 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
            await reader.start()
            try:
                parts = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or ())]
                if not parts:
                    await reader.force_metadata_update()
                    parts = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or ())]
                reader.assign(parts)
                await reader.seek_to_beginning(*parts)
                out: dict[TopicPartition, list] = {tp: [] for tp in parts}
                ends = await self._highwaters(reader, parts)
                while any(reader_pos < ends[tp] for tp, reader_pos in
                          [(tp, await reader.position(tp)) for tp in parts]):
                    for tp, messages in (await reader.getmany(timeout_ms=1000)).items():
                        out[tp].extend(messages)
                return [m for tp in parts for m in out[tp]]
            finally:
                await reader.stop()

        return asyncio.run(go())

    @staticmethod
    async def _highwaters(reader: AIOKafkaConsumer, parts: list[TopicPartition]) -> dict[TopicPartition, int]:
        """High watermarks as the fetcher reports them (ListOffsets is wrong on Tansu, DESIGN.md §5)."""
        ends: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + 30
        while len(ends) < len(parts) and time.monotonic() < deadline:
            await reader.getmany(*[tp for tp in parts if tp not in ends], timeout_ms=500, max_records=1)
            for tp in parts:
                hw = reader.highwater(tp)
                if hw is not None and tp not in ends:
                    ends[tp] = hw
        for tp in parts:
            await reader.seek_to_beginning(tp)
        return ends

    def lag(self) -> dict[str, int]:
        """highwater - committed of the worker's consumer group, summed per topic it consumes."""
        out: dict[str, int] = {}
        for tp, (committed, highwater) in self.group_offsets().items():
            out[tp.topic] = out.get(tp.topic, 0) + max(0, highwater - committed)
        return out

    def group_offsets(self) -> dict[TopicPartition, tuple[int, int]]:
        """(committed, highwater) of the worker group on every partition of the topics its agents consume."""
        async def go() -> dict[TopicPartition, tuple[int, int]]:
            reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=APP_ID)
            probe = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None)
            await reader.start()
            await probe.start()
            try:
                parts = [TopicPartition(t, p) for t in CONSUMED_TOPICS
                         for p in sorted(probe.partitions_for_topic(t) or range(self.partitions))]
                probe.assign(parts)
                ends = await self._highwaters(probe, parts)
                return {tp: (await reader.committed(tp) or 0, ends.get(tp, 0)) for tp in parts}
            finally:
                await probe.stop()
                await reader.stop()

        return asyncio.run(go())

    def wait_drained(self, worker: WorkerProcess, timeout_s: float = 300.0) -> float:
        """Wait until the group's lag is 0 on every topic it reads, twice in a row; returns seconds waited."""
        t0 = time.monotonic()
        zero_before = False
        while time.monotonic() - t0 < timeout_s:
            if worker.proc is not None and worker.proc.poll() is not None:
                raise RuntimeError(f"worker died while draining:\n{worker.log_tail()}")
            lag = self.lag()
            if not any(lag.values()):
                if zero_before:
                    return time.monotonic() - t0
                zero_before = True
            else:
                zero_before = False
            time.sleep(1.0)
        diagnosis = worker.diagnose()
        (self.data_dir / "stuck-diagnosis.txt").write_text(diagnosis)
        raise TimeoutError(f"lag not 0 after {timeout_s}s: {self.lag()}\nwarnings and errors:\n"
                           f"{worker.log_problems()}\nlog tail:\n{worker.log_tail()}\n{diagnosis}")

    def stored_profiles(self) -> dict[str, dict]:
        """The latest profile snapshot per user from the worker's SQLite store (payload = the full profile)."""
        path = self.data_dir / "streamrec.db"
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
            return {user: orjson.loads(payload) for user, payload in db.execute("SELECT user_id, payload FROM profiles")}

    def explain_stale(self, users: Iterable[str], worker: WorkerProcess | None = None) -> str:
        """Why stored profiles lag: each user's events partition, newest list published, the worker's
        table row (is the table behind too, or only the store?), errors and rebalances logged."""
        users = set(users)
        partition: dict[str, set[int]] = {}
        for message in self.read_topic(topics.EVENTS):
            user = message.key.decode()
            if user in users:
                partition.setdefault(user, set()).add(message.partition)
        lists: dict[str, list[tuple[int, int]]] = {}
        for message in self.read_topic(topics.RECOMMENDATIONS):
            if message.value is not None and message.key.decode() in users:
                record = orjson.loads(message.value)
                lists.setdefault(record["user_id"], []).append((record["generated_at"], record["source_ts"]))
        stored = self.stored_profiles()
        lines = [f"{u}: events partitions {sorted(partition.get(u, ()))}, lists published {len(lists.get(u, []))}, "
                 f"newest (generated_at, source_ts) {max(lists.get(u, [(0, 0)]))}, stored clock_ms "
                 f"{stored.get(u, {}).get('clock_ms')}" + (f", table {table_row(worker, u)}" if worker else "")
                 for u in sorted(users)]
        log = (self.data_dir / "worker.log").read_text(errors="replace").splitlines()
        worrying = [line for line in log if re.search(r"ERROR|Traceback|crash|rebalanc|revok|assigned", line, re.IGNORECASE)]
        return "\n".join(lines + ["worker log lines about errors and rebalances:"] + worrying[-60:])

    def delivered_events(self) -> list[UserEvent]:
        """streamrec.events as the profile agent reads it: per partition, in offset order."""
        return [_decode_event(m.value) for m in self.read_topic(topics.EVENTS)]


class PacedProducer:
    """Events sent in order at a steady rate on a thread, until all are sent or `finish()` is called.

    What was sent is always a prefix of `events` (`sent_events()`), so a test can keep the flow going for
    as long as its scenario takes and account for exactly what went out; `sent` is the count
    acknowledged so far. A send error is re-raised by `finish()`."""

    def __init__(self, cluster: Cluster, events: list[UserEvent], rate: float, chunk: int = 20) -> None:
        self.cluster, self.events, self.rate, self.chunk = cluster, events, rate, chunk
        self.sent = 0
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="paced-producer", daemon=True)

    def _run(self) -> None:
        try:
            self.sent = self.cluster.send_events(self.events, self.rate, self.chunk, stop=self._stop,
                                                 progress=self._progressed)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread by finish()
            self._error = exc

    def _progressed(self, n: int) -> None:
        self.sent = n

    def start(self) -> PacedProducer:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """Still sending: neither out of events nor stopped (nor failed)."""
        return self._thread.is_alive()

    def finish(self, timeout_s: float = 120.0) -> list[UserEvent]:
        """Stop sending, wait for the last chunk's acks; returns the events sent."""
        self._stop.set()
        self._thread.join(timeout=timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"producer still sending {timeout_s}s after it was told to stop ({self.sent} sent)")
        if self._error is not None:
            raise RuntimeError(f"producer failed after {self.sent} events") from self._error
        return self.events[:self.sent]


def table_row(worker: WorkerProcess, user_id: str) -> str:
    """accepted and clock_ms of the user's profile in the worker's table (or why there is none)."""
    response = worker.get(f"/users/{user_id}/state")
    if response.status_code != 200:
        return f"HTTP {response.status_code}"
    profile = response.json().get("profile") or {}
    return f"accepted {profile.get('accepted')} clock_ms {profile.get('clock_ms')}"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trained model, so workers run the real encoder + milvus-lite recall path."""
    root = tmp_path_factory.mktemp("rel-models")
    events = shop_events(20_000, 300, seed=3)
    train_model(events, root, dim=32)
    return root


@contextlib.contextmanager
def running_cluster(tmp_path: Path, model_dir: Path, partitions: int | None = None) -> Iterator[Cluster]:
    """A private broker with every topic created (`partitions` each, else the configured count), and
    the workers' environment; every worker still running at the end is killed."""
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        settings = Settings(kafka_bootstrap=broker.bootstrap, **({"partitions": partitions} if partitions else {}))
        asyncio.run(ensure_topics(settings))
        env = {"STREAMREC_MODEL_DIR": str(model_dir), "STREAMREC_VECTOR_DIM": "32",
               "STREAMREC_PARTITIONS": str(settings.partitions)}
        running = Cluster(broker, tmp_path / "worker", env=env, partitions=settings.partitions)
        try:
            yield running
        finally:
            broker.thaw()
            for process in running.workers:
                process.kill()


@pytest.fixture
def cluster(tmp_path: Path, model_dir: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path, model_dir) as running:
        yield running


GROUP_PARTITIONS = 6  # two workers own 3 partitions each, three own 2 each


@pytest.fixture
def group_cluster(tmp_path: Path, model_dir: Path) -> Iterator[Cluster]:
    """A cluster whose topics have enough partitions for three workers in one group to each own some."""
    with running_cluster(tmp_path, model_dir, partitions=max(GROUP_PARTITIONS, Settings().partitions)) as running:
        yield running
