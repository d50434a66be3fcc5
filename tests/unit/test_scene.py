"""Scene decisions with hysteresis, the rules baseline and the delayed-label intent model."""

from __future__ import annotations

import math

from models.scene import (
    BROWSING,
    FEATURE_NAMES,
    POST_PURCHASE,
    SHOPPING,
    SceneModel,
    SceneParams,
    SceneSignals,
    decide_scene,
    rule_scene,
)

P = SceneParams(
    upper_intent=0.6,
    lower_intent=0.35,
    low_events_to_leave=3,
    min_dwell_s=60,
    post_purchase_s=1800,
    strong_view_count=3,
    max_pending=4,
    pending_min_gap_s=120,
)
NONE = SceneSignals()
MIN = 60_000


def _run(scene: str, intents: list[float], step_ms: int = 10_000, since: int = 0) -> list[str]:
    """Feed intents one event every step_ms through decide_scene; returns the scene after each."""
    streak, out, now = 0, [], since
    for intent in intents:
        now += step_ms
        d = decide_scene(scene, since, streak, None, now, intent, NONE, P)  # type: ignore[arg-type]
        if d.scene != scene:
            since = now
        scene, streak = d.scene, d.low_streak
        out.append(scene)
    return out


def test_high_intent_switches_to_shopping_only_after_min_dwell() -> None:
    scenes = _run(BROWSING, [0.9] * 8, step_ms=10_000)
    # dwell of 60 s is reached on the 6th event (t = 60 s)
    assert scenes == [BROWSING] * 5 + [SHOPPING] * 3


def test_no_flapping_on_alternating_intent() -> None:
    scenes = _run(SHOPPING, [0.1, 0.9] * 20, step_ms=30_000)
    assert set(scenes) == {SHOPPING}
    # intent between the thresholds never enters shopping
    assert set(_run(BROWSING, [0.5, 0.55] * 20, step_ms=30_000)) == {BROWSING}


def test_shopping_needs_consecutive_low_events_to_leave() -> None:
    scenes = _run(SHOPPING, [0.1, 0.1, 0.1, 0.1], step_ms=30_000)
    assert scenes == [SHOPPING, SHOPPING, BROWSING, BROWSING]


def test_purchase_goes_post_purchase_and_stays_for_the_period() -> None:
    d = decide_scene(SHOPPING, 0, 0, 5 * MIN, 5 * MIN, 0.9, SceneSignals(is_purchase=True), P)
    assert d.scene == POST_PURCHASE and d.reason == "purchase"
    # high intent alone does not leave post_purchase within the period
    d = decide_scene(POST_PURCHASE, 5 * MIN, 0, 5 * MIN, 20 * MIN, 0.99, NONE, P)
    assert d.scene == POST_PURCHASE
    # after the period, back to browsing
    d = decide_scene(POST_PURCHASE, 5 * MIN, 0, 5 * MIN, 40 * MIN, 0.1, NONE, P)
    assert d.scene == BROWSING and d.reason == "post-purchase period over"


def test_new_shopping_signals_leave_post_purchase_after_dwell() -> None:
    cart = SceneSignals(is_cart=True)
    assert decide_scene(POST_PURCHASE, 0, 0, 0, 30_000, 0.2, cart, P).scene == POST_PURCHASE
    assert decide_scene(POST_PURCHASE, 0, 0, 0, 2 * MIN, 0.2, cart, P).scene == SHOPPING
    views = SceneSignals(category_views=3)
    assert decide_scene(POST_PURCHASE, 0, 0, 0, 2 * MIN, 0.2, views, P).scene == SHOPPING


def test_order_and_review_pages() -> None:
    order = SceneSignals(is_order_page=True)
    assert decide_scene(BROWSING, 0, 0, None, MIN, 0.2, order, P).scene == POST_PURCHASE
    review = SceneSignals(is_review_page=True)
    # reviews before any purchase are comparisons, not post-purchase
    assert decide_scene(BROWSING, 0, 0, None, MIN, 0.2, review, P).scene == BROWSING
    assert decide_scene(BROWSING, 0, 0, 0, MIN, 0.2, review, P).scene == POST_PURCHASE


def test_cart_enters_shopping_at_once_and_repeated_views_after_dwell() -> None:
    assert decide_scene(BROWSING, 0, 0, None, 1000, 0.1, SceneSignals(is_cart=True), P).scene == SHOPPING
    views = SceneSignals(category_views=3)
    assert decide_scene(BROWSING, 0, 0, None, 1000, 0.1, views, P).scene == BROWSING
    assert decide_scene(BROWSING, 0, 0, None, MIN, 0.1, views, P).scene == SHOPPING


def test_new_session_resets_shopping() -> None:
    d = decide_scene(SHOPPING, 0, 0, None, 100 * MIN, 0.9, SceneSignals(session_started=True), P)
    assert d.scene == BROWSING and d.reason == "new session"


def test_rule_scene_baseline() -> None:
    assert rule_scene({"minutes_since_purchase": 5.0}, P) == POST_PURCHASE
    assert rule_scene({"minutes_since_purchase": 1440.0, "carts": 1.0}, P) == SHOPPING
    assert rule_scene({"minutes_since_purchase": 1440.0, "max_cat_views": 3.0}, P) == SHOPPING
    assert rule_scene({"minutes_since_purchase": 1440.0, "max_cat_views": 2.0}, P) == BROWSING


def test_delayed_labels_learned_at_purchase_and_after_horizon() -> None:
    model = SceneModel()
    pending: list[list] = []
    f = {"carts": 1.0}
    assert model.record(pending, 0, f, 0.5, P)
    assert not model.record(pending, 60_000, f, 0.5, P)  # thinned: within pending_min_gap_s
    assert model.record(pending, 5 * MIN, f, 0.5, P)
    assert model.record(pending, 100 * MIN, f, 0.5, P)
    horizon_s = 3600.0
    # A purchase at 30 min labels the two predictions within the horizon before it; the later one waits.
    assert model.resolve(pending, 30 * MIN, horizon_s, purchase_ts=30 * MIN) == 2
    assert [e[0] for e in pending] == [100 * MIN]
    m = model.metrics()
    assert (m.labels, m.positives) == (2, 2)
    # Nothing is learned before the horizon passes ...
    assert model.resolve(pending, 150 * MIN, horizon_s) == 0
    # ... and label 0 after it.
    assert model.resolve(pending, 161 * MIN, horizon_s) == 1
    assert pending == []
    m = model.metrics()
    assert (m.labels, m.positives) == (3, 2)
    # accuracy scores the predictions as made (0.5 -> "buys"): 2 right, 1 wrong
    assert m.accuracy == 2 / 3


def test_pending_is_bounded() -> None:
    model = SceneModel()
    pending: list[list] = []
    for i in range(10):
        model.record(pending, i * 10 * MIN, {"carts": float(i)}, 0.5, P)
    assert len(pending) == P.max_pending
    carts = FEATURE_NAMES.index("carts")
    assert [e[1][carts] for e in pending] == [6.0, 7.0, 8.0, 9.0]  # compact: values in FEATURE_NAMES order
    assert all(len(e[1]) == len(FEATURE_NAMES) for e in pending)
    assert model.metrics().dropped_pending == 6


def test_model_learns_intent_and_progressive_auc() -> None:
    model = SceneModel()
    assert model.predict_intent({"carts": 2.0}) == 0.5
    assert math.isnan(model.metrics().roc_auc)
    for i in range(300):
        buyer = i % 2 == 0
        features = {"carts": 2.0 if buyer else 0.0, "max_cat_views": 5.0 if buyer else 1.0}
        pending = [[0, features, model.predict_intent(features)]]
        if buyer:
            assert model.resolve(pending, 0, 3600.0, purchase_ts=0) == 1
        else:
            assert model.resolve(pending, 10**8, 3600.0) == 1
    assert model.predict_intent({"carts": 2.0, "max_cat_views": 5.0}) > 0.8
    assert model.predict_intent({"carts": 0.0, "max_cat_views": 1.0}) < 0.2
    m = model.metrics()
    assert m.labels == 300 and m.positives == 150
    assert m.roc_auc > 0.9 and m.accuracy > 0.9


def test_checkpoint_round_trip_keeps_model_and_metrics() -> None:
    model = SceneModel()
    for i in range(20):
        model.resolve([[0, {"carts": float(i % 2)}, 0.5]], 0, 60.0, purchase_ts=0 if i % 2 else None)
        model.resolve([[0, {"carts": float(i % 2)}, 0.5]], 10**7, 60.0)
    copy = SceneModel.from_bytes(model.to_bytes())
    probe = {"carts": 1.0}
    assert copy.predict_intent(probe) == model.predict_intent(probe)
    a, b = copy.metrics(), model.metrics()
    assert (a.labels, a.positives, a.accuracy, a.roc_auc) == (b.labels, b.positives, b.accuracy, b.roc_auc)
    assert a.labels == 30 and a.positives == 10  # 10 bought at once; 20 expired with label 0
