"""Per-list ranking and quality metrics, used online (models/feedback.py) and offline.

Every scored event has exactly one relevant item (the item the user touched next), so hit rate,
reciprocal rank and NDCG reduce to functions of that item's 1-based rank in the served list (None
when it is absent). The offline accumulators over many lists live in app/evaluation/accumulators.py.
Pure logic: no Kafka, no Faust, no I/O.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np


def rank_of(items: Sequence[str], target: str) -> int | None:
    """1-based rank of `target` in `items`, None when it is not there."""
    for position, item in enumerate(items, start=1):
        if item == target:
            return position
    return None


def hit_rate(rank: int | None, k: int) -> float:
    """1 when the relevant item is in the top k, else 0."""
    return 1.0 if rank is not None and rank <= k else 0.0


def reciprocal_rank(rank: int | None, k: int) -> float:
    """1/rank when the relevant item is in the top k, else 0 (averaged over events: MRR@k)."""
    return 1.0 / rank if rank is not None and rank <= k else 0.0


def ndcg(rank: int | None, k: int) -> float:
    """NDCG@k with one relevant item: the ideal DCG is 1, so it is 1/log2(rank + 1) inside the top k."""
    return 1.0 / math.log2(rank + 1) if rank is not None and rank <= k else 0.0


def category_diversity(categories: Sequence[str | None]) -> float | None:
    """Share of item pairs in one list whose categories differ; items without a category are left out.

    Counted per category (O(n)) rather than per pair: same-category pairs are sum C(n_c, 2).
    None when fewer than two items have a category (no pair to judge).
    """
    known = [c for c in categories if c is not None]
    n = len(known)
    if n < 2:
        return None
    pairs = n * (n - 1) / 2
    same = sum(c * (c - 1) / 2 for c in Counter(known).values())
    return 1.0 - same / pairs


def vector_diversity(vectors: np.ndarray) -> float | None:
    """1 - mean pairwise cosine similarity of the list's item vectors (rows); None below two rows."""
    matrix = np.asarray(vectors, dtype=np.float64)
    n = matrix.shape[0]
    if n < 2:
        return None
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit = matrix / np.where(norms == 0.0, 1.0, norms)
    cosine = unit @ unit.T
    off_diagonal = (cosine.sum() - np.trace(cosine)) / (n * (n - 1))
    return float(1.0 - off_diagonal)


def novelty(items: Sequence[str], counts: Mapping[str, int], total: int) -> float | None:
    """Mean self-information -log2 p(i) of the listed items, p(i) = interactions of i / all interactions.

    An item never seen in `counts` is counted once, so new items are the most novel rather than infinite.
    """
    if not items or total <= 0:
        return None
    return float(np.mean([-math.log2(max(counts.get(item, 0), 1) / total) for item in items]))
