"""`streamrec demo`: the real pipeline end to end on the embedded defaults, finishing with a summary.

Trains on the first 30% of the data (by time), starts the embedded broker and a worker process,
replays the rest with send-time timestamps (so freshness is live), injects a few duplicates and
malformed messages to show dedupe and the dead-letter topic, and ends once the worker has processed
everything it was sent. While it runs, a live view (rich Live on a terminal, a status line every
STATUS_EVERY_S otherwise) shows throughput, backlog and freshness, and a recent list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import httpx
import msgspec
import numpy as np
from rich.console import Group, RenderableType
from rich.live import Live
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
RATE_WINDOW_S = 5.0  # throughput in the live view: over the last 5 s of samples
FRESHNESS_WINDOW_S = 30.0  # freshness percentiles in the live view: lists seen in the last 30 s
POLL_S = 1.0
STATUS_EVERY_S = 10.0  # off a terminal (logs, CI): one status line this often
_decode_rec = msgspec.json.Decoder(Recommendation).decode


@dataclass
class Watch:
    """What the demo sees on reco.recommendations, as a downstream app would."""

    freshness_ms: list[int] = field(default_factory=list)
    latest: dict[str, Recommendation] = field(default_factory=dict)
    recent: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=50_000))  # (seen at, ms)

    def add(self, record: Recommendation, seen_at: float | None = None) -> None:
        freshness = record.generated_at - record.source_ts
        self.freshness_ms.append(freshness)
        self.recent.append((time.monotonic() if seen_at is None else seen_at, freshness))
        self.latest[record.user_id] = record

    def showcase(self, n: int = 3) -> list[Recommendation]:
        """Recent lists from users in different scenes where possible, with longer histories first."""
        picked: dict[str, Recommendation] = {}
        for record in reversed(list(self.latest.values())[-2000:]):
            if record.scene not in picked and record.items:
                picked[record.scene] = record
        return list(picked.values())[:n]


@dataclass(frozen=True, slots=True)
class Sample:
    """Counters at one moment: the demo's own (sent) and the worker's /stats."""

    at: float  # time.monotonic()
    sent: int
    consumed: int
    published: int


@dataclass(frozen=True, slots=True)
class Progress:
    """What the live view shows; a rate or percentile is None until there is something to measure."""

    elapsed_s: float
    sent: int
    consumed: int
    published: int
    sent_per_s: float | None
    consumed_per_s: float | None
    lists_per_s: float | None
    fresh_p50_ms: float | None
    fresh_p99_ms: float | None
    fresh_lists: int

    @property
    def backlog(self) -> int:
        """Events sent that the worker has not consumed yet."""
        return max(0, self.sent - self.consumed)


def progress(samples: Sequence[Sample], freshness: Sequence[tuple[float, int]], started: float,
             now: float) -> Progress:
    """Rates over the samples of the last RATE_WINDOW_S, freshness over lists seen in FRESHNESS_WINDOW_S."""
    last = samples[-1] if samples else Sample(now, 0, 0, 0)
    window = [s for s in samples if s.at >= last.at - RATE_WINDOW_S]
    first = window[0] if window else last
    span = last.at - first.at

    def rate(name: str) -> float | None:
        return (getattr(last, name) - getattr(first, name)) / span if span > 0 else None

    fresh = np.array([ms for at, ms in freshness if at >= now - FRESHNESS_WINDOW_S], dtype=float)
    p50, p99 = (float(np.percentile(fresh, 50)), float(np.percentile(fresh, 99))) if fresh.size else (None, None)
    return Progress(elapsed_s=now - started, sent=last.sent, consumed=last.consumed, published=last.published,
                    sent_per_s=rate("sent"), consumed_per_s=rate("consumed"), lists_per_s=rate("published"),
                    fresh_p50_ms=p50, fresh_p99_ms=p99, fresh_lists=int(fresh.size))


def _num(value: float | None, unit: str = "") -> str:
    return "–" if value is None else f"{value:,.0f}{unit}"


def status_line(p: Progress) -> str:
    """The live figures on one line (the view off a terminal)."""
    return (f"live {p.elapsed_s:,.0f}s · sent {p.sent:,} ({_num(p.sent_per_s, '/s')}) · consumed {p.consumed:,} "
            f"({_num(p.consumed_per_s, '/s')}) · backlog {p.backlog:,} · lists {p.published:,} "
            f"({_num(p.lists_per_s, '/s')}) · freshness {_num(p.fresh_p50_ms, ' ms')} p50, "
            f"{_num(p.fresh_p99_ms, ' ms')} p99 (last {FRESHNESS_WINDOW_S:.0f} s)")


def live_view(p: Progress, record: Recommendation | None) -> RenderableType:
    """The terminal view: the figures, then the newest list of a user with some history."""
    figures = Table(title=f"StreamRec live · {p.elapsed_s:,.0f} s", title_justify="left")
    for name in ("", "total", "per second"):
        figures.add_column(name, justify="right" if name else "left")
    figures.add_row("events sent", f"{p.sent:,}", _num(p.sent_per_s))
    figures.add_row("consumed by the worker", f"{p.consumed:,}", _num(p.consumed_per_s))
    figures.add_row("backlog (sent - consumed)", f"{p.backlog:,}", "")
    figures.add_row("lists published", f"{p.published:,}", _num(p.lists_per_s))
    figures.add_row(f"freshness, last {FRESHNESS_WINDOW_S:.0f} s ({p.fresh_lists:,} lists)",
                    f"p50 {_num(p.fresh_p50_ms, ' ms')}", f"p99 {_num(p.fresh_p99_ms, ' ms')}")
    return Group(figures, recommendation_table(record, limit=5)) if record is not None else figures


@contextlib.contextmanager
def logs_to(stream: TextIO) -> Iterator[None]:
    """Point the root logger's console handlers at `stream` meanwhile. rich's Live prints what is
    written to sys.stderr above its view, but logging.basicConfig's handler holds the stderr of its
    time, and a log line written there tears the view."""
    handlers = [h for h in logging.getLogger().handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    before = [h.stream for h in handlers]
    for handler in handlers:
        handler.setStream(stream)
    try:
        yield
    finally:
        for handler, old in zip(handlers, before, strict=True):
            handler.setStream(old)


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
            if message.value:  # a tombstone is an erased user, not a list
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

    samples: deque[Sample] = deque(maxlen=64)
    begun = time.monotonic()

    def current() -> Progress:
        return progress(samples, watch.recent, begun, time.monotonic())

    async def poll(show: Callable[[Progress], None]) -> None:
        """Sample the worker's counters every POLL_S and hand the live figures to `show`."""
        while True:
            try:
                stats = await asyncio.to_thread(worker.stats)
                samples.append(Sample(time.monotonic(), sent, stats.get("ingest.consumed", 0),
                                      stats.get("refresh.published", 0)))
            except httpx.HTTPError:  # the worker is busy: the next poll catches up
                pass
            show(current())
            await asyncio.sleep(POLL_S)

    terminal = console.is_terminal
    with contextlib.ExitStack() as stack:
        if terminal:
            view = stack.enter_context(Live(live_view(current(), None), console=console, refresh_per_second=4))
            stack.enter_context(logs_to(sys.stderr))  # Live's stand-in for stderr now

            def show(p: Progress) -> None:
                view.update(live_view(p, next(iter(watch.showcase(1)), None)))
        else:
            last_line = [0.0]

            def show(p: Progress) -> None:
                if time.monotonic() - last_line[0] >= STATUS_EVERY_S:
                    last_line[0] = time.monotonic()
                    console.print(status_line(p), highlight=False)

        poller = asyncio.create_task(poll(show))
        try:
            replaying = replay(live, send, rate=rate, progress=not terminal)  # the live view replaces the bar
            try:
                await asyncio.wait_for(replaying, timeout=duration_s)
            except TimeoutError:
                console.print(f"[yellow]--duration {duration_s}s reached: replay stopped[/]")
            await kafka.flush()
            stats = await asyncio.to_thread(_wait_drained, worker, sent)
            elapsed = time.perf_counter() - started
            await asyncio.sleep(1.0)  # let the follower read the last lists
        finally:
            poller.cancel()
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
