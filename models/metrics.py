"""Ranking and list-quality metrics for next-item evaluation (issue 8).

Every scored event has exactly one relevant item (the item the user touched next), so hit rate,
reciprocal rank and NDCG reduce to functions of that item's 1-based rank in the served list (None
when it is absent). Recording the rank once per event lets HR/MRR/NDCG at every cut-off K come out
of a single replay pass. Pure logic: no Kafka, no Faust, no I/O.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

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


def catalog_coverage(recommended: Iterable[str], catalog_size: int) -> float:
    """Share of the catalog that appeared in at least one served list."""
    if catalog_size <= 0:
        return 0.0
    return len(set(recommended)) / catalog_size


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


@dataclass(frozen=True, slots=True)
class RankingSummary:
    """HR, MRR and NDCG at one cut-off over the events of one group."""

    events: int
    hit_rate: float
    mrr: float
    ndcg: float


@dataclass(slots=True)
class RankingAccumulator:
    """Ranks of the target item per scored event, grouped by arbitrary hashable keys.

    One event can belong to several groups at once (e.g. "all", ("scene", "shopping"), ("type",
    "purchase")): `add` appends its rank to each. A missing target is stored as rank 0.
    """

    _ranks: dict[Hashable, list[int]] = field(default_factory=dict)

    def add(self, rank: int | None, keys: Iterable[Hashable]) -> None:
        value = 0 if rank is None else rank
        for key in keys:
            self._ranks.setdefault(key, []).append(value)

    def keys(self) -> list[Hashable]:
        return list(self._ranks)

    def count(self, key: Hashable) -> int:
        return len(self._ranks.get(key, ()))

    def _array(self, key: Hashable) -> np.ndarray:
        return np.asarray(self._ranks.get(key, ()), dtype=np.int64)

    def summary(self, key: Hashable, k: int) -> RankingSummary:
        ranks = self._array(key)
        if ranks.size == 0:
            return RankingSummary(events=0, hit_rate=0.0, mrr=0.0, ndcg=0.0)
        hit = (ranks >= 1) & (ranks <= k)
        safe = np.where(hit, ranks, 1).astype(np.float64)
        return RankingSummary(
            events=int(ranks.size),
            hit_rate=float(hit.mean()),
            mrr=float(np.where(hit, 1.0 / safe, 0.0).mean()),
            ndcg=float(np.where(hit, 1.0 / np.log2(safe + 1.0), 0.0).mean()),
        )

    def hit_rate_curve(self, key: Hashable, max_k: int) -> list[float]:
        """HR@K for K = 1..max_k, from one histogram of the ranks."""
        ranks = self._array(key)
        if ranks.size == 0:
            return [0.0] * max_k
        found = ranks[(ranks >= 1) & (ranks <= max_k)]
        per_rank = np.bincount(found, minlength=max_k + 1)[1:]
        return (np.cumsum(per_rank) / ranks.size).tolist()


@dataclass(frozen=True, slots=True)
class ListSummary:
    """Quality of the served lists of one group, beyond accuracy."""

    lists: int
    coverage: float
    diversity: float | None
    novelty: float | None
    cold_start_share: float
    cold_start_user_share: float


@dataclass(slots=True)
class _ListGroup:
    items: set[str] = field(default_factory=set)
    lists: int = 0
    diversity_sum: float = 0.0
    diversity_n: int = 0
    novelty_sum: float = 0.0
    novelty_n: int = 0
    cold: int = 0
    users: set[str] = field(default_factory=set)
    cold_users: set[str] = field(default_factory=set)


@dataclass(slots=True)
class ListAccumulator:
    """Coverage, intra-list diversity, novelty and cold-start share of served lists, per group.

    Diversity and novelty are passed in already computed (the caller knows categories, vectors and
    popularity); this only averages them and tracks distinct items and users.
    """

    _groups: dict[Hashable, _ListGroup] = field(default_factory=dict)

    def add(
        self,
        items: Sequence[str],
        keys: Iterable[Hashable],
        *,
        user_id: str,
        cold_start: bool,
        diversity: float | None,
        novelty: float | None,
    ) -> None:
        for key in keys:
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _ListGroup()
            group.items.update(items)
            group.lists += 1
            group.users.add(user_id)
            if cold_start:
                group.cold += 1
                group.cold_users.add(user_id)
            if diversity is not None:
                group.diversity_sum += diversity
                group.diversity_n += 1
            if novelty is not None:
                group.novelty_sum += novelty
                group.novelty_n += 1

    def summary(self, key: Hashable, catalog_size: int) -> ListSummary:
        group = self._groups.get(key) or _ListGroup()
        return ListSummary(
            lists=group.lists,
            coverage=catalog_coverage(group.items, catalog_size),
            diversity=group.diversity_sum / group.diversity_n if group.diversity_n else None,
            novelty=group.novelty_sum / group.novelty_n if group.novelty_n else None,
            cold_start_share=group.cold / group.lists if group.lists else 0.0,
            cold_start_user_share=len(group.cold_users) / len(group.users) if group.users else 0.0,
        )
