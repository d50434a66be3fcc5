"""`streamrec bench`: every speed number of the pipeline, measured in one run on one machine.

Ratios are what matter on a noisy, shared machine, so the ceilings (raw aiokafka, a bare Faust agent
with and without app/runtime/faust_fixes/fastpath.py), the worker, the naive baseline and the stage costs are all measured
in the same run, each phase on its own fresh embedded broker so that no phase sees another's topics.
Workers are real `streamrec worker` processes (app/tools/process.py); speed is read from their /stats.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import msgspec
import numpy as np
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app.benchmarks.bench_encoder import measure as measure_encoder
from app.benchmarks.bench_encoder import per_s
from app.runtime.broker import EmbeddedBroker
from app.runtime.kafka import ensure_topics
from app.runtime.settings import Settings
from app.tools.process import WorkerProcess
from app.tools.simulator import simulate
from schemas import topics
from schemas.events import Browse, CatalogItem, Recommendation, UserEvent
from schemas.validation import encode_event

logger = logging.getLogger(__name__)

Message = tuple[str, bytes, bytes]  # topic, key, value
_decode_rec = msgspec.json.Decoder(Recommendation).decode


@dataclass(frozen=True)
class BenchConfig:
    """How much to measure. `smoke()` is the CI configuration: every phase, tiny sizes."""

    events: int = 100_000
    rate: float = 2000.0
    freshness_s: float = 20.0
    naive_events: int = 2_000
    users: tuple[int, ...] = (10_000, 100_000)
    stage_n: int = 20_000
    recall_queries: int = 2_048
    two_workers: bool = True
    data: Path | None = None  # Taobao CSV to train the model on; None = the simulator
    model_dir: Path | None = None  # reuse the model versions here instead of training
    partitions: int = 2
    train_events: int = 20_000  # simulated history to train on when there is no data set
    memory_only: bool = False  # only the memory phase (RSS against users), e.g. up to 1e6 users

    @classmethod
    def smoke(cls) -> BenchConfig:
        return cls(events=3_000, rate=300.0, freshness_s=3.0, naive_events=100, users=(1_000,), stage_n=1_000,
                   recall_queries=128, two_workers=False, data=None, train_events=5_000)


# --- event sources ---------------------------------------------------------------------------------
def simulated(n: int, seed: int = 11) -> list[UserEvent]:
    start = int(time.time() * 1000) - 3_600_000
    return [e for e in simulate(n_users=max(100, n // 20), n_items=max(500, n // 10), n_categories=50,
                                n_events=n, seed=seed, start_ts_ms=start) if not isinstance(e, CatalogItem)][:n]


def as_messages(events: Sequence[UserEvent]) -> list[Message]:
    return [(topics.TOPIC_BY_TYPE[type(e).__name__.lower()], e.user_id.encode(), encode_event(e)) for e in events]


def one_event_per_user(first: int, last: int, items: Sequence[str], tag: str) -> Iterator[UserEvent]:
    """A product view by each of users first..last-1: the profile table grows by one user per event."""
    now = int(time.time() * 1000)
    for i in range(first, last):
        yield Browse(event_id=f"{tag}-{i}", user_id=f"{tag}-u{i}", ts=now, page="product",
                     item_id=items[i % len(items)])


# --- Kafka helpers ---------------------------------------------------------------------------------
async def produce(bootstrap: str, messages: Sequence[Message]) -> float:
    """Send as fast as the broker takes; returns events/s."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=262_144)
    await producer.start()
    started = time.perf_counter()
    try:
        pending = []
        for topic, key, value in messages:
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return len(messages) / max(time.perf_counter() - started, 1e-9)


async def produce_at_rate(bootstrap: str, events: Sequence[UserEvent], rate: float) -> None:
    """Send at `rate` events/s, each stamped with its send time (so freshness measures the pipeline)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
    await producer.start()
    try:
        started = time.perf_counter()
        for i, event in enumerate(events):
            due = started + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            stamped = msgspec.structs.replace(event, ts=int(time.time() * 1000))
            await producer.send(topics.TOPIC_BY_TYPE[type(event).__name__.lower()], encode_event(stamped),
                                key=event.user_id.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def raw_consume(bootstrap: str, n: int) -> float:
    """The ceiling: aiokafka getmany over the input topics, no processing (events/s).

    Timed from the first fetch request, not from the first answer: with few events the first answer
    can hold them all, and timing from it measured only the loop (11.5M ev/s for 10,000 events).
    """
    consumer = AIOKafkaConsumer(*topics.INPUT_TOPICS, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    seen = 0
    started = time.perf_counter()
    try:
        deadline = time.monotonic() + 120
        while seen < n and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            seen += sum(len(b) for b in batches.values())
    finally:
        await consumer.stop()
    if seen < n:
        raise RuntimeError(f"raw consumer read {seen} of {n} events")
    return n / max(time.perf_counter() - started, 1e-9)


async def read_recommendations(bootstrap: str, since_ms: int, timeout_s: float = 10.0) -> list[Recommendation]:
    consumer = AIOKafkaConsumer(topics.RECOMMENDATIONS, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    out: list[Recommendation] = []
    try:
        deadline, idle = time.monotonic() + timeout_s, 0
        while time.monotonic() < deadline and idle < 3:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            got = [m for b in batches.values() for m in b]
            idle = 0 if got else idle + 1
            out.extend(r for r in (_decode_rec(m.value) for m in got) if r.source_ts >= since_ms)
    finally:
        await consumer.stop()
    return out


# --- the bare Faust agent (a child process: Faust owns its event loop) ------------------------------
def bare_faust_eps(bootstrap: str, n: int, fastpath: bool, workdir: Path) -> dict[str, float]:
    """A Faust agent that does nothing per event (take_events batches, like ours): events/s and
    CPU microseconds per event (all threads; steadier than wall time on a shared machine)."""
    out = subprocess.run([sys.executable, "-m", "app.benchmarks.bench", bootstrap, str(n), "1" if fastpath else "0",
                          str(workdir)], check=False, capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2])
    found = re.findall(r'\{"eps": [^}]+\}', out.stdout + out.stderr)  # Faust prefixes print() output
    if not found:
        raise RuntimeError(f"bare Faust agent failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(found[-1])


def _bare_faust_main(bootstrap: str, n: int, fastpath: bool, workdir: Path) -> None:  # pragma: no cover
    import faust

    from app.runtime.faust_fixes import app_class

    (workdir / "faust").mkdir(parents=True, exist_ok=True)
    app = app_class(fastpath)(f"bench-bare-{uuid.uuid4().hex[:8]}", broker=f"kafka://{bootstrap}",
                              datadir=str(workdir / "faust"), web_enabled=False, topic_allow_declare=False,
                              consumer_auto_offset_reset="earliest", broker_rebalance_timeout=3.0,
                              broker_heartbeat_interval=1.0, broker_session_timeout=10.0)
    source = app.topic(*topics.INPUT_TOPICS, key_serializer="raw", value_serializer="raw")

    @app.agent(source)
    async def bare(stream: Any) -> None:
        seen, first = 0, None
        async for batch in stream.take_events(2000, 0.05):
            if first is None:
                first, cpu = time.perf_counter(), time.process_time()
            seen += len(batch)
            if seen >= n:
                print(json.dumps({"eps": n / (time.perf_counter() - first),
                                  "cpu_us": 1e6 * (time.process_time() - cpu) / n}), flush=True)
                os._exit(0)

    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


# --- workers -------------------------------------------------------------------------------------
def rss_mb(pid: int) -> float:
    """Resident set of a process and its children (the worker runs milvus-lite as a child)."""
    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def cpu_s(worker: WorkerProcess) -> float:
    """CPU seconds (user + system) of a worker and its children so far."""
    assert worker.proc is not None
    proc = psutil.Process(worker.proc.pid)
    total = sum(proc.cpu_times()[:2])
    for child in proc.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


@dataclass
class Watch:
    """Polls workers' /stats until done(totals); records when work started and ended, and peak RSS."""

    workers: list[WorkerProcess]
    peak_rss_mb: float = 0.0
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for worker in self.workers:
            for key, value in worker.stats().items():
                out[key] = out.get(key, 0) + value
        for worker in self.workers:
            if worker.proc is not None:
                self.peak_rss_mb = max(self.peak_rss_mb, rss_mb(worker.proc.pid))
        return out

    def until(self, done: Callable[[dict[str, int]], bool], timeout_s: float, started: Callable[[dict[str, int]], bool]
              ) -> tuple[float, dict[str, int]]:
        """Seconds from the first poll where started() holds to the first where done() holds."""
        t0 = None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            totals = self.totals()
            now = time.perf_counter()
            if t0 is None and started(totals):
                t0 = now
            if done(totals):
                return now - (t0 if t0 is not None else now), totals
            time.sleep(0.05)
        raise TimeoutError(f"workers did not finish within {timeout_s}s: {self.totals()}")

    def last_change(self, settle_s: float = 2.0, timeout_s: float = 1800.0) -> float:
        """perf_counter() of the last poll that saw a counter move, once they have been still for settle_s."""
        last, changed = self.totals(), time.perf_counter()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and time.perf_counter() - changed < settle_s:
            time.sleep(0.05)
            now = self.totals()
            if now != last:
                last, changed = now, time.perf_counter()
        return changed

    def quiet(self, settle_s: float = 1.0, timeout_s: float = 120.0) -> dict[str, int]:
        """Wait until the counters stop moving (the refresh backlog has drained)."""
        last, deadline = self.totals(), time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            time.sleep(settle_s)
            now = self.totals()
            if now == last:
                return now
            last = now
        return last


def profiled(totals: dict[str, int]) -> int:
    return totals.get("profile.accepted", 0) + totals.get("profile.duplicates", 0)


@dataclass
class Phase:
    """A fresh broker with every topic, and worker processes on it."""

    root: Path
    model_dir: Path
    env: dict[str, str]
    partitions: int
    broker: EmbeddedBroker | None = None
    workers: list[WorkerProcess] = field(default_factory=list)

    def __enter__(self) -> Self:
        self.root.mkdir(parents=True, exist_ok=True)
        self.broker = EmbeddedBroker(log_path=self.root / "broker.log").start()
        asyncio.run(ensure_topics(Settings(kafka_bootstrap=self.broker.bootstrap, partitions=self.partitions)))
        return self

    @property
    def bootstrap(self) -> str:
        assert self.broker is not None
        return self.broker.bootstrap

    def start_workers(self, n: int, env: dict[str, str] | None = None) -> Watch:
        for i in range(n):
            worker = WorkerProcess(self.bootstrap, self.root / f"worker{i}",
                                   env={"STREAMREC_MODEL_DIR": str(self.model_dir),
                                        "STREAMREC_PARTITIONS": str(self.partitions), "STREAMREC_LOG_LEVEL": "WARNING",
                                        **self.env, **(env or {})})
            self.workers.append(worker.start())
        for worker in self.workers:
            worker.wait_ready(timeout_s=180)
        if n > 1:  # every member must hold its share, with no rebalance under way, for 2 s in a row
            deadline, steady = time.monotonic() + 180, 0
            while time.monotonic() < deadline and steady < 4:
                steady = steady + 1 if all(w.get("/readyz").status_code == 200 for w in self.workers) else 0
                time.sleep(0.5)
        return Watch(self.workers)

    def __exit__(self, *exc: object) -> None:
        for worker in self.workers:
            worker.stop(timeout_s=10)
        if self.broker is not None:
            self.broker.stop()


# --- stage costs (in process) ------------------------------------------------------------------------
def stage_costs(cfg: BenchConfig, model_dir: Path, workdir: Path, bootstrap: str) -> dict[str, Any]:
    from agents.refresh import snapshot  # noqa: F401 - the same imports the worker pays
    from app.store.vectors import MilvusRecall
    from models.encoder import load_model_version
    from models.popularity import Trending
    from models.profile import ProfileParams, apply_event, new_profile
    from models.rerank import Candidate, RerankContext, rerank
    from models.scene import SceneModel
    from schemas.validation import Limits, decode_event

    settings = Settings()
    events = simulated(cfg.stage_n, seed=5)
    messages = as_messages(events)
    limits = Limits.from_settings(settings)
    now_ms = int(time.time() * 1000)
    out: dict[str, Any] = {}
    out["decode_validate_eps"] = per_s(len(messages), lambda: [decode_event(v, t, limits, now_ms)
                                                                for t, _, v in messages])
    params, scene_model = ProfileParams.from_settings(settings), SceneModel()

    def fold() -> None:
        profiles: dict[str, Any] = {}
        for event in events:
            state = profiles.get(event.user_id) or profiles.setdefault(event.user_id, new_profile(event.user_id))
            apply_event(state, event, params, scene_model)

    out["profile_update_eps"] = per_s(len(events), fold)
    features = [{"session_events": float(i % 7), "session_carts": float(i % 3), "distinct_categories": 2.0}
                for i in range(1000)]
    out["scene_predictions_per_s"] = per_s(len(features), lambda: [scene_model.predict_intent(f) for f in features])

    model = load_model_version(model_dir, "auto")
    out["encoder_provider"] = model.encoder.provider  # what the worker picks (CUDA where usable)
    providers = measure_encoder(model.encoder.path, batches=(1, 64, 512), min_s=0.3)
    out["encoder_by_provider"] = providers["users_per_s"]  # CPU, and CUDA (+IO binding) on a GPU box
    out["encoder_users_per_s"] = providers["users_per_s"][model.encoder.provider]
    rng = np.random.default_rng(0)

    # Recall on the model's real item vectors: user vectors from the encoder over real item histories.
    ids, matrix = list(model.vectors.ids), np.ascontiguousarray(model.vectors.matrix, np.float32)
    hist = rng.integers(0, len(ids), size=(cfg.recall_queries, model.max_len))
    seq = matrix[hist]
    queries = model.encoder.encode(seq, np.ones(hist.shape, np.float32),
                                   np.tile(np.eye(3, dtype=np.float32)[0], (len(hist), 1)))
    k = settings.recall_k
    exact = np.argsort(-(queries @ matrix.T), axis=1)[:, :k]
    truth = [set(row) for row in exact]
    index_of = {item: i for i, item in enumerate(ids)}
    categories = [model.vectors.categories.get(i) or "" for i in ids]

    def recall_at_k(found: list[list[int]]) -> float:
        return float(np.mean([len(truth[q] & set(f)) / k for q, f in enumerate(found)]))

    recall: dict[str, Any] = {"items": len(ids), "dim": model.dim, "k": k, "queries": len(queries)}
    # (index, search batch, nprobe or None, bulk result parsing of app/store/milvus_raw.py)
    variants = [("FLAT", 512, None, False), ("FLAT", 64, None, True), ("FLAT", 512, None, True),
                ("IVF_FLAT", 512, None, True), ("IVF_FLAT", 512, 64, True), ("IVF_FLAT", 512, 256, True)]
    for index_type in ("FLAT", "IVF_FLAT"):
        lite = MilvusRecall(str(workdir / f"recall-{index_type}.db"), f"bench_{index_type.lower()}", model.dim,
                            index_type=index_type, timeout_s=60)
        lite.load_items(ids, matrix, categories)
        default_params, raw_ok = dict(lite.search_params["params"]), lite._raw
        for variant, batch, nprobe, raw in variants:
            if variant != index_type:
                continue
            lite.search_batch, lite._raw = batch, raw and raw_ok
            lite._search_params = {"metric_type": "IP", "params": {**default_params, **({"nprobe": nprobe}
                                                                                       if nprobe else {})}}
            found = [[index_of[h.item_id] for h in row] for row in lite.search(queries, k)]
            name = f"milvus_lite_{index_type}_b{batch}" + (f"_nprobe{nprobe}" if nprobe else "") + (
                "" if raw else "_pymilvus_parse")
            recall[name] = {"users_per_s": per_s(len(queries), lambda r=lite: r.search(queries, k), min_s=1.0),
                            f"recall@{k}": recall_at_k(found), "search_params": lite.search_params}
        lite.close()
    import faiss

    hnsw = faiss.IndexHNSWFlat(model.dim, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 200
    hnsw.add(matrix)
    hnsw.hnsw.efSearch = max(256, k)
    _, found = hnsw.search(queries, k)
    recall["faiss_hnsw"] = {"users_per_s": per_s(len(queries), lambda: hnsw.search(queries, k), min_s=1.0),
                            f"recall@{k}": recall_at_k(found.tolist()), "M": 32, "efSearch": max(256, k)}
    out["recall"] = recall
    out["recall_users_per_s"] = recall["milvus_lite_FLAT_b512"]["users_per_s"]

    trending = Trending()
    for event in events:
        trending.observe_event(event)
    profile = new_profile("bench")
    for event in events[:50]:
        apply_event(profile, msgspec.structs.replace(event, user_id="bench"), params, scene_model)
    cands = [Candidate(ids[j], float(s), "ann", categories[j] or None, matrix[j], ids[hist[0][-1]])
             for j, s in zip(exact[0][:k], (queries[0] @ matrix[exact[0][:k]].T), strict=True)]
    ctx = RerankContext(scene=profile.scene, category_weights=profile.category_weights(),
                        item_weights=profile.item_weights(),
                        purchased=profile.exclusions(profile.clock_ms, settings.bought_cooldown_s),
                        purchased_categories=profile.last_order_categories(), recently_shown=frozenset(),
                        popularity=trending.scores, now_ms=now_ms)
    out["rerank_users_per_s"] = per_s(1, lambda: rerank(cands, ctx, settings.list_size))

    record = msgspec.json.encode(Recommendation(rec_id="r", user_id="u", version=1, generated_at=now_ms,
                                                source_ts=now_ms, scene="browsing", model_version="m", items=[]))
    publish = [(topics.RECOMMENDATIONS, f"u{i}".encode(), record + b" " * 1500) for i in range(cfg.stage_n)]
    out["publish_msgs_per_s"] = asyncio.run(produce(bootstrap, publish))
    return out


# --- the run ---------------------------------------------------------------------------------------
def train_bench_model(cfg: BenchConfig, model_dir: Path) -> dict[str, Any]:
    from app.tools.replay import read_events
    from app.tools.training import train_model

    started = time.perf_counter()
    if cfg.data is not None and cfg.data.exists():
        history = list(read_events(cfg.data))
        dim = 64
    else:
        history = [e for e in simulate(n_users=300, n_items=600, n_categories=12, n_events=cfg.train_events, seed=3,
                                       start_ts_ms=int(time.time() * 1000) - 86_400_000)
                   if not isinstance(e, CatalogItem)]
        dim = 32
    path = train_model(history, model_dir, dim=dim)
    return {"model": path.name, "trained_on": str(cfg.data) if cfg.data else "simulator", "dim": dim,
            "train_events": len(history), "train_s": round(time.perf_counter() - started, 1)}


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(), "platform": platform.platform(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "gpu": "none"}


def memory_phase(cfg: BenchConfig, phase: Phase, watch: Watch, model_dir: Path, result: dict[str, Any],
                 done: Callable[[str], None]) -> None:
    """RSS of the worker (and its milvus-lite child) after one new user per event up to each of
    `cfg.users`; every step is recorded as it finishes."""
    from models.encoder import load_model_version

    items = list(load_model_version(model_dir, "cpu").vectors.ids)[:1000]
    growth: list[dict[str, float]] = []
    done_users = 0
    base = profiled(watch.totals())
    for users in cfg.users:
        batch = as_messages(list(one_event_per_user(done_users, users, items, "mem")))
        asyncio.run(produce(phase.bootstrap, batch))
        target = base + users
        # ~275 new users/s measured here (each one refreshed): allow 50/s before calling it stuck
        watch.until(lambda t, target=target: profiled(t) >= target, max(1800, (users - done_users) / 50),
                    lambda t: True)
        assert phase.workers[0].proc is not None
        growth.append({"users": users, "rss_mb": round(rss_mb(phase.workers[0].proc.pid), 1)})
        done_users = users
        result["rss_by_users"] = list(growth)
        result["peak_rss_mb"] = watch.peak_rss_mb
        result["users"] = done_users
        done(f"memory@{users}")
    done("memory")


def run_bench(cfg: BenchConfig, workdir: Path | None = None,
              on_phase: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every phase in turn; `on_phase(name, result so far)` after each, so a run that fails late
    (a long default-size run) still leaves the numbers of the phases it finished."""
    root = Path(workdir or tempfile.mkdtemp(prefix="streamrec-bench-"))
    result: dict[str, Any] = {}

    def done(name: str) -> None:
        result.setdefault("phases_done", []).append(name)
        logger.info("bench: phase %s done", name)
        if on_phase is not None:
            on_phase(name, result)

    model_dir = root / "models"
    result.update({"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()},
                   "machine": machine()})
    if cfg.model_dir is not None:
        from models.encoder import load_model_version

        model_dir = cfg.model_dir
        loaded = load_model_version(model_dir, "cpu")
        result["model"] = {"model": loaded.version, "trained_on": f"reused from {model_dir}", "dim": loaded.dim}
    else:
        result["model"] = train_bench_model(cfg, model_dir)
    done("model")
    env = {"STREAMREC_VECTOR_DIM": str(result["model"]["dim"])}
    if cfg.memory_only:  # the long 1e6-user step on its own, on a fresh worker
        with Phase(root / "memory", model_dir, env, cfg.partitions) as phase:
            memory_phase(cfg, phase, phase.start_workers(1), model_dir, result, done)
        return result
    messages = as_messages(simulated(cfg.events))
    n = len(messages)

    # 1. Ceilings and one worker at full speed, on the same pre-produced events.
    with Phase(root / "throughput", model_dir, env, cfg.partitions) as phase:
        result["produce_eps"] = asyncio.run(produce(phase.bootstrap, messages))
        result["raw_consume_eps"] = asyncio.run(raw_consume(phase.bootstrap, n))
        fast = bare_faust_eps(phase.bootstrap, n, True, root / "bare-fast")
        stock = bare_faust_eps(phase.bootstrap, n, False, root / "bare-stock")
        result["faust_bare_eps"], result["faust_bare_stock_eps"] = fast["eps"], stock["eps"]
        result["faust_bare_cpu_us_per_event"] = {"fastpath": fast["cpu_us"], "stock": stock["cpu_us"]}
        watch = phase.start_workers(1)
        cpu = cpu_s(phase.workers[0])
        seconds, totals = watch.until(lambda t: profiled(t) >= n, 600, lambda t: t.get("ingest.consumed", 0) > 0)
        result["pipeline_eps"] = n / max(seconds, 1e-9)
        result["pipeline_cpu_us_per_event"] = 1e6 * (cpu_s(phase.workers[0]) - cpu) / n
        result["pipeline_totals"] = totals
        done("throughput")
        # 2. Freshness at a fixed rate, once the refresh backlog of step 1 has drained.
        watch.quiet()
        fresh_events = [msgspec.structs.replace(e, user_id=f"fresh-{e.user_id}", event_id=f"fresh-{e.event_id}")
                        for e in simulated(int(cfg.rate * cfg.freshness_s), seed=13)]  # users new to the worker
        since_ms = int(time.time() * 1000)
        asyncio.run(produce_at_rate(phase.bootstrap, fresh_events, cfg.rate))
        watch.quiet()
        recs = [r for r in asyncio.run(read_recommendations(phase.bootstrap, since_ms))
                if r.user_id.startswith("fresh-")]  # not the backlog of step 1 (simulated ts run ahead of now)
        lags = [r.generated_at - r.source_ts for r in recs]
        result["freshness_rate_eps"] = cfg.rate
        result["freshness_ms"] = {"p50": percentile(lags, 50), "p95": percentile(lags, 95),
                                  "p99": percentile(lags, 99), "lists": len(lags)}
        done("freshness")
        # 3. Memory against the number of users (one new user per event), on the same worker.
        memory_phase(cfg, phase, watch, model_dir, result, done)

    # 4. The naive baseline: one event per batch, one user per refresh, nothing coalesced.
    naive = messages[: cfg.naive_events]
    with Phase(root / "naive", model_dir, env, cfg.partitions) as phase:
        watch = phase.start_workers(1, {"STREAMREC_INGEST_BATCH": "1", "STREAMREC_REFRESH_BATCH": "1",
                                        "STREAMREC_BATCH_WITHIN_S": "0.001", "STREAMREC_REFRESH_WITHIN_S": "0.001"})
        started = time.perf_counter()
        asyncio.run(produce(phase.bootstrap, naive))
        watch.until(lambda t: profiled(t) >= len(naive), 1800, lambda t: True)
        end = watch.last_change()  # and every refresh it caused has been published
        result["naive_eps"] = len(naive) / max(end - started, 1e-9)
        result["naive_refreshes"] = watch.totals().get("refresh.published", 0)
    done("naive")

    # 5. Two worker processes on two partitions (same group), events produced once both hold a share.
    if cfg.two_workers:
        with Phase(root / "two", model_dir, env, max(2, cfg.partitions)) as phase:
            watch = phase.start_workers(2)
            asyncio.run(produce(phase.bootstrap, messages))
            seconds, _ = watch.until(lambda t: profiled(t) >= n, 600, lambda t: t.get("ingest.consumed", 0) > 0)
            result["two_workers_eps"] = n / max(seconds, 1e-9)
        done("two_workers")

    # 6. Stage costs, in this process.
    with EmbeddedBroker(log_path=root / "stages-broker.log") as broker:
        asyncio.run(ensure_topics(Settings(kafka_bootstrap=broker.bootstrap, partitions=cfg.partitions)))
        stages = stage_costs(cfg, model_dir, root, broker.bootstrap)
    result["stages"] = stages
    result["encoder_users_per_s"] = stages["encoder_users_per_s"]
    result["recall_users_per_s"] = stages["recall_users_per_s"]
    result["ratios"] = {"pipeline_over_raw": result["pipeline_eps"] / result["raw_consume_eps"],
                        "pipeline_over_faust_bare": result["pipeline_eps"] / result["faust_bare_eps"],
                        "pipeline_over_faust_stock": result["pipeline_eps"] / result["faust_bare_stock_eps"],
                        "pipeline_over_naive": result["pipeline_eps"] / result["naive_eps"],
                        "fastpath_speedup": result["faust_bare_eps"] / result["faust_bare_stock_eps"]}
    done("stages")
    return result


def _speed_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("raw aiokafka consume", f"{result['raw_consume_eps']:,.0f} ev/s"),
            ("bare Faust agent, stock consumer", f"{result['faust_bare_stock_eps']:,.0f} ev/s"),
            ("bare Faust agent, app/runtime/faust_fixes/fastpath.py", f"{result['faust_bare_eps']:,.0f} ev/s"),
            ("one worker, ingest+profile (pipeline_eps)", f"{result['pipeline_eps']:,.0f} ev/s"),
            ("naive baseline (1 event/batch, 1 user/refresh)", f"{result['naive_eps']:,.0f} ev/s")]
    if "two_workers_eps" in result:
        rows.append(("two workers, two partitions", f"{result['two_workers_eps']:,.0f} ev/s"))
    ratios = result["ratios"]
    rows += [(f"ratio {k}", f"{v:.2f}") for k, v in ratios.items()]
    fresh = result["freshness_ms"]
    rows.append((f"freshness at {result['freshness_rate_eps']:,.0f} ev/s (p50/p95/p99, {fresh['lists']} lists)",
                 f"{fresh['p50']:,.0f} / {fresh['p95']:,.0f} / {fresh['p99']:,.0f} ms"))
    stages = result["stages"]
    rows += [("decode+validate", f"{stages['decode_validate_eps']:,.0f} ev/s"),
             ("profile update (incl. scene)", f"{stages['profile_update_eps']:,.0f} ev/s"),
             ("scene model prediction", f"{stages['scene_predictions_per_s']:,.0f} /s")]
    rows += [(f"encoder batch {b} ({provider})", f"{v:,.0f} users/s")
             for provider, rates in stages["encoder_by_provider"].items() for b, v in rates.items()]
    recall = stages["recall"]
    for name, value in recall.items():
        if isinstance(value, dict):
            recall_key = next(k for k in value if k.startswith("recall@"))
            rows.append((f"recall {name} ({recall['items']:,} items x {recall['dim']})",
                         f"{value['users_per_s']:,.0f} users/s, {recall_key} {value[recall_key]:.3f}"))
    rows += [("re-rank", f"{stages['rerank_users_per_s']:,.0f} users/s"),
             ("publish (aiokafka, ~1.6 KB)", f"{stages['publish_msgs_per_s']:,.0f} msg/s")]
    return rows


def table(result: dict[str, Any]) -> str:
    """The result as a Markdown table (what docs/BENCHMARKS.md holds)."""
    rows = _speed_rows(result) if "pipeline_eps" in result else []  # absent: a --memory-only run
    rows += [(f"worker RSS at {g['users']:,} users", f"{g['rss_mb']:,.0f} MB") for g in result["rss_by_users"]]
    rows.append(("worker peak RSS", f"{result['peak_rss_mb']:,.0f} MB"))
    lines = ["| measure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - the bare Faust agent child of bare_faust_eps
    _bare_faust_main(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", Path(sys.argv[4]))
