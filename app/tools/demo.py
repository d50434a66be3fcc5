"""`streamrec demo`: the real pipeline end to end on the embedded defaults, finishing with a summary.

Trains on the first 30% of the data (by time), starts the embedded broker and a worker process,
replays the rest with send-time timestamps (so freshness is live), injects a few duplicates and
malformed messages to show dedupe and the dead-letter topic, prints live lists for a few users and
ends once the worker has processed everything it was sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
import numpy as np
from rich.table import Table

from app.runtime.broker import EmbeddedBroker
from app.runtime.kafka import consumer, ensure_topics, producer
from app.runtime.settings import Settings, default_dataset
from app.tools.console import console, recommendation_table
from app.tools.process import WorkerProcess
from app.tools.producer import rebased, source_events
from app.tools.replay import read_events, replay, split_by_time
from app.tools.training import train_model
from schemas import topics
from schemas.events import Recommendation

logger = logging.getLogger(__name__)

TRAIN_FRACTION = 0.3
DEFAULT_RATE = 250.0  # events/s: what one worker keeps up with here, refreshing every changed user (docs/BENCHMARKS.md)
DUPLICATE_EVERY = 97     # resend every 97th event: at-least-once redelivery, must be deduped
MALFORMED_EVERY = 997  # and now and then something the frontend should never send
MALFORMED = (b"{not json", b'{"event_id": "x", "user_id": "u"}', b'{"event_id": 1, "user_id": "u", "ts": "soon"}',
             b"\xff\xfe binary", b"")
_decode_rec = msgspec.json.Decoder(Recommendation).decode


@dataclass
class Watch:
    """What the demo sees on reco.recommendations, as a downstream app would."""

    freshness_ms: list[int] = field(default_factory=list)
    latest: dict[str, Recommendation] = field(default_factory=dict)

    def add(self, record: Recommendation) -> None:
        self.freshness_ms.append(record.generated_at - record.source_ts)
        self.latest[record.user_id] = record

    def showcase(self, n: int = 3) -> list[Recommendation]:
        """Recent lists from users in different scenes where possible, with longer histories first."""
        picked: dict[str, Recommendation] = {}
        for record in reversed(list(self.latest.values())[-2000:]):
            if record.scene not in picked and record.items:
                picked[record.scene] = record
        return list(picked.values())[:n]


def _load_events(data: Path | None, max_events: int | None, simulate: bool) -> tuple[list, list, str]:
    path = None if simulate else data or (default_dataset() if default_dataset().exists() else None)
    if path is None:
        n = int((max_events or 40_000) / (1 - TRAIN_FRACTION))
        history, source = list(source_events(None, True, n)), "built-in simulator"
    else:
        history, source = list(read_events(path)), str(path)
    train, live = split_by_time(history, TRAIN_FRACTION)
    return train, live[:max_events] if max_events else live, source


async def _replay_and_watch(settings: Settings, live: list, worker: WorkerProcess, rate: float | None,
                            duration_s: float | None) -> tuple[dict, Watch, float, int]:
    watch = Watch()
    reader = consumer(settings, topics.RECOMMENDATIONS, auto_offset_reset="earliest", group_id=None)
    await reader.start()

    async def follow() -> None:
        async for message in reader:
            watch.add(_decode_rec(message.value))

    follower = asyncio.create_task(follow())
    kafka = producer(settings)
    await kafka.start()
    sent = replayed = 0
    started = time.perf_counter()

    async def send(topic: str, key: bytes, value: bytes) -> None:
        nonlocal sent, replayed
        value = rebased(value)
        replayed += 1
        extra = [value] if replayed % DUPLICATE_EVERY == 0 else []
        if replayed % MALFORMED_EVERY == 0:
            extra.append(MALFORMED[(replayed // MALFORMED_EVERY) % len(MALFORMED)])
        for payload in (value, *extra):
            await kafka.send(topic, payload, key=key)
        if topic != topics.CATALOG:  # catalog upserts are not user events: ingest does not count them
            sent += 1 + len(extra)

    async def show_live() -> None:
        while True:
            await asyncio.sleep(10)
            for record in watch.showcase(1):
                console.print(recommendation_table(record, limit=5))

    shower = asyncio.create_task(show_live())
    try:
        replaying = replay(live, send, rate=rate, progress=True)
        try:
            await asyncio.wait_for(replaying, timeout=duration_s)
        except TimeoutError:
            console.print(f"[yellow]--duration {duration_s}s reached: replay stopped[/]")
        await kafka.flush()
        stats = await asyncio.to_thread(_wait_drained, worker, sent)
        elapsed = time.perf_counter() - started
        await asyncio.sleep(1.0)  # let the follower read the last lists
    finally:
        shower.cancel()
        follower.cancel()
        await kafka.stop()
        await reader.stop()
    return stats, watch, elapsed, sent


def _wait_drained(worker: WorkerProcess, sent: int, timeout_s: float = 300.0) -> dict:
    """Until the worker consumed all that was sent, profiled all it forwarded, and refreshes settled."""
    deadline = time.monotonic() + timeout_s
    stats: dict = {}
    settled = 0
    last_published = -1
    while time.monotonic() < deadline:
        try:
            stats = worker.stats()
        except httpx.HTTPError:  # the worker is busy; its counters will still be there
            time.sleep(1.0)
            continue
        done = (stats.get("ingest.consumed", 0) >= sent and
                stats.get("profile.accepted", 0) + stats.get("profile.duplicates", 0)
                >= stats.get("ingest.forwarded", 0))
        published = stats.get("refresh.published", 0)
        settled = settled + 1 if done and published == last_published else 0
        last_published = published
        if settled >= 3:
            return stats
        time.sleep(0.5)
    logger.warning("worker did not drain within %.0f s: %s", timeout_s, stats)
    return stats


def _summary(stats: dict, watch: Watch, elapsed: float, sent: int, source: str) -> Table:
    fresh = np.array(watch.freshness_ms or [0])
    consumed = stats.get("ingest.consumed", 0)
    rows = [
        ("data", source),
        ("user events sent (incl. injected duplicates and malformed)", f"{sent:,}"),
        ("events consumed", f"{consumed:,}"),
        ("accepted", f"{stats.get('profile.accepted', 0):,}"),
        ("duplicates", f"{stats.get('profile.duplicates', 0):,}"),
        ("dead-lettered", f"{stats.get('ingest.deadlettered', 0):,}"),
        ("recommendations published", f"{stats.get('refresh.published', 0):,}"),
        ("freshness p50 / p99", f"{np.percentile(fresh, 50):,.0f} ms / {np.percentile(fresh, 99):,.0f} ms"),
        ("events/s (replay start to drained)", f"{consumed / elapsed:,.0f}"),
    ]
    table = Table(title="StreamRec demo summary", title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    for row in rows:
        table.add_row(*row)
    return table


def run_demo(settings: Settings, *, data: Path | None = None, max_events: int | None = None,
             duration_s: float | None = None, rate: float | None = DEFAULT_RATE, simulate: bool = False) -> int:
    run_dir = (settings.data_dir / "demo" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]StreamRec demo[/] · run folder {run_dir}")
    train, live, source = _load_events(data, max_events, simulate)
    console.print(f"data: {source} · training on {len(train):,} earlier events, replaying {len(live):,}")
    model_path = train_model(train, run_dir / "models", dim=settings.vector_dim)
    console.print(f"trained model version {model_path.name}")
    with EmbeddedBroker(log_path=run_dir / "broker.log") as broker:
        demo_settings = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap, "data_dir": run_dir})
        asyncio.run(ensure_topics(demo_settings))
        console.print(f"embedded broker on {broker.bootstrap} (try: streamrec tail reco.recommendations "
                      f"--bootstrap {broker.bootstrap})")
        worker = WorkerProcess(broker.bootstrap, run_dir, env={"STREAMREC_MODEL_DIR": str(run_dir / "models")})
        with worker:
            started = time.perf_counter()
            ready = worker.wait_ready()
            console.print(f"worker ready in {time.perf_counter() - started:.1f} s "
                          f"(model {ready['model_version']}) · http {worker.url}")
            console.print(f"dashboard: {worker.url}/dashboard · lag: streamrec lag --watch --bootstrap "
                          f"{broker.bootstrap}")
            stats, watch, elapsed, sent = asyncio.run(
                _replay_and_watch(demo_settings, live, worker, rate or None, duration_s))
            for record in watch.showcase(3):
                console.print(recommendation_table(record, limit=8))
            console.print(_summary(stats, watch, elapsed, sent, source))
    ok = stats.get("ingest.consumed", 0) == stats.get("ingest.deadlettered", 0) + stats.get(
        "profile.accepted", 0) + stats.get("profile.duplicates", 0)
    if not ok:
        console.print("[red]accounting mismatch: consumed != accepted + duplicates + dead-lettered[/]")
    return 0 if ok and stats.get("refresh.published", 0) > 0 else 1
