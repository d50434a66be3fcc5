"""Offline accumulators of the evaluator: ranks and served lists of many events, per group.

Recording each target's rank once per event lets HR/MRR/NDCG at every cut-off K come out of a single
replay pass; the per-list metrics they average live in models/metrics.py.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np


def catalog_coverage(recommended: Iterable[str], catalog_size: int) -> float:
    """Share of the catalog that appeared in at least one served list."""
    if catalog_size <= 0:
        return 0.0
    return len(set(recommended)) / catalog_size


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
