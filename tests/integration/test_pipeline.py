"""End to end on a real Tansu broker, a real worker process and a real milvus-lite file (issue 3)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from app.store.sqlite import SqliteStore
from schemas import topics
from schemas.events import Browse, Click, OrderItem, Purchase
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def now_ms() -> int:
    return int(time.time() * 1000)


def items_by_category(item_vectors) -> dict[str, list[str]]:
    by_cat: dict[str, list[str]] = {}
    for item in item_vectors.ids:
        by_cat.setdefault(item_vectors.categories[item], []).append(item)
    return by_cat


def category_session(user: str, category: str, items: list[str], start: int) -> list:
    events = [Browse(event_id=f"{user}-b{i}", user_id=user, ts=start + i * 20_000, page="product",
                     item_id=item, category=category, dwell_ms=30_000) for i, item in enumerate(items[:6])]
    events.append(Click(event_id=f"{user}-c0", user_id=user, ts=start + 200_000, item_id=items[0],
                        category=category))
    return events


def test_list_follows_the_category_a_user_browses(worker, kafka, item_vectors) -> None:
    by_cat = items_by_category(item_vectors)
    category, items = max(by_cat.items(), key=lambda kv: len(kv[1]))
    user = "it-category-user"
    start = now_ms() - 300_000
    kafka.send_events(category_session(user, category, items, start))

    # the list built after the whole session (its click at start + 200 s): one refreshed after the
    # first views alone is filled mostly from other tests' trending and co-occurrence (seen in CI: 9 of 20)
    lists = kafka.recommendations(user, lambda recs: any(r.source_ts >= start + 200_000 for r in recs))
    latest = lists[-1]
    cats = Counter(item_vectors.categories.get(i.item_id) for i in latest.items)
    assert latest.items and all(i.reason for i in latest.items)
    assert cats[category] / len(latest.items) >= 0.5, (category, cats)

    kafka.send_events([Click(event_id=f"{user}-c1", user_id=user, ts=now_ms(), item_id=items[1], category=category,
                             action="add_to_cart")])
    later = kafka.recommendations(user, lambda recs: len(recs) > len(lists))
    versions = [r.version for r in later]
    assert len(later) > len(lists) and versions == sorted(set(versions))


def test_a_bought_item_never_comes_back(worker, kafka, item_vectors) -> None:
    by_cat = items_by_category(item_vectors)
    category, items = max(by_cat.items(), key=lambda kv: len(kv[1]))
    user = "it-buyer"
    start = now_ms() - 600_000
    kafka.send_events(category_session(user, category, items, start))
    bought = items[0]  # viewed six times and clicked: a strong candidate until bought
    kafka.recommendations(user, lambda recs: any(r.source_ts == start + 200_000 for r in recs))
    purchase = Purchase(event_id=f"{user}-p0", user_id=user, ts=start + 300_000, order_id="o-1",
                        items=[OrderItem(item_id=bought, category=category)])
    kafka.send_events([purchase])
    # the list that reflects the order and nothing after it (the browses are sent only once it is out)
    lists = kafka.recommendations(user, lambda recs: any(r.source_ts >= purchase.ts for r in recs))
    on_purchase = next(r for r in lists if r.source_ts >= purchase.ts)
    assert on_purchase.source_ts == purchase.ts and on_purchase.scene == "post_purchase"
    browses = [Browse(event_id=f"{user}-after{i}", user_id=user, ts=start + 400_000 + i * 1000, page="product",
                      item_id=item, category=category) for i, item in enumerate(items[2:5])]
    kafka.send_events(browses)
    lists = kafka.recommendations(user, lambda recs: any(r.source_ts == browses[-1].ts for r in recs))
    after = [r for r in lists if r.source_ts >= purchase.ts]
    # 100 s after the order (past the 60 s minimum dwell), three views of one category are the strong
    # signal that leaves post_purchase for shopping (models/scene.py, decide_scene)
    assert after[-1].source_ts == browses[-1].ts and after[-1].scene == "shopping", after[-1]
    for record in after:
        assert bought not in {i.item_id for i in record.items}, (record.version, record.source_ts)


def test_bad_input_is_dead_lettered_with_its_reason(worker, kafka) -> None:
    user = "it-bad-input"
    good = [Browse(event_id=f"{user}-g{i}", user_id=user, ts=now_ms(), page="home") for i in range(2)]
    bad = [
        (topics.CLICK, b"{this is not json", "invalid_json"),
        (topics.BROWSE, b'{"event_id": "m1", "user_id": "u", "ts": 1700000000000}', "missing_field"),
        (topics.CLICK, b'{"event_id": "w1", "user_id": "u", "ts": "yesterday", "item_id": "i"}', "wrong_type"),
        (topics.CLICK, b'{"type": "teleport", "event_id": "t1", "user_id": "u", "ts": 1700000000000}',
         "unknown_type"),
    ]
    before = worker.stats()
    kafka.send_events(good[:1])
    kafka.send([(topic, user.encode(), raw) for topic, raw, _ in bad])
    kafka.send_events(good[1:])

    dead = kafka.read_until(topics.DEADLETTER,
                            lambda ms: {m.value for m in ms} >= {raw for _, raw, _ in bad})
    reasons = {m.value: dict(m.headers)["reason"].decode() for m in dead}
    for topic, raw, reason in bad:
        assert reasons[raw] == reason, (raw, reasons[raw])
    sources = {m.value: m.key.decode() for m in dead}
    assert all(sources[raw] == topic for topic, raw, _ in bad)

    after = wait_for(lambda: (s := worker.stats()).get("profile.accepted", 0) - before.get("profile.accepted", 0) >= 2
                     and s)
    assert after.get("ingest.deadlettered", 0) - before.get("ingest.deadlettered", 0) == len(bad)
    # the good event sent after the bad ones still reaches the user's list: nothing stalled behind them
    lists = kafka.recommendations(user, lambda recs: any(r.source_ts >= good[1].ts for r in recs))
    assert {r.source_ts for r in lists} <= {g.ts for g in good} and lists[-1].source_ts == good[1].ts


def test_a_redelivered_event_counts_once(worker, kafka) -> None:
    user = "it-duplicate"
    event = Click(event_id=f"{user}-once", user_id=user, ts=now_ms(), item_id="dup-item", category="dup-cat")
    before = worker.stats()
    kafka.send_events([event, event])
    stats = wait_for(lambda: (s := worker.stats()).get("profile.duplicates", 0) - before.get("profile.duplicates", 0) >= 1
                     and s)
    assert stats["profile.duplicates"] - before.get("profile.duplicates", 0) == 1
    lists = kafka.recommendations(user, lambda recs: bool(recs))
    assert all(r.source_ts == event.ts and r.items for r in lists)
    assert [r.version for r in lists] == sorted({r.version for r in lists})

    async def profile_counts() -> dict:
        store = await SqliteStore.open(worker.data_dir / "streamrec.db", 0)
        try:
            snapshot = await store.get_profile(user)
            return snapshot.payload_json()["counts"] if snapshot else {}
        finally:
            await store.close()

    counts = wait_for(lambda: asyncio.run(profile_counts()))
    assert counts.get("click") == 1
    def balanced(s: dict) -> bool:
        return s["ingest.consumed"] == s.get("ingest.deadlettered", 0) + s["profile.accepted"] + s[
            "profile.duplicates"]

    final = wait_for(lambda: balanced(s := worker.stats()) and s)
    assert balanced(final)
