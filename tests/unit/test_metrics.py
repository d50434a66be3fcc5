"""Per-list ranking and quality metrics, checked against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.metrics import (
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
