"""Trending: decaying counts in event time, bounded memory, top lists with exclusions."""

from __future__ import annotations

import pytest

from models.popularity import Trending, log_popularity
from schemas.events import Click, OrderItem, Purchase

T0 = 1_700_000_000_000
HOUR = 3_600_000


def test_count_halves_after_one_half_life() -> None:
    t = Trending(half_life_s=3600.0)
    t.observe("a", "c1", T0)
    t.observe("a", "c1", T0)
    assert t.score("a") == pytest.approx(2.0)
    assert t.score("a", now_ms=T0 + HOUR) == pytest.approx(1.0)
    t.observe("b", "c2", T0 + 2 * HOUR)  # moves the clock: a is now two half-lives old
    assert t.score("a") == pytest.approx(0.5)
    assert t.score("b") == pytest.approx(1.0)
    assert t.score("unknown") == 0.0


def test_late_event_counts_decayed_by_its_age() -> None:
    t = Trending(half_life_s=3600.0)
    t.observe("a", "c", T0 + HOUR)
    t.observe("b", "c", T0)  # one hour late
    assert t.clock_ms == T0 + HOUR
    assert t.score("b") == pytest.approx(0.5)


def test_recent_beats_old_and_top_excludes() -> None:
    t = Trending(half_life_s=3600.0)
    for _ in range(3):
        t.observe("old", "c1", T0)
    for _ in range(2):
        t.observe("new", "c1", T0 + 2 * HOUR)
    t.observe("other", "c2", T0 + 2 * HOUR)
    assert [i for i, _ in t.top(3)] == ["new", "other", "old"]
    assert t.top(3)[2][1] == pytest.approx(0.75)
    assert [i for i, _ in t.top(2, exclude={"new"})] == ["other", "old"]
    assert [i for i, _ in t.top_in_category("c1", 5)] == ["new", "old"]
    assert t.top_in_category("nope", 5) == []
    assert t.top_categories(1)[0][0] == "c1"
    assert t.category_of("other") == "c2"


def test_rebase_keeps_scores() -> None:
    t = Trending(half_life_s=60.0)
    t.observe("a", "c", T0)
    t.observe("b", "c", T0 + 100 * 60_000)  # 100 half-lives later: forces a rebase
    assert t.score("b") == pytest.approx(1.0)
    assert t.score("a") == pytest.approx(2.0**-100)


def test_memory_is_bounded() -> None:
    t = Trending(max_items=100, max_per_category=10, max_categories=5, max_known_categories=300)
    for i in range(5000):
        t.observe(f"i{i}", f"c{i % 50}", T0 + i * 1000)
    assert len(t) <= 125
    assert len(t._cat_total) <= 6 and all(len(v) <= 12 for v in t._by_cat.values())
    assert len(t._category) == 300
    assert "i4999" in [i for i, _ in t.top(5)]  # the newest survive the pruning


def test_top_cache_invalidated_by_updates() -> None:
    t = Trending()
    t.observe("a", None, T0)
    assert t.top(1)[0][0] == "a"
    t.observe("b", None, T0)
    t.observe("b", None, T0)
    assert t.top(1)[0][0] == "b"


def test_observe_event_weights_and_category_memory() -> None:
    t = Trending()
    t.observe_event(Click(event_id="1", user_id="u", ts=T0, item_id="x", category="c9", action="add_to_cart"))
    t.observe_event(Purchase(event_id="2", user_id="u", ts=T0, order_id="o", items=[OrderItem(item_id="x")]))
    assert t.score("x") == pytest.approx(5.0)
    assert t.top_in_category("c9", 1)[0] == ("x", pytest.approx(5.0))  # category remembered


def test_checkpoint_round_trip() -> None:
    t = Trending()
    for i in range(30):
        t.observe(f"i{i % 7}", f"c{i % 3}", T0 + i * 1000)
    u = Trending.from_dict(t.to_dict())
    assert u.top(7) == t.top(7) and u.top_in_category("c1", 3) == t.top_in_category("c1", 3)


def test_log_popularity() -> None:
    assert log_popularity([0.0, 1.0, 3.0]) == pytest.approx([0.0, 0.5, 1.0])
    assert log_popularity([0.0]) == [0.0]


def test_cached_top_lists_stay_exact_under_updates_and_prunes() -> None:
    import random

    from models.popularity import _ranked

    t = Trending(half_life_s=60, max_items=300, max_per_category=50)
    rng = random.Random(1)
    ts = 0
    for i in range(6000):
        ts += rng.randint(0, 2000)
        t.observe(f"i{int(rng.paretovariate(1.2)) % 2000}", f"c{rng.randint(0, 3)}", ts)
        if i % 50 == 0:
            assert [k for k, _ in t.top(256)] == _ranked(t._items, 256)
            for c in range(4):
                table = t._by_cat.get(f"c{c}", {})
                assert [k for k, _ in t.top_in_category(f"c{c}", 256)] == _ranked(table, 256)


def test_batch_scores_equal_single_scores() -> None:
    """``scores`` (the re-ranker's batch lookup) gives exactly ``score`` of each item."""
    t = Trending(half_life_s=3600.0)
    for i, item in enumerate(["a", "b", "a", "c"]):
        t.observe(item, "c1", T0 + i * 600_000)
    items = ["a", "b", "c", "unknown"]
    assert t.scores(items) == [t.score(i) for i in items]
    assert t.scores(items, now_ms=T0 + 5 * HOUR) == [t.score(i, now_ms=T0 + 5 * HOUR) for i in items]
