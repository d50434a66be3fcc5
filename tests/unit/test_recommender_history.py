"""How the Recommender orders the user's own items (history candidates) and applies per-request
exclusions: the knobs the re-rank tuning chooses between (`streamrec tune`, app/evaluation/grid.py)."""

from __future__ import annotations

import pytest

from models.popularity import Trending
from models.profile import ProfileParams, apply_event, new_profile
from models.recommender import Recommender, RecommenderOptions, UserRequest
from schemas.events import Browse

T0 = 1_700_000_000_000


def _profile():
    """``a`` is viewed first after a long absence (the largest decayed weight), then ``b`` and ``c``
    a few seconds apart, ``c`` last."""
    profile = new_profile("u1")
    params = ProfileParams()
    stamps = {"old": T0, "a": T0 + 6 * 3600_000, "b": T0 + 6 * 3600_000 + 5_000, "c": T0 + 6 * 3600_000 + 10_000}
    for item, ts in stamps.items():
        apply_event(profile, Browse(event_id=f"e-{item}", user_id="u1", ts=ts, page="product", item_id=item,
                                    category="k"), params, None)
    return profile


def _history_scores(**options) -> dict[str, float]:
    recommender = Recommender(None, None, Trending(), RecommenderOptions(**options))
    return {c.item_id: c.score for c in recommender._history(_profile())}


def test_history_by_weight_favours_the_item_after_a_gap_and_by_recency_the_newest() -> None:
    by_weight = _history_scores(history_order="weight")
    assert max(by_weight, key=by_weight.get) == "a"
    assert by_weight["a"] == 1.0 and by_weight["c"] == pytest.approx(1 / 2**0.5)  # second by weight
    by_recency = _history_scores(history_order="recency", history_rank_power=1.0)
    assert by_recency == pytest.approx({"c": 1.0, "b": 1 / 2, "a": 1 / 3, "old": 1 / 4})
    # "session": the current session's items newest first, then the earlier sessions' items
    by_session = _history_scores(history_order="session", history_rank_power=1.0)
    assert max(by_session, key=by_session.get) == "c" and min(by_session, key=by_session.get) == "old"
    mixed = _history_scores(history_order="mixed", history_rank_power=1.0)
    assert mixed["c"] > mixed["b"] and mixed["a"] > mixed["b"]
    with pytest.raises(ValueError, match="history_order"):
        _history_scores(history_order="alphabetical")


def test_a_request_can_exclude_items_besides_the_purchased_ones() -> None:
    recommender = Recommender(None, None, Trending(), RecommenderOptions(list_size=10))
    profile = _profile()
    listed = {r.item_id for r in recommender.recommend([UserRequest(profile)], T0 + 7 * 3600_000)[0].items}
    assert {"a", "b", "c"} <= listed
    request = UserRequest(profile, exclude=frozenset({"a", "c"}))
    kept = {r.item_id for r in recommender.recommend([request], T0 + 7 * 3600_000)[0].items}
    assert kept == listed - {"a", "c"}


def test_adaptive_order_ranks_a_one_session_history_by_recency_and_a_longer_one_by_the_mix() -> None:
    # _profile() spans two sessions ("old" six hours before the rest): the mixed order applies.
    assert _history_scores(history_order="adaptive", history_rank_power=1.0) == pytest.approx(
        _history_scores(history_order="mixed", history_rank_power=1.0))
    # One session (events seconds apart): by recency, with the session's own rank power.
    profile = new_profile("u2")
    for i, item in enumerate(["a", "b", "a", "c"]):
        apply_event(profile, Browse(event_id=f"s-{i}", user_id="u2", ts=T0 + i * 5_000, page="product",
                                    item_id=item, category="k"), ProfileParams(), None)
    recommender = Recommender(None, None, Trending(),
                              RecommenderOptions(history_order="adaptive", history_session_power=1.0))
    scores = {c.item_id: c.score for c in recommender._history(profile)}
    assert scores == pytest.approx({"c": 1.0, "a": 1 / 2, "b": 1 / 3})
