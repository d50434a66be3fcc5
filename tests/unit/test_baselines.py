"""Each baseline on tiny hand-made streams, where the right answer is known."""

from __future__ import annotations

import random
from collections import Counter
from itertools import pairwise

import pytest

from app.evaluation.baselines import (
    ItemKNN,
    Popularity,
    RecentPopularity,
    SessionKNN,
    UserPop,
    baseline_factories,
)
from app.evaluation.baselines.common import Sessions, TopItems
from models.ranking import RankedList, Ranker, RankRequest
from schemas.events import Browse, Click, OrderItem, Purchase, UserEvent

MIN = 60 * 1000
T0 = 1_700_000_000_000


def served(system: Ranker, user: str, k: int, now_ms: int, exclude: frozenset[str] = frozenset()) -> RankedList:
    """One user's list through the batch interface."""
    (out,) = system.recommend([RankRequest(user, exclude=exclude)], now_ms, k=k)
    assert out.user_id == user
    return out


class Stream:
    """Builds events with increasing ts and unique ids."""

    def __init__(self) -> None:
        self.n = 0

    def view(self, user: str, item: str, ts: int, session: str | None = None) -> Browse:
        self.n += 1
        return Browse(
            event_id=f"e{self.n}", user_id=user, ts=ts, page="product", item_id=item, session_id=session
        )

    def cart(self, user: str, item: str, ts: int) -> Click:
        self.n += 1
        return Click(event_id=f"e{self.n}", user_id=user, ts=ts, item_id=item, action="add_to_cart")

    def buy(self, user: str, items: list[str], ts: int) -> Purchase:
        self.n += 1
        return Purchase(
            event_id=f"e{self.n}",
            user_id=user,
            ts=ts,
            order_id=f"o{self.n}",
            items=[OrderItem(item_id=item) for item in items],
        )

    def home(self, user: str, ts: int) -> Browse:
        self.n += 1
        return Browse(event_id=f"e{self.n}", user_id=user, ts=ts, page="home")


def test_every_baseline_follows_the_protocol() -> None:
    factories = baseline_factories()
    assert set(factories) == {"popularity", "recent_popularity", "user_pop", "item_knn", "session_knn", "vsknn"}
    for name, factory in factories.items():
        system = factory()
        assert isinstance(system, Ranker)
        assert system.name == name
        system.fit([])
        listed = served(system, "nobody", 5, T0)
        assert listed.items == ()
        assert listed.cold_start is True


def test_top_items_matches_a_full_sort() -> None:
    rng = random.Random(7)
    top = TopItems(size=10)
    counts: Counter[str] = Counter()
    first_reached: dict[tuple[str, int], int] = {}
    for step in range(3000):
        item = f"i{min(int(rng.paretovariate(1.2)), 60)}"
        top.add(item)
        counts[item] += 1
        first_reached[(item, counts[item])] = step
    head = top.head(10)
    assert [counts[item] for item in head] == sorted(counts.values(), reverse=True)[:10]
    # among equal counts, the item that reached the count first ranks higher
    for above, below in pairwise(head):
        if counts[above] == counts[below]:
            assert first_reached[(above, counts[above])] < first_reached[(below, counts[below])]


def test_popularity_ranks_by_count_and_learns_online() -> None:
    s = Stream()
    system = Popularity()
    system.fit(
        [
            s.view("u1", "a", T0),
            s.view("u2", "b", T0 + 1),
            s.view("u3", "b", T0 + 2),
            s.buy("u4", ["c", "b"], T0 + 3),
        ]
    )
    assert served(system, "u1", 3, T0 + 10).item_ids == ("b", "a", "c")
    system.observe([s.view("u5", "a", T0 + 11)])
    system.observe([s.view("u6", "a", T0 + 12)])
    assert served(system, "u1", 2, T0 + 13).item_ids == ("b", "a")  # 3 each: b got there first
    system.observe([s.view("u7", "a", T0 + 14)])
    assert served(system, "u1", 2, T0 + 15).item_ids == ("a", "b")
    assert served(system, "u1", 2, T0 + 13).cold_start is False
    assert served(system, "new", 2, T0 + 13).cold_start is True


def test_recent_popularity_forgets_events_outside_the_window() -> None:
    s = Stream()
    system = RecentPopularity(window_ms=10 * MIN, refresh_ms=0)
    system.fit([s.view(f"u{n}", "old", T0 + n) for n in range(5)])
    system.observe([s.view("x", "new", T0 + 8 * MIN)])
    assert served(system, "x", 2, T0 + 9 * MIN).item_ids == ("old", "new")
    assert served(system, "x", 2, T0 + 11 * MIN).item_ids == ("new",)


def test_recent_popularity_refreshes_at_most_once_per_period() -> None:
    s = Stream()
    system = RecentPopularity(window_ms=60 * MIN, refresh_ms=MIN)
    system.fit([s.view("u1", "a", T0)])
    assert served(system, "u1", 2, T0).item_ids == ("a",)
    system.observe([s.view("u2", "b", T0 + 1000)])
    system.observe([s.view("u3", "b", T0 + 2000)])
    assert served(system, "u1", 2, T0 + 3000).item_ids == ("a",)  # still the published list
    assert served(system, "u1", 2, T0 + MIN).item_ids == ("b", "a")


def test_user_pop_ranks_own_items_by_count_then_recency_and_backfills() -> None:
    s = Stream()
    system = UserPop()
    events: list[UserEvent] = [
        s.view("u", "a", T0),
        s.view("u", "b", T0 + 1),
        s.view("u", "a", T0 + 2),
        s.view("u", "c", T0 + 3),
        s.view("u", "b", T0 + 4),
        s.view("u", "d", T0 + 5),
        s.view("v", "p", T0 + 6),
        s.view("w", "p", T0 + 7),
        s.view("v", "q", T0 + 8),
    ]
    system.fit(events)
    # a and b twice (b more recent), then d and c once (d more recent), then popular p, not a/b again
    listed = served(system, "u", 6, T0 + 10)
    assert listed.item_ids == ("b", "a", "d", "c", "p", "q")
    assert listed.cold_start is False
    cold = served(system, "stranger", 2, T0 + 10)
    assert cold.item_ids == ("a", "b")  # a, b, p were all touched twice; a got there first
    assert cold.cold_start is True
    system.observe([s.cart("u", "c", T0 + 11)])
    system.observe([s.buy("u", ["c"], T0 + 12)])
    assert served(system, "u", 1, T0 + 13).item_ids == ("c",)


def test_item_knn_recommends_the_co_occurring_item() -> None:
    s = Stream()
    train = [
        s.view("s1", "a", T0),
        s.view("s1", "b", T0 + 1),
        s.view("s2", "a", T0 + 2),
        s.view("s2", "b", T0 + 3),
        s.view("s3", "a", T0 + 4),
        s.view("s3", "c", T0 + 5),
        s.view("s4", "d", T0 + 6),
        s.view("s4", "e", T0 + 7),
        s.view("s5", "d", T0 + 8),
        s.view("s6", "d", T0 + 9),
    ]
    system = ItemKNN()
    system.fit(train)
    system.observe([s.view("u", "a", T0 + 10)])
    listed = served(system, "u", 3, T0 + 11)
    # sim(a,b) = 2/sqrt(4*2) > sim(a,c) = 1/sqrt(4*1); then the most popular item as backfill (a: 4)
    assert listed.item_ids == ("b", "c", "a")
    assert listed.cold_start is False


def test_item_knn_learns_pairs_online_and_only_within_a_session() -> None:
    s = Stream()
    system = ItemKNN()
    system.fit([])
    system.observe([s.view("x", "p", T0)])
    system.observe([s.view("x", "q", T0 + MIN)])
    system.observe([s.view("x", "r", T0 + 40 * MIN)])  # a new session: no pair with p or q
    system.observe([s.view("u", "p", T0 + 41 * MIN)])
    listed = served(system, "u", 1, T0 + 42 * MIN)
    assert listed.item_ids == ("q",)
    system.observe([s.view("v", "r", T0 + 43 * MIN)])
    # r never shared a session with p or q: v's list is the popularity backfill alone
    assert served(system, "v", 3, T0 + 44 * MIN).item_ids == ("p", "r", "q")


def test_session_knn_finds_the_neighbour_session() -> None:
    s = Stream()
    train = [
        s.view("n1", "a", T0),
        s.view("n1", "b", T0 + 1),
        s.view("n1", "x", T0 + 2),
        s.view("n2", "c", T0 + 3),
        s.view("n2", "d", T0 + 4),
        s.view("n2", "d", T0 + 5),
        s.view("n3", "d", T0 + 6),
    ]
    system = SessionKNN()
    system.fit(train)
    system.observe([s.view("u", "a", T0 + 10)])
    listed = served(system, "u", 5, T0 + 11)
    # n1 shares a with u: its items come first; d (most popular) only as backfill after them
    # scored by distance to the shared item inside n1: a 1, b 1/2, x 1/3
    assert listed.item_ids == ("a", "b", "x", "d", "c")
    assert listed.cold_start is False


def test_session_knn_prefers_recent_neighbours() -> None:
    s = Stream()
    day = 24 * 60 * MIN
    system = SessionKNN(recency_half_life_ms=day)
    system.fit(
        [
            s.view("old", "a", T0),
            s.view("old", "y", T0 + 1),
            s.view("recent", "a", T0 + 2 * day),
            s.view("recent", "z", T0 + 2 * day + 1),
        ]
    )
    system.observe([s.view("u", "a", T0 + 2 * day + 10)])
    items = served(system, "u", 3, T0 + 2 * day + 11).item_ids
    assert items.index("z") < items.index("y")


def test_session_knn_weights_shared_items_by_position_in_the_current_session() -> None:
    s = Stream()
    system = SessionKNN()
    system.fit(
        [
            s.view("n_old", "p", T0),
            s.view("n_old", "m", T0 + 1),
            s.view("n_new", "q", T0 + 2),
            s.view("n_new", "n", T0 + 3),
        ]
    )
    system.observe([s.view("u", "p", T0 + 10)])
    system.observe([s.view("u", "q", T0 + 11)])  # q is the newest: its neighbour weighs more
    items = served(system, "u", 4, T0 + 12).item_ids
    assert items.index("n") < items.index("m")


def test_session_knn_uses_the_last_session_when_none_is_ongoing() -> None:
    s = Stream()
    system = SessionKNN()
    system.fit([s.view("n1", "a", T0), s.view("n1", "b", T0 + 1), s.view("u", "a", T0 + 2)])
    later = T0 + 5 * 60 * MIN
    assert served(system, "u", 2, later).item_ids == ("a", "b")


def test_sessions_split_on_the_inactivity_gap_or_follow_session_ids() -> None:
    s = Stream()
    sessions = Sessions()
    first = sessions.assign(s.view("u", "a", T0))
    assert sessions.assign(s.view("u", "b", T0 + 29 * MIN)) == first
    second = sessions.assign(s.view("u", "c", T0 + 60 * MIN))
    assert second != first
    assert sessions.current("u", T0 + 70 * MIN) == second
    assert sessions.current("u", T0 + 100 * MIN) is None
    assert sessions.last("u") == second
    explicit = sessions.assign(s.view("u", "d", T0 + 61 * MIN, session="abc"))
    assert explicit == ("u", "abc")
    assert sessions.assign(s.home("u", T0 + 62 * MIN)) == ("u", "abc")


@pytest.mark.parametrize("name", sorted(baseline_factories()))
def test_browse_without_item_is_accepted_and_lists_have_no_duplicates(name: str) -> None:
    s = Stream()
    system = baseline_factories()[name]()
    system.fit([s.view(f"u{n % 3}", f"i{n % 7}", T0 + n * MIN) for n in range(40)])
    system.observe([s.home("u1", T0 + 41 * MIN)])
    system.observe([s.buy("u1", ["i1", "i9"], T0 + 42 * MIN)])
    items = served(system, "u1", 20, T0 + 43 * MIN).item_ids
    assert 0 < len(items) <= 20
    assert len(set(items)) == len(items)
