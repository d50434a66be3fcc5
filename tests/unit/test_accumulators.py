"""The evaluator's accumulators over many lists, checked against hand-computed values."""

from __future__ import annotations

import pytest

from app.evaluation.accumulators import ListAccumulator, RankingAccumulator, catalog_coverage


def test_accumulator_summary_matches_hand_computation() -> None:
    acc = RankingAccumulator()
    for rank in (1, 3, None, 7):
        acc.add(rank, ["all"])
    at5 = acc.summary("all", 5)
    assert at5.events == 4
    assert at5.hit_rate == pytest.approx(2 / 4)
    assert at5.mrr == pytest.approx((1 + 1 / 3) / 4)
    assert at5.ndcg == pytest.approx((1 + 0.5) / 4)
    at10 = acc.summary("all", 10)
    assert at10.hit_rate == pytest.approx(3 / 4)
    assert at10.mrr == pytest.approx((1 + 1 / 3 + 1 / 7) / 4)
    assert at10.ndcg == pytest.approx((1 + 0.5 + 1 / 3) / 4)


def test_hit_rate_curve_for_every_k_from_one_pass() -> None:
    acc = RankingAccumulator()
    for rank in (1, 3, None, 7):
        acc.add(rank, ["all"])
    assert acc.hit_rate_curve("all", 8) == pytest.approx([0.25, 0.25, 0.5, 0.5, 0.5, 0.5, 0.75, 0.75])
    curve = acc.hit_rate_curve("all", 50)
    assert len(curve) == 50
    assert curve == pytest.approx([acc.summary("all", k).hit_rate for k in range(1, 51)])


def test_accumulator_groups_are_independent_and_overlapping() -> None:
    acc = RankingAccumulator()
    acc.add(1, ["all", "warm", ("scene", "shopping")])
    acc.add(None, ["all"])
    acc.add(2, ["all", "warm", ("scene", "browsing")])
    assert acc.count("all") == 3
    assert acc.count("warm") == 2
    assert acc.summary("warm", 1).hit_rate == pytest.approx(0.5)
    assert acc.summary("all", 2).hit_rate == pytest.approx(2 / 3)
    assert acc.summary(("scene", "shopping"), 20).mrr == 1.0
    assert acc.summary(("scene", "browsing"), 20).mrr == 0.5
    empty = acc.summary("nobody", 20)
    assert (empty.events, empty.hit_rate) == (0, 0.0)
    assert acc.hit_rate_curve("nobody", 3) == [0.0, 0.0, 0.0]


def test_coverage_counts_distinct_items_over_catalog() -> None:
    assert catalog_coverage(["a", "b", "b", "c"], 6) == pytest.approx(0.5)
    assert catalog_coverage([], 6) == 0.0
    assert catalog_coverage(["a"], 0) == 0.0


def test_list_accumulator_per_group() -> None:
    acc = ListAccumulator()
    acc.add(["a", "b"], ["all", "warm"], user_id="u1", cold_start=False, diversity=1.0, novelty=2.0)
    acc.add(["b", "c"], ["all"], user_id="u2", cold_start=True, diversity=None, novelty=4.0)
    acc.add(["d"], ["all"], user_id="u2", cold_start=False, diversity=0.5, novelty=None)
    overall = acc.summary("all", 8)
    assert overall.lists == 3
    assert overall.coverage == pytest.approx(4 / 8)
    assert overall.diversity == pytest.approx(0.75)
    assert overall.novelty == pytest.approx(3.0)
    assert overall.cold_start_share == pytest.approx(1 / 3)
    assert overall.cold_start_user_share == pytest.approx(1 / 2)
    warm = acc.summary("warm", 8)
    assert (warm.lists, warm.coverage, warm.cold_start_share) == (1, pytest.approx(2 / 8), 0.0)
    assert acc.summary("none", 8).diversity is None
