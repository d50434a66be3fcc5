"""Bought items (DESIGN.md §2.5): not listed within the cool-down after the purchase nor in the
post-purchase scene the order started; after it they may come back from the user's history.
Old profile rows (the table's JSON) decode and get the rule."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest

from app.evaluation.grid import GRID
from app.evaluation.systems import VARIANTS, SharedModel, streamrec_ranker
from app.runtime.services import Services
from app.runtime.settings import Settings
from models.popularity import Trending
from models.profile import (
    ProfileParams,
    UserProfile,
    apply_event,
    decode_profile,
    encode_profile,
    new_profile,
)
from models.recommender import Recommender, RecommenderOptions, UserRequest
from schemas.events import Browse, OrderItem, Purchase, UserEvent

T0 = 1_700_000_000_000
MIN = 60_000
HOUR = 60 * MIN
DAY_S = 24 * 3600.0


def _view(n: int, ts: int, item: str) -> Browse:
    return Browse(event_id=f"v{n}", user_id="u1", ts=ts, page="product", item_id=item, category="k")


def _buy(n: int, ts: int, *items: str) -> Purchase:
    return Purchase(event_id=f"p{n}", user_id="u1", ts=ts, order_id=f"o{n}",
                    items=[OrderItem(item_id=item, category="k") for item in items])


def _fold(events: list[UserEvent]) -> UserProfile:
    profile = new_profile("u1")
    for event in events:
        apply_event(profile, event, ProfileParams(), None)
    return profile


def _bought_x(*later: UserEvent) -> UserProfile:
    """Views of x, y, w; x bought a minute later; then ``later``."""
    return _fold([_view(1, T0, "x"), _view(2, T0 + 10_000, "y"), _view(3, T0 + 20_000, "w"),
                  _buy(4, T0 + MIN, "x"), *later])


def _listed(profile: UserProfile, cooldown_s: float = DAY_S, **options) -> dict[str, str]:
    """The list the Recommender (no model: history, co-occurrence, trending) makes: item -> reason."""
    recommender = Recommender(None, None, Trending(),
                              RecommenderOptions(list_size=20, bought_cooldown_s=cooldown_s, **options))
    ranked = recommender.recommend([UserRequest(profile)], profile.clock_ms + 1)[0].items
    return {r.item_id: r.reason for r in ranked}


def test_within_the_cool_down_a_bought_item_is_excluded_outside_the_post_purchase_scene() -> None:
    profile = _bought_x(_view(5, T0 + 3 * HOUR, "z"))  # a new session: post-purchase is over
    assert profile.scene == "browsing"
    assert profile.exclusions(profile.clock_ms, DAY_S) == frozenset({"x"})
    listed = _listed(profile)
    assert "x" not in listed and {"y", "w", "z"} <= set(listed)
    # The cool-down counts from the latest order of the item: bought again, excluded again.
    assert profile.exclusions(T0 + MIN + int(DAY_S * 1000), DAY_S) == frozenset()  # just over
    again = _bought_x(_buy(6, T0 + 20 * HOUR, "x"), _view(7, T0 + 26 * HOUR, "z"))
    assert again.exclusions(again.clock_ms, DAY_S) == frozenset({"x"})


def test_the_post_purchase_scene_excludes_its_orders_items_even_without_a_cool_down() -> None:
    profile = _bought_x(_view(5, T0 + 2 * MIN, "z"))
    assert profile.scene == "post_purchase"
    assert profile.exclusions(profile.clock_ms, 0.0) == frozenset({"x"})
    assert "x" not in _listed(profile, cooldown_s=0.0)
    # A second order in the same scene: both orders' items stay out while the scene lasts.
    apply_event(profile, _buy(6, T0 + 5 * MIN, "w"), ProfileParams(), None)
    assert profile.scene == "post_purchase"
    assert profile.exclusions(profile.clock_ms, 0.0) == frozenset({"x", "w"})
    assert not {"x", "w"} & set(_listed(profile, cooldown_s=0.0))
    # Once the scene is over (a new session), a zero cool-down lets them back from the history.
    apply_event(profile, _view(7, T0 + 2 * HOUR, "z"), ProfileParams(), None)
    assert profile.scene == "browsing"
    assert profile.exclusions(profile.clock_ms, 0.0) == frozenset()
    assert {"x", "w"} <= set(_listed(profile, cooldown_s=0.0))


def test_a_scene_the_order_page_started_excludes_the_latest_order_not_every_purchase() -> None:
    """Only orders of the scene (and the latest order) are its items, not every earlier purchase."""
    profile = _fold([_buy(1, T0, "old"), _view(2, T0 + 2 * MIN, "y"), _buy(3, T0 + 3 * MIN, "x"),
                     _view(4, T0 + 3 * HOUR, "z"),
                     Browse(event_id="v5", user_id="u1", ts=T0 + 3 * HOUR + MIN, page="order")])
    assert profile.scene == "post_purchase" and profile.scene_since_ms == T0 + 3 * HOUR + MIN
    assert profile.exclusions(profile.clock_ms, 0.0) == frozenset({"x"})  # the latest order only


def test_after_the_cool_down_a_bought_item_comes_back_when_it_scores_on_history() -> None:
    profile = _bought_x(_view(5, T0 + 25 * HOUR, "z"))
    assert profile.exclusions(profile.clock_ms, DAY_S) == frozenset()
    listed = _listed(profile)
    assert listed.get("x") == "you viewed this item"  # a history candidate, ranked like y and w
    # The old rule (never again) and a longer cool-down keep it out; relist_bought lets it in at once.
    assert "x" not in _listed(profile, cooldown_s=math.inf)
    assert "x" not in _listed(profile, cooldown_s=2 * DAY_S)
    assert "x" in _listed(_bought_x(_view(5, T0 + 3 * HOUR, "z")), relist_bought=True)  # within the cool-down
    # In the post-purchase scene the order's category is excluded as substitutes (DESIGN.md §2.3), for
    # the what-if too: every item here is of category "k", so nothing is listed.
    assert _listed(_bought_x(_view(5, T0 + 2 * MIN, "z")), relist_bought=True) == {}


def test_a_row_written_before_the_rule_decodes_and_gets_it() -> None:
    """A profile table value as the worker wrote it before issue 21 (format 1, the table's ``_ledger``
    key beside it): it decodes, keeps every value, and its purchases follow the cool-down."""
    now = T0 + 30 * HOUR
    row = orjson.dumps({
        "format": 1, "user_id": "u9", "clock_ms": now,
        "counts": {"click": 0, "browse": 3, "purchase": 2, "cart": 0, "wishlist": 0},
        "short_cat": {"k": 0.5}, "long_cat": {"k": 3.9},
        "items": {"x": [0.01, T0 + 2 * HOUR, "k"], "old": [0.001, T0, "k"], "z": [1.0, now, "k"]},
        "purchased": {"old": T0, "x": T0 + 10 * HOUR},
        "last_order": [["x", "k"]], "last_purchase_ts": T0 + 10 * HOUR,
        "recent_event_ids": ["e1", "e2", "e3", "e4", "e5"],
        "session": {"start_ts": now, "last_ts": now, "n_events": 1, "n_product_views": 1, "n_carts": 0,
                    "n_wishlist": 0, "n_purchases": 0, "n_review_views": 0, "n_order_views": 0,
                    "n_cart_page_views": 0, "dwell_ms_total": 0, "n_dwell": 0, "cat_views": {"k": 1}},
        "scene": "browsing", "scene_since_ms": now, "scene_low_streak": 0, "scene_cat_views": {"k": 1},
        "intent": 0.0, "pending": [], "accepted": 5, "duplicates": 0,
        "_ledger": {"e5": ["ecom.browse/0/7", 1]},
    })
    profile = decode_profile(row)
    assert profile.purchased == {"old": T0, "x": T0 + 10 * HOUR}
    assert encode_profile(profile) == orjson.dumps({k: v for k, v in orjson.loads(row).items() if k != "_ledger"})
    assert profile.exclusions(now, DAY_S) == frozenset({"x"})  # 20 h ago: in the cool-down; "old": 30 h
    assert profile.exclusions(now, math.inf) == frozenset({"old", "x"})
    listed = _listed(profile)
    assert "old" in listed and "x" not in listed


def test_the_cool_down_is_one_setting_passed_to_the_worker_and_the_evaluation_knows_the_rules(
        tmp_path: Path) -> None:
    assert Settings().bought_cooldown_s == DAY_S == RecommenderOptions().bought_cooldown_s
    services = Services.load(Settings(bought_cooldown_s=3600.0, model_dir=tmp_path / "none",
                                      data_dir=tmp_path))
    assert services.recommender.options.bought_cooldown_s == 3600.0
    with pytest.raises(ValueError):
        Settings(bought_cooldown_s=-1.0)
    names = [variant.name for variant in VARIANTS]
    assert {"streamrec", "streamrec_never_relist_bought", "streamrec_relist_bought"} <= set(names) <= set(GRID)
    by_name = {variant.name: variant for variant in VARIANTS}
    shared = SharedModel()
    try:
        default = streamrec_ranker(by_name["streamrec"], shared)
        never = streamrec_ranker(by_name["streamrec_never_relist_bought"], shared)
        relist = streamrec_ranker(by_name["streamrec_relist_bought"], shared)
    finally:
        shared.close()
    assert isinstance(default, Recommender) and isinstance(never, Recommender) and isinstance(relist, Recommender)
    assert default.options.bought_cooldown_s == DAY_S and not default.options.relist_bought
    assert never.options.bought_cooldown_s == math.inf and not never.options.relist_bought
    assert relist.options.relist_bought
