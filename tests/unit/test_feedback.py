"""Feedback maths on hand-computed cases: attribution, next-interaction ranking, windows, grace, late events."""

from __future__ import annotations

import math

import pytest

from models.feedback import (
    FeedbackParams,
    FeedbackWindows,
    UserFeedback,
    ab_arm,
    percentile,
    scene_distribution,
    window_start,
)
from schemas.events import Browse, Click, OrderItem, Purchase, RecItem, Recommendation

MIN = 60_000
CATS = {"a": "1", "b": "1", "c": "2", "d": "3"}


def rec(rec_id: str, source_ts: int, items: list[str], *, user: str = "u1", scene: str = "browsing",
        model: str = "m1", generated_at: int | None = None) -> Recommendation:
    return Recommendation(rec_id=rec_id, user_id=user, version=1, source_ts=source_ts,
                          generated_at=generated_at if generated_at is not None else source_ts + 100,
                          scene=scene, model_version=model,  # type: ignore[arg-type]
                          items=[RecItem(item_id=i, score=1.0, reason="r") for i in items])


def click(eid: str, ts: int, item: str, rec_id: str | None = None, user: str = "u1") -> Click:
    return Click(event_id=eid, user_id=user, ts=ts, item_id=item, rec_id=rec_id)


def buy(eid: str, ts: int, *items: str, user: str = "u1") -> Purchase:
    return Purchase(event_id=eid, user_id=user, ts=ts, order_id="o" + eid,
                    items=[OrderItem(item_id=i) for i in items])


def windows(ab_split: float = 1.0) -> FeedbackWindows:
    """Everyone in arm A unless a test asks for a split."""
    return FeedbackWindows(FeedbackParams(window_ms=MIN, grace_ms=10_000, attribution_ms=5 * MIN, k=3,
                                          ab_split=ab_split),
                           category_of=CATS.get, catalog_size=lambda: 10)


def test_hand_computed_window() -> None:
    """Two lists, one clicked and converted; the next interaction ranks 2nd of K=3 -> NDCG 1/log2(3)."""
    fw = windows()
    s1, s2 = UserFeedback(), UserFeedback()
    t0 = 10 * MIN
    fw.on_list(s1, rec("r1", t0 + 1_000, ["a", "b", "c", "d"], generated_at=t0 + 1_400))
    fw.on_list(s2, rec("r2", t0 + 2_000, ["c", "d"], user="u2", generated_at=t0 + 2_100))
    fw.on_event(s1, click("e1", t0 + 3_000, "b", rec_id="r1"))  # next interaction of u1: rank 2
    fw.on_event(s1, buy("e2", t0 + 4_000, "b"))  # same list converts (attributed by item)
    fw.on_event(s2, Browse(event_id="e3", user_id="u2", ts=t0 + 5_000, page="product", item_id="z"))  # miss
    assert fw.close() == []  # watermark t0+5s: window [t0, t0+60s) still open
    fw.on_event(s2, Browse(event_id="e4", user_id="u2", ts=t0 + MIN + 10_000, page="home"))  # passes the grace
    (w,) = fw.close()
    assert (w.lists, w.impressions, w.clicks, w.conversions, w.scored) == (2, 6, 1, 1, 2)
    assert w.ctr == 0.5 and w.conversion_rate == 0.5
    assert w.hit_rate == 0.5
    assert w.ndcg == pytest.approx((1 / math.log2(3)) / 2)
    assert w.coverage == 0.4 and w.distinct_items == 4
    # r1: categories 1,1,2,3 -> 5 of 6 pairs differ; r2: 2,3 -> 1 of 1
    assert w.diversity == pytest.approx((5 / 6 + 1) / 2)
    assert w.freshness_p50_ms == 100 and w.freshness_p99_ms == 400
    assert (w.window_start, w.window_end, w.arm) == (t0, t0 + MIN, "A")


def test_ab_arms_split_the_groups() -> None:
    fw = windows(ab_split=0.5)
    users = [f"user{i}" for i in range(40)]
    for i, user in enumerate(users):
        fw.on_list(UserFeedback(), rec(f"r{i}", 1_000, ["a"], user=user))
    out = {w.arm: w.lists for w in fw.close(force=True)}
    assert out == {"A": sum(ab_arm(u) == "A" for u in users), "B": sum(ab_arm(u) == "B" for u in users)}
    assert out["A"] > 0 and out["B"] > 0



def test_split_by_scene_and_model_version() -> None:
    fw = windows()
    s = UserFeedback()
    fw.on_list(s, rec("r1", 1_000, ["a"], scene="browsing", model="m1"))
    fw.on_event(s, click("e1", 2_000, "a"))
    fw.on_list(s, rec("r2", 3_000, ["b"], scene="shopping", model="m2"))
    fw.on_event(s, click("e2", 200_000, "x"))
    out = {(w.scene, w.model_version): w for w in fw.close()}
    assert set(out) == {("browsing", "m1"), ("shopping", "m2")}
    assert out[("browsing", "m1")].ctr == 1.0 and out[("browsing", "m1")].hit_rate == 1.0
    assert out[("shopping", "m2")].ctr == 0.0 and out[("shopping", "m2")].scene_switches == 1
    assert out[("browsing", "m1")].scene_switches == 0
    # r2 (source 3s) was scored by the click at 200s, in that later window, which is still open
    assert out[("shopping", "m2")].scored == 0
    (later,) = fw.close(force=True)
    assert later.window_start == 180_000 and later.scored == 1 and later.hit_rate == 0.0


def test_attribution_across_window_edge_goes_to_the_interaction_window() -> None:
    """A list served at 59s and clicked at 61s: the list counts in window 0, the click in window 1."""
    fw = windows()
    s = UserFeedback()
    fw.on_list(s, rec("r1", 59_000, ["a", "b"]))
    fw.on_event(s, click("e1", 61_000, "a", rec_id="r1"))
    out = {w.window_start: w for w in fw.close(force=True)}
    assert out[0].lists == 1 and out[0].clicks == 0 and out[0].ctr == 0.0
    assert out[MIN].lists == 0 and out[MIN].clicks == 1 and out[MIN].ctr is None and out[MIN].hit_rate == 1.0


def test_attribution_window_and_rec_id() -> None:
    fw = windows()
    s = UserFeedback()
    fw.on_list(s, rec("r1", 0, ["a"]))
    fw.on_list(s, rec("r2", 1_000, ["b"]))
    fw.on_event(s, click("e1", 2_000, "b", rec_id="r1"))  # names r1: r1 does not contain b, still r1's click
    fw.on_event(s, click("e2", 6 * MIN, "b"))  # 6 min after r2 > 5 min attribution: not attributed
    fw.on_event(s, click("e3", 2_500, "a", rec_id="nope"))  # unknown rec_id: not attributed
    out = fw.close(force=True)
    assert sum(w.clicks for w in out) == 1
    assert fw.close(force=True) == []


def test_redelivery_counts_once() -> None:
    fw = windows()
    s = UserFeedback()
    assert fw.on_list(s, rec("r1", 0, ["a"]))
    assert not fw.on_list(s, rec("r1", 0, ["a"]))
    assert fw.on_event(s, click("e1", 1_000, "a"))
    assert not fw.on_event(s, click("e1", 1_000, "a"))
    fw.on_event(s, click("e2", 1_500, "a"))  # a second click on the same list does not count twice
    (w,) = fw.close(force=True)
    assert (w.lists, w.clicks, w.scored, w.hit_rate) == (1, 1, 1, 1.0)


def test_late_events_within_grace_count_and_after_grace_are_dropped() -> None:
    fw = windows()
    a, b = UserFeedback(), UserFeedback()
    fw.on_list(a, rec("r1", 30_000, ["a"]))
    fw.on_list(b, rec("r9", 65_000, ["x"], user="u9"))  # watermark 65s: window 0 ends at 60s, grace to 70s
    assert fw.close() == []
    fw.on_list(a, rec("r2", 50_000, ["b"]))  # late but within grace: counts in window 0
    fw.on_event(b, click("e9", 75_000, "q", user="u9"))  # watermark 75s > 70s: window 0 closes
    closed = fw.close()
    assert sum(w.lists for w in closed) == 2 and {w.window_start for w in closed} == {0}
    c = UserFeedback()
    fw.on_list(c, rec("r3", 20_000, ["c"], user="u3"))  # too late: window 0 already published
    assert fw.late_dropped == 1
    rest = fw.close(force=True)
    assert sum(w.lists for w in rest) == 1 and all(w.window_start == MIN for w in rest)
    assert all(w.late_dropped_total == 1 for w in rest)


def test_idle_wall_time_advances_the_watermark() -> None:
    fw = windows()
    fw.on_list(UserFeedback(), rec("r1", 1_000, ["a"]))
    assert fw.close(idle_ms=60_000) == []  # 61s - 10s grace = 51s < 60s
    assert len(fw.close(idle_ms=70_000)) == 1


def test_state_round_trips_through_json() -> None:
    import orjson

    fw = windows()
    s = UserFeedback()
    fw.on_list(s, rec("r1", 0, ["a"]))
    fw.on_event(s, click("e1", 10, "a"))
    back = UserFeedback.from_dict(orjson.loads(orjson.dumps(s.to_dict())))
    assert back == s and back.lists[0].clicked


def test_helpers() -> None:
    assert percentile([], 50) is None
    assert percentile([5, 1, 3, 2, 4], 50) == 3 and percentile([5, 1, 3, 2, 4], 99) == 5
    assert percentile(list(range(1, 101)), 99) == 99
    assert window_start(125_000, MIN) == 120_000
    arms = [ab_arm(f"user{i}") for i in range(2000)]
    assert arms == [ab_arm(f"user{i}") for i in range(2000)]  # stable
    assert 0.45 < arms.count("A") / len(arms) < 0.55
    assert all(ab_arm(f"u{i}", split=1.0) == "A" for i in range(50))
    fw = windows()
    fw.on_list(UserFeedback(), rec("r1", 0, ["a"], scene="browsing"))
    fw.on_list(UserFeedback(), rec("r2", 0, ["a"], user="u2", scene="shopping"))
    fw.on_list(UserFeedback(), rec("r3", 0, ["a"], user="u3", scene="shopping"))
    fw.on_list(UserFeedback(), rec("r4", 0, ["a"], user="u4", scene="shopping"))
    assert scene_distribution(fw.close(force=True)) == {"browsing": 0.25, "shopping": 0.75}


def test_snapshot_shows_open_windows_without_closing_them() -> None:
    fw = windows()
    s = UserFeedback()
    fw.on_list(s, rec("r1", 1_000, ["a", "b"]))
    fw.on_event(s, click("e1", 2_000, "b"))
    (open_now,) = fw.snapshot()
    assert open_now.metric == "feedback_open" and open_now.ctr == 1.0 and open_now.lists == 1
    (closed,) = fw.close(force=True)
    assert closed.metric == "feedback" and closed.ctr == 1.0 and fw.snapshot() == []


def test_user_feedback_rows_are_what_asdict_gives_and_read_back() -> None:
    import dataclasses

    from models.feedback import ListRef, UserFeedback

    row = UserFeedback(lists=[ListRef("r1", 5, "browsing", "m-1", ["a", "b"], clicked=True, experiment="e", arm="control"),
                              ListRef("r2", 9, "shopping", "m-2", ["c"])],
                       latest_scored=False, last_scene="shopping", event_ids=["x", "y"], experiments=["e"])
    assert row.to_dict() == dataclasses.asdict(row)  # a field added to either class must be added to to_dict
    assert list(row.to_dict()) == [f.name for f in dataclasses.fields(UserFeedback)]
    assert UserFeedback.from_dict(row.to_dict()) == row
    copied = row.to_dict()
    copied["lists"][0]["items"].append("z")
    assert row.lists[0].items == ["a", "b"]  # a copy, as asdict's was
