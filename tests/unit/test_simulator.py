"""The synthetic shop: deterministic, ordered, valid, and with the scene structure the pipeline expects."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict

import pytest

from app.tools.simulator import SESSION_GAP_MS, simulate
from schemas import topics
from schemas.events import Browse, CatalogItem, Click, Purchase, event_items
from schemas.validation import Limits, decode_event, encode_event, event_type

START = 1_700_000_000_000
N_ITEMS = 600


@pytest.fixture(scope="module")
def events() -> list:
    return list(simulate(n_users=300, n_items=N_ITEMS, n_categories=20, n_events=20_000, seed=11,
                         start_ts_ms=START))


def user_events(events: list) -> list:
    return [e for e in events if not isinstance(e, CatalogItem)]


def test_deterministic_for_a_seed(events: list) -> None:
    again = list(simulate(n_users=300, n_items=N_ITEMS, n_categories=20, n_events=20_000, seed=11,
                          start_ts_ms=START))
    assert again == events
    other = list(simulate(n_users=300, n_items=N_ITEMS, n_categories=20, n_events=2_000, seed=12,
                          start_ts_ms=START))
    assert other != events[: len(other)]


def test_counts_order_and_validity(events: list) -> None:
    users = user_events(events)
    assert len(users) == 20_000
    assert sum(isinstance(e, CatalogItem) for e in events) == N_ITEMS
    assert events[0].ts == START
    assert all(a.ts <= b.ts for a, b in itertools.pairwise(events))
    assert len({e.event_id for e in users}) == len(users)
    now = events[-1].ts
    for event in events:
        topic = topics.TOPIC_BY_TYPE[event_type(event)]
        assert decode_event(encode_event(event), topic, Limits(), now) == event


def test_sessions_agree_with_the_30_minute_gap(events: list) -> None:
    last: dict[str, tuple[int, str]] = {}
    for event in user_events(events):
        previous = last.get(event.user_id)
        if previous is not None:
            new_session = event.session_id != previous[1]
            assert new_session == (event.ts - previous[0] > SESSION_GAP_MS)
        last[event.user_id] = (event.ts, event.session_id)


def test_scene_structure(events: list) -> None:
    users = user_events(events)
    kinds = Counter((type(e).__name__, getattr(e, "page", None) or getattr(e, "action", None)) for e in users)
    for kind in [("Browse", "home"), ("Browse", "category"), ("Browse", "search"), ("Browse", "product"),
                 ("Click", "open"), ("Click", "add_to_cart"), ("Click", "wishlist"), ("Browse", "cart"),
                 ("Purchase", None), ("Browse", "order"), ("Browse", "review")]:
        assert kinds[kind] > 0, kind
    assert kinds[("Browse", "product")] > kinds[("Click", "add_to_cart")] > kinds[("Purchase", None)]

    by_session: dict[str, list] = defaultdict(list)
    for event in users:
        by_session[event.session_id].append(event)
    for session in by_session.values():
        carted = set()
        bought_at = None
        for k, event in enumerate(session):
            if isinstance(event, Click) and event.action == "add_to_cart":
                carted.add(event.item_id)
            if isinstance(event, Purchase):
                # What is bought was put in the cart in this session, right after the cart page.
                assert {line.item_id for line in event.items} <= carted
                assert all(line.price and line.price > 0 for line in event.items)
                assert isinstance(session[k - 1], Browse) and session[k - 1].page == "cart"
                bought_at = k
            if isinstance(event, Browse) and event.page in ("order", "review"):
                assert bought_at is not None  # post-purchase pages only after an order
        if bought_at is not None:
            after = session[bought_at + 1:]
            assert all(isinstance(e, Browse) and e.page in ("order", "review") for e in after)


def test_shopping_focuses_on_one_category(events: list) -> None:
    # Before each cart add, the session viewed other items of the same category (comparisons).
    compared = 0
    by_session: dict[str, list] = defaultdict(list)
    for event in user_events(events):
        by_session[event.session_id].append(event)
    for session in by_session.values():
        for k, event in enumerate(session):
            if isinstance(event, Click) and event.action == "add_to_cart":
                earlier = {i for e in session[:k] for i, c in event_items(e) if c == event.category}
                compared += len(earlier - {event.item_id}) > 0
    adds = sum(isinstance(e, Click) and e.action == "add_to_cart" for e in events)
    assert compared > adds / 2


def test_new_items_and_users_appear_over_time(events: list) -> None:
    catalog_ts = {e.item_id: e.ts for e in events if isinstance(e, CatalogItem)}
    late_items = [item for item, ts in catalog_ts.items() if ts > START]
    assert len(late_items) > N_ITEMS // 10
    used_first: dict[str, int] = {}
    for event in user_events(events):
        for item, _ in event_items(event):
            assert item in catalog_ts and catalog_ts[item] <= event.ts, item  # announced before use
            used_first.setdefault(item, event.ts)
    assert any(item in used_first for item in late_items)

    first_seen: dict[str, int] = {}
    for event in user_events(events):
        first_seen.setdefault(event.user_id, event.ts)
    span = events[-1].ts - START
    assert sum(ts > START + span / 2 for ts in first_seen.values()) > 0


def test_popularity_has_a_long_tail(events: list) -> None:
    views = Counter(e.item_id for e in user_events(events) if isinstance(e, Browse) and e.page == "product")
    counts = sorted(views.values(), reverse=True)
    top = sum(counts[: len(counts) // 10])
    assert top > 0.3 * sum(counts)  # the top 10% of items get far more than 10% of views


def test_dwell_and_argument_checks() -> None:
    few = list(simulate(n_users=5, n_items=10, n_categories=2, n_events=200, seed=1, start_ts_ms=START))
    pages = [e for e in few if isinstance(e, Browse)]
    assert pages and all(e.dwell_ms is not None and e.dwell_ms > 0 for e in pages)
    with pytest.raises(ValueError):
        list(simulate(n_users=0, n_items=10, n_categories=2, n_events=10, seed=1, start_ts_ms=START))
