"""Ranking and list-quality metrics, checked against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.metrics import (
    ListAccumulator,
    RankingAccumulator,
    catalog_coverage,
    category_diversity,
    hit_rate,
    ndcg,
    novelty,
    rank_of,
    reciprocal_rank,
    vector_diversity,
)


def test_rank_of_is_one_based_and_none_when_absent() -> None:
    assert rank_of(["a", "b", "c"], "a") == 1
    assert rank_of(["a", "b", "c"], "c") == 3
    assert rank_of(["a", "b", "c"], "z") is None
    assert rank_of([], "a") is None


@pytest.mark.parametrize(
    ("rank", "k", "hr", "rr", "gain"),
    [
        (1, 20, 1.0, 1.0, 1.0),
        (3, 20, 1.0, 1 / 3, 0.5),  # 1/log2(4)
        (7, 20, 1.0, 1 / 7, 1 / 3),  # 1/log2(8)
        (20, 20, 1.0, 1 / 20, 1 / math.log2(21)),
        (21, 20, 0.0, 0.0, 0.0),
        (None, 20, 0.0, 0.0, 0.0),
    ],
)
def test_single_event_metrics(rank: int | None, k: int, hr: float, rr: float, gain: float) -> None:
    assert hit_rate(rank, k) == hr
    assert reciprocal_rank(rank, k) == pytest.approx(rr)
    assert ndcg(rank, k) == pytest.approx(gain)


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


def test_category_diversity_is_share_of_distinct_category_pairs() -> None:
    # x,x,y,y: 6 pairs, 2 of them within one category
    assert category_diversity(["x", "x", "y", "y"]) == pytest.approx(4 / 6)
    assert category_diversity(["x", "y", "z"]) == 1.0
    assert category_diversity(["x", "x", "x"]) == 0.0
    assert category_diversity(["x", None, "y"]) == 1.0  # unknown categories left out
    assert category_diversity(["x", None]) is None


def test_vector_diversity_is_one_minus_mean_pairwise_cosine() -> None:
    assert vector_diversity(np.array([[1.0, 0.0], [0.0, 2.0]])) == pytest.approx(1.0)
    assert vector_diversity(np.array([[1.0, 1.0], [2.0, 2.0]])) == pytest.approx(0.0)
    # cosines: (1,2)=1, (1,3)=0, (2,3)=0 -> mean 1/3
    assert vector_diversity(np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0]])) == pytest.approx(2 / 3)
    assert vector_diversity(np.array([[1.0, 0.0]])) is None


def test_novelty_is_mean_self_information_with_unseen_counted_once() -> None:
    counts = {"a": 4, "b": 1}
    # a: -log2(4/8) = 1; b: -log2(1/8) = 3; unseen c counts once: 3
    assert novelty(["a", "b", "c"], counts, 8) == pytest.approx(7 / 3)
    assert novelty([], counts, 8) is None


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
