"""Folding events into a UserProfile: decay, dedupe, bounds, sessions, scene switches, determinism."""

from __future__ import annotations

import json
import math

import orjson
import pytest

from app.runtime.settings import Settings
from models.decay import decay_factor
from models.profile import (
    ProfileParams,
    UserProfile,
    apply_event,
    decode_profile,
    encode_profile,
    event_weight,
    new_profile,
)
from models.scene import SceneModel
from schemas.events import Browse, Click, OrderItem, Purchase

T0 = 1_700_000_000_000
S = 1000
MIN = 60 * S
PARAMS = ProfileParams()


def click(eid: str, ts: int, item: str, cat: str | None = "c1", action: str = "open") -> Click:
    return Click(event_id=eid, user_id="u1", ts=ts, item_id=item, category=cat, action=action)  # type: ignore[arg-type]


def view(
    eid: str, ts: int, item: str | None, cat: str | None, page: str = "product", dwell: int | None = None
):
    return Browse(event_id=eid, user_id="u1", ts=ts, page=page, item_id=item, category=cat, dwell_ms=dwell)  # type: ignore[arg-type]


def buy(eid: str, ts: int, *lines: tuple[str, str | None]) -> Purchase:
    return Purchase(
        event_id=eid,
        user_id="u1",
        ts=ts,
        order_id="o" + eid,
        items=[OrderItem(item_id=i, category=c) for i, c in lines],
    )


def fold(events, params: ProfileParams = PARAMS, model: SceneModel | None = None) -> UserProfile:
    profile = new_profile("u1")
    for e in events:
        apply_event(profile, e, params, model)
    return profile


def test_first_event_gets_full_weight_and_half_life_halves_it() -> None:
    p = fold([click("e1", T0, "i1", "c1")])
    assert p.clock_ms == T0
    assert p.short_cat == {"c1": pytest.approx(PARAMS.w_click)}
    assert p.long_cat == {"c1": pytest.approx(PARAMS.w_click)}
    assert p.items["i1"] == [pytest.approx(PARAMS.w_click), T0, "c1"]
    assert p.counts == {"click": 1, "browse": 0, "purchase": 0, "cart": 0, "wishlist": 0}
    # A browse of another category one short half-life later: c1 halves, c2 gets (1 - 0.5) * w_browse.
    apply_event(p, view("e2", T0 + 30 * MIN, None, "c2", page="category"), PARAMS, None)
    assert p.short_cat["c1"] == pytest.approx(PARAMS.w_click / 2)
    assert p.short_cat["c2"] == pytest.approx(PARAMS.w_browse / 2)
    a_long = decay_factor(30 * MIN, PARAMS.long_half_life_s)
    assert p.long_cat["c1"] == pytest.approx(PARAMS.w_click * a_long)


def test_event_weights_order_and_dwell_scaling() -> None:
    w = {
        name: event_weight(e, PARAMS)
        for name, e in {
            "purchase": buy("p", T0, ("i", "c")),
            "cart": click("c", T0, "i", action="add_to_cart"),
            "click": click("k", T0, "i"),
            "browse": view("b", T0, "i", "c"),
        }.items()
    }
    assert w["purchase"] > w["cart"] > w["click"] > w["browse"]
    assert event_weight(view("b", T0, "i", "c", dwell=60_000), PARAMS) == PARAMS.w_browse * 2.0
    assert event_weight(view("b", T0, "i", "c", dwell=15_000), PARAMS) == PARAMS.w_browse * 0.5
    assert (
        event_weight(view("b", T0, "i", "c", dwell=10**9), PARAMS) == PARAMS.w_browse * PARAMS.dwell_max_scale
    )


def test_same_timestamp_burst_adds_weight() -> None:
    p = fold([click("e1", T0, "i1", "c1"), click("e2", T0 + 10 * MIN, "i2", "c2")])
    before = p.short_cat["c2"]
    apply_event(p, click("e3", T0 + 10 * MIN, "i3", "c2"), PARAMS, None)
    assert p.short_cat["c2"] > before
    assert p.clock_ms == T0 + 10 * MIN


def test_out_of_order_event_keeps_clock_and_does_not_decay() -> None:
    p = fold([click("e1", T0, "i1", "c1"), click("e2", T0 + 60 * MIN, "i2", "c2")])
    snapshot = dict(p.short_cat)
    applied = apply_event(p, view("late", T0 + 30 * MIN, "i3", "c3"), PARAMS, None)
    assert applied.late and not applied.duplicate
    assert p.clock_ms == T0 + 60 * MIN
    assert p.short_cat["c1"] == snapshot["c1"] and p.short_cat["c2"] == snapshot["c2"]
    gain_1s = 1 - decay_factor(1000, PARAMS.short_half_life_s)
    age_factor = decay_factor(30 * MIN, PARAMS.short_half_life_s)  # one short half-life: 0.5
    assert p.short_cat["c3"] == pytest.approx(PARAMS.w_browse * gain_1s * age_factor)
    assert p.items["i3"][1] == T0 + 30 * MIN


def test_duplicate_changes_nothing_but_the_counter() -> None:
    events = [click("e1", T0, "i1"), view("e2", T0 + MIN, "i2", "c2"), buy("e3", T0 + 2 * MIN, ("i2", "c2"))]
    p = fold(events, model=SceneModel())
    before = p.to_dict()
    for e in events:
        assert apply_event(p, e, PARAMS, SceneModel()).duplicate
    after = p.to_dict()
    assert after.pop("duplicates") == 3 and before.pop("duplicates") == 0
    assert after == before


def test_dedupe_window_is_bounded() -> None:
    params = ProfileParams(dedupe_window=4)
    p = fold([click(f"e{i}", T0 + i * S, "i1") for i in range(10)], params)
    assert p.recent_event_ids == ["e6", "e7", "e8", "e9"]
    assert apply_event(p, click("e9", T0 + 20 * S, "i1"), params, None).duplicate
    assert not apply_event(p, click("e0", T0 + 21 * S, "i1"), params, None).duplicate  # beyond the window


def test_sizes_stay_bounded() -> None:
    params = ProfileParams(max_recent_items=5, max_categories=3, max_purchased=4, max_session_categories=6)
    events = []
    for i in range(50):
        events.append(view(f"v{i}", T0 + i * MIN, f"i{i}", f"c{i}"))
        events.append(buy(f"b{i}", T0 + i * MIN + S, (f"i{i}", f"c{i}")))
    p = fold(events, params, SceneModel())
    assert len(p.items) == 5 and len(p.short_cat) == 3 and len(p.long_cat) == 3
    assert sorted(p.purchased) == ["i46", "i47", "i48", "i49"]
    assert len(p.session.cat_views) <= 6 and len(p.pending) <= params.scene.max_pending
    assert "i49" in p.items and "c49" in p.short_cat  # the newest interest is kept


def test_history_is_oldest_first_and_reads() -> None:
    p = fold(
        [
            click("e1", T0, "a", "c1"),
            click("e2", T0 + MIN, "b", "c2"),
            click("e3", T0 + 2 * MIN, "c", "c1"),
            click("e4", T0 + 3 * MIN, "a", "c1"),
        ]
    )
    assert [h[0] for h in p.history(10)] == ["b", "c", "a"]
    assert [h[0] for h in p.history(2)] == ["c", "a"]
    assert p.history(0) == []
    item, cat, weight = p.history(1)[0]
    assert (item, cat) == ("a", "c1") and weight == p.items["a"][0]
    assert p.top_categories(1)[0][0] == "c1"
    assert p.top_categories(5, horizon="short")[0][0] == "c1"
    assert set(p.item_weights()) == {"a", "b", "c"}


def test_purchase_switches_to_post_purchase_and_excludes() -> None:
    p = fold([view("e1", T0, "i1", "c1"), view("e2", T0 + MIN, "i2", "c1")], model=SceneModel())
    applied = apply_event(p, buy("e3", T0 + 2 * MIN, ("i2", "c1"), ("i9", None)), PARAMS, SceneModel())
    sw = applied.scene_switch
    assert sw is not None
    assert (sw.user_id, sw.from_scene, sw.to_scene, sw.ts) == (
        "u1",
        "browsing",
        "post_purchase",
        T0 + 2 * MIN,
    )
    assert p.scene == "post_purchase" and p.scene_since_ms == T0 + 2 * MIN
    assert p.exclusions(p.clock_ms, 24 * 3600.0) == frozenset({"i2", "i9"})
    assert p.last_order_categories() == frozenset({"c1"})
    # the next events within the period do not switch again
    assert apply_event(p, view("e4", T0 + 3 * MIN, "i5", "c7"), PARAMS, SceneModel()).scene_switch is None


def test_cart_switches_to_shopping_and_session_gap_resets() -> None:
    p = fold([view("e1", T0, "i1", "c1")])
    sw = apply_event(p, click("e2", T0 + MIN, "i1", "c1", action="add_to_cart"), PARAMS, None).scene_switch
    assert sw is not None and sw.to_scene == "shopping"
    assert p.session.n_carts == 1 and p.counts["cart"] == 1
    later = T0 + MIN + int(PARAMS.session_gap_s * 1000) + 1
    sw = apply_event(p, view("e3", later, "i7", "c9"), PARAMS, None).scene_switch
    assert sw is not None and sw.to_scene == "browsing"
    assert p.session.start_ts == later and p.session.n_events == 1


def test_session_features() -> None:
    p = fold(
        [
            view("e1", T0, "i1", "c1", dwell=20_000),
            view("e2", T0 + MIN, "i2", "c1", dwell=40_000),
            view("e3", T0 + 2 * MIN, "i3", "c2"),
            view("e4", T0 + 3 * MIN, None, None, page="review"),
        ]
    )
    f = p.session_features(p.clock_ms)
    assert f["product_views"] == 3 and f["max_cat_views"] == 2 and f["n_categories"] == 2
    assert f["cat_concentration"] == pytest.approx(2 / 3)
    assert f["mean_dwell_s"] == 30.0 and f["session_minutes"] == 3.0 and f["review_views"] == 1
    assert f["log_events"] == pytest.approx(math.log1p(4)) and f["minutes_since_purchase"] == 1440.0


def _events(n: int) -> list:
    out = []
    for i in range(n):
        ts = T0 + (i * 37 % 11) * MIN + i * 20 * S  # some reordering and some equal timestamps
        kind = i % 7
        if kind == 6:
            out.append(buy(f"e{i}", ts, (f"i{i % 13}", f"c{i % 5}")))
        elif kind == 5:
            out.append(click(f"e{i}", ts, f"i{i % 13}", f"c{i % 5}", action="add_to_cart"))
        else:
            out.append(view(f"e{i}", ts, f"i{i % 13}", f"c{i % 5}", dwell=1000 * (i % 40)))
        if i % 9 == 0:
            out.append(out[-1])  # redelivery
    return out


def test_deterministic_and_json_round_trip() -> None:
    events = _events(400)
    a = fold(events, model=SceneModel())
    b = fold(events, model=SceneModel())
    assert orjson.dumps(a.to_dict()) == orjson.dumps(b.to_dict())
    assert a.duplicates == 45 and a.accepted == 400
    # Stopping half-way, serialising through JSON and going on gives the same state.
    model = SceneModel()
    c = fold(events[:200], model=model)
    c = UserProfile.from_dict(json.loads(json.dumps(c.to_dict())))
    for e in events[200:]:
        apply_event(c, e, PARAMS, model)
    assert c.to_dict() == a.to_dict()
    # The same through the table codec, bytes to bytes.
    model = SceneModel()
    d = decode_profile(encode_profile(fold(events[:200], model=model)))
    for e in events[200:]:
        apply_event(d, e, PARAMS, model)
    assert encode_profile(d) == encode_profile(a)


def test_codec_writes_and_reads_the_former_table_form() -> None:
    """The table held ``orjson.dumps(to_dict())`` plus a ``_ledger`` key before the msgspec codec:
    the codec writes that very JSON and reads such rows, the ledger key skipped."""
    profile = fold(_events(120), model=SceneModel())
    assert profile.items and profile.purchased and profile.last_order and profile.session.cat_views
    former = orjson.dumps({**profile.to_dict(), "_ledger": {"e1": ["ecom.click/0/1", 4]}})
    assert encode_profile(profile) == orjson.dumps(profile.to_dict())
    assert decode_profile(former) == profile
    assert profile.to_dict()["format"] == 1 and list(profile.to_dict())[:2] == ["format", "user_id"]


def test_from_settings() -> None:
    s = Settings(short_half_life_s=60.0, dedupe_window=7, max_recent_items=9)
    params = ProfileParams.from_settings(s, w_purchase=9.0)
    assert (params.short_half_life_s, params.dedupe_window, params.max_recent_items) == (60.0, 7, 9)
    assert params.long_half_life_s == s.long_half_life_s and params.w_purchase == 9.0


def test_category_weights_follow_the_current_session() -> None:
    # One view of A opens the session (full gain after no history), then eight quick views of B.
    events = [view("a", T0, "i0", "A")] + [
        view(f"b{i}", T0 + (i + 1) * 30 * S, f"j{i}", "B") for i in range(8)
    ]
    p = fold(events)
    # Short-term decay alone still favours A: B's events each follow a 30 s gap, so each gains ~1.1 % ...
    assert p.top_categories(1, horizon="short")[0][0] == "A"
    gain_30s = 1 - decay_factor(30 * S, PARAMS.short_half_life_s)
    assert p.short_cat["B"] == pytest.approx(PARAMS.w_browse * (1 - (1 - gain_30s) ** 8))
    # ... the blend, with the session's views (B 8, A 1), puts B first.
    assert p.top_categories(1)[0][0] == "B"
    weights = p.category_weights(long_share=0.0, session_share=0.0)
    assert weights == pytest.approx({c: w / max(p.short_cat.values()) for c, w in p.short_cat.items()})


class _ScriptedModel(SceneModel):
    """The real SceneModel with scripted intents, to drive the profile's scene logic."""

    def __init__(self, intents: list[float]) -> None:
        super().__init__()
        self._script = list(intents)

    def predict_intent(self, features) -> float:
        return self._script.pop(0)


def test_no_flapping_through_apply_event() -> None:
    intents = [0.9] * 4 + [0.1, 0.9] * 10  # high intent enters shopping, then alternating signals
    model = _ScriptedModel(intents)
    p = new_profile("u1")
    switches = []
    for i in range(len(intents)):
        sw = apply_event(p, view(f"e{i}", T0 + i * 30 * S, f"i{i}", f"c{i}"), PARAMS, model).scene_switch
        switches.append(sw)
    moved = [s for s in switches if s is not None]
    assert [(s.from_scene, s.to_scene, s.reason) for s in moved] == [
        ("browsing", "shopping", "high purchase intent")
    ]
    assert moved[0].ts == T0 + 2 * 30 * S and moved[0].intent == 0.9  # after the 60 s minimum dwell
    assert p.scene == "shopping"


def test_delayed_labels_through_apply_event() -> None:
    model = SceneModel()
    p = fold([view(f"v{i}", T0 + i * 5 * MIN, f"i{i}", "c1") for i in range(4)], model=model)
    assert len(p.pending) == 4 and model.metrics().labels == 0
    apply_event(p, buy("b", T0 + 40 * MIN, ("i3", "c1")), PARAMS, model)
    assert p.pending == [] and (model.metrics().labels, model.metrics().positives) == (4, 4)
    apply_event(p, view("w", T0 + 50 * MIN, "i9", "c2"), PARAMS, model)
    assert len(p.pending) == 1
    # the next event more than purchase_horizon_s later labels it 0
    apply_event(
        p, view("x", T0 + 50 * MIN + int(PARAMS.purchase_horizon_s * 1000) + S, "i8", "c2"), PARAMS, model
    )
    assert (model.metrics().labels, model.metrics().positives) == (5, 4)
    assert len(p.pending) == 1  # the new prediction waits for its own label
