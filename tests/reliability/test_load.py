"""A 10x burst (memory bounded, no rebalance storm, lag drains) and a poison user / huge session
(state bounded), on a real broker and worker."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import orjson
import psutil
import pytest

from app.runtime.settings import Settings
from schemas.events import Browse, Click, OrderItem, Purchase
from tests.reliability.conftest import Cluster, now_ms, report, scale, shop_events

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

RSS_CAP_BYTES = 3 * 1024**3  # worker + its children (milvus-lite); measured peaks are in docs/RELIABILITY.md


def tree_rss(pid: int) -> int:
    try:
        proc = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    except psutil.Error:
        return 0


class Sampler(threading.Thread):
    """Samples the worker's RSS and readiness every 0.5 s until stopped."""

    def __init__(self, worker) -> None:
        super().__init__(daemon=True)
        self.worker, self.peak, self.rebalancing, self.assigned = worker, 0, 0, set()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, tree_rss(self.worker.proc.pid))
            with contextlib.suppress(httpx.HTTPError):  # a slow answer under load is not a rebalance
                state = self.worker.get("/readyz", timeout=2.0).json()
                self.rebalancing += bool(state["rebalancing"])
                self.assigned.add(state["assigned_partitions"])
            self.done.wait(0.5)


def test_burst_10x_memory_bounded_and_lag_drains(cluster: Cluster) -> None:
    sustained, burst_s = scale(200, 500), scale(6, 30)
    warm = shop_events(sustained * 10, n_users=300, seed=31)
    burst = shop_events(sustained * 10 * burst_s, n_users=3000, seed=32)
    worker = cluster.worker()
    worker.wait_ready(timeout_s=180)
    sampler = Sampler(worker)
    sampler.start()
    cluster.send_events(warm, rate=sustained, chunk=100)
    base_rss = tree_rss(worker.proc.pid)
    t0 = time.monotonic()
    cluster.send_events(burst, rate=sustained * 10)
    sent_s = time.monotonic() - t0
    drain_s = cluster.wait_drained(worker, timeout_s=scale(300, 900))
    sampler.done.set()
    sampler.join()
    stats = worker.stats()
    assert stats["profile.accepted"] == len(warm) + len(burst)
    assert sampler.peak < RSS_CAP_BYTES
    assert sampler.rebalancing == 0
    assert len(sampler.assigned) == 1, f"assignment changed during the burst: {sampler.assigned}"
    report("burst 10x", injected=1, events_sent=len(warm) + len(burst), events_accounted=stats["profile.accepted"],
           state_mismatches=0, sustained_rate=sustained, burst_rate=sustained * 10, burst_s=round(sent_s, 1),
           drain_after_burst_s=round(drain_s, 1), rss_before_mb=base_rss // 2**20, rss_peak_mb=sampler.peak // 2**20)


def poison_events(user: str, n: int, span_ms: int, items: int, cats: int) -> list:
    start = now_ms() - 2 * 3_600_000 if span_ms < 3_600_000 else now_ms() - span_ms - 60_000
    step = max(span_ms // max(n, 1), 1)
    out = []
    for i in range(n):
        ts, item, cat = start + i * step, f"p{i % items}", f"c{i % cats}"
        if i % 50 == 49:
            out.append(Purchase(event_id=f"{user}-{i}", user_id=user, ts=ts, order_id=f"o{i}",
                                items=[OrderItem(item_id=item, category=cat)]))
        elif i % 3 == 0:
            out.append(Click(event_id=f"{user}-{i}", user_id=user, ts=ts, item_id=item, category=cat))
        else:
            out.append(Browse(event_id=f"{user}-{i}", user_id=user, ts=ts, page="product", item_id=item,
                              category=cat, dwell_ms=5_000))
    return out


def test_poison_user_and_huge_session_keep_bounded_state(cluster: Cluster) -> None:
    n_poison, n_session = scale(10_000, 1_000_000), 10_000
    poison = poison_events("poison", n_poison, span_ms=86_000_000, items=20_000, cats=500)
    session = poison_events("session", n_session, span_ms=n_session * 100, items=5_000, cats=300)  # one session
    worker = cluster.worker()
    worker.wait_ready(timeout_s=180)
    t0 = time.monotonic()
    cluster.send_events([e for pair in zip(poison, session, strict=False) for e in pair]
                        + poison[len(session):])
    drain_s = cluster.wait_drained(worker, timeout_s=scale(300, 1800))
    stats = worker.stats()
    assert stats["profile.accepted"] == n_poison + n_session
    params = Settings()
    stored = cluster.stored_profiles()
    sizes = {}
    for user, n in (("poison", n_poison), ("session", n_session)):
        profile = stored[user]
        assert profile["accepted"] == n
        assert len(profile["recent_event_ids"]) <= params.dedupe_window
        assert len(profile["items"]) <= params.max_recent_items
        assert len(profile["short_cat"]) <= params.max_categories and len(profile["long_cat"]) <= params.max_categories
        assert len(profile["purchased"]) <= params.max_purchased
        assert len(profile["session"]["cat_views"]) <= 64 and len(profile["scene_cat_views"]) <= 64
        assert len(profile["pending"]) <= 32
        sizes[user] = len(orjson.dumps(profile))
        assert sizes[user] < 256 * 1024
    assert stored["session"]["session"]["n_events"] == n_session  # really one session
    report("poison user + 10k-event session", injected=2, events_sent=n_poison + n_session,
           events_accounted=stats["profile.accepted"], state_mismatches=0, profile_bytes=sizes,
           processing_s=round(time.monotonic() - t0, 1), drain_s=round(drain_s, 1))
