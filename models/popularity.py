"""Trending items: exponentially decaying interaction counts in event time, bounded in memory.

Used for cold start ("trending in the last hours", overall and per category) and as the popularity
feature of the re-ranker. A count observed at ``ts`` is stored scaled by ``2 ** ((ts - ref) / half_life)``
(forward decay), so an update touches one entry instead of decaying them all, late events need no
special case, and the ranking of stored values is the ranking at any later time. Scores are read at
the newest event time seen (or at ``now_ms``). ``ref`` is moved forward before the scale overflows.
Memory stays bounded: when a table outgrows its bound by a quarter it is cut back to its top entries.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Collection, Iterable
from typing import Any

from models.cooccur import CoOccurrence
from schemas.events import Purchase, UserEvent, event_items

_REBASE_HALF_LIVES = 64.0  # rescale before stored values exceed 2**64
_SLACK = 1.25  # prune when a table exceeds its bound by this factor (amortised O(1) per update)
_CACHE_K = 256  # top lists cached and kept exact incrementally (every refresh reads them)

DEFAULT_EVENT_WEIGHTS = {"purchase": 3.0, "cart": 2.0, "wishlist": 2.0, "click": 1.0, "browse": 1.0}


def _ranked(scores: dict[str, float], k: int) -> list[str]:
    return [key for key, _ in heapq.nsmallest(k, scores.items(), key=lambda kv: (-kv[1], kv[0]))]


def _prune(scores: dict[str, float], bound: int) -> bool:
    if len(scores) > bound * _SLACK:
        keep = set(_ranked(scores, bound))
        for key in [k for k in scores if k not in keep]:
            del scores[key]
        return True
    return False


class Trending:
    """Decaying popularity per item, per (category, item) and per category, plus item -> category,
    and (``related``) the session co-occurrence of items, fed by ``observe_event``."""

    def __init__(
        self,
        half_life_s: float = 3600.0,
        max_items: int = 20_000,
        max_per_category: int = 200,
        max_categories: int = 5_000,
        max_known_categories: int = 200_000,
        related: CoOccurrence | None = None,
    ) -> None:
        self.half_life_ms = half_life_s * 1000.0
        # Session co-occurrence rides along: it learns from exactly the events trending counts, so
        # every caller that keeps trending up to date (the profile agent, the evaluator) feeds it too.
        self.related = related if related is not None else CoOccurrence()
        self.max_items = max_items
        self.max_per_category = max_per_category
        self.max_categories = max_categories
        self.max_known_categories = max_known_categories
        self._items: dict[str, float] = {}
        self._by_cat: dict[str, dict[str, float]] = {}
        self._cat_total: dict[str, float] = {}
        self._category: dict[str, str] = {}  # insertion order = least recently seen first
        self._clock = 0
        self._ref: int | None = None
        self._cache: dict[str | None, list[str]] = {}

    # --- updates -----------------------------------------------------------------------------------------

    def observe(self, item_id: str, category: str | None, ts_ms: int, weight: float = 1.0) -> None:
        """Count one interaction with ``item_id`` at event time ``ts_ms``."""
        if self._ref is None:
            self._ref = ts_ms
        if (ts_ms - self._ref) / self.half_life_ms > _REBASE_HALF_LIVES:
            self._rebase(ts_ms)
        self._clock = max(self._clock, ts_ms)
        value = weight * 2.0 ** ((ts_ms - self._ref) / self.half_life_ms)
        if category is not None:
            self._category.pop(item_id, None)
            self._category[item_id] = category
            if len(self._category) > self.max_known_categories:
                del self._category[next(iter(self._category))]
        else:
            category = self._category.get(item_id)
        self._items[item_id] = self._items.get(item_id, 0.0) + value
        self._bump(None, self._items, item_id, _prune(self._items, self.max_items))
        if category is not None:
            per_cat = self._by_cat.setdefault(category, {})
            per_cat[item_id] = per_cat.get(item_id, 0.0) + value
            self._bump("cat:" + category, per_cat, item_id, _prune(per_cat, self.max_per_category))
            self._cat_total[category] = self._cat_total.get(category, 0.0) + value
            if len(self._cat_total) > self.max_categories * _SLACK:
                keep = set(_ranked(self._cat_total, self.max_categories))
                for cat in [c for c in self._cat_total if c not in keep]:
                    del self._cat_total[cat]
                    self._by_cat.pop(cat, None)
                    self._cache.pop("cat:" + cat, None)

    def _bump(self, cache_key: str | None, table: dict[str, float], item_id: str, pruned: bool) -> None:
        """Keep a cached top list exact after ``item_id``'s count grew (no full re-rank per event).

        Stored values only grow (forward decay), so only the bumped item can move, and only up; a
        prune or a rebase keeps every other order, but a prune may drop cached keys: recompute then.
        """
        cached = self._cache.get(cache_key)
        if cached is None:
            return
        if pruned or item_id not in table:
            del self._cache[cache_key]
            return
        rank = (-table[item_id], item_id)
        if item_id in cached:
            cached.remove(item_id)
        elif len(cached) >= _CACHE_K and rank > (-table[cached[-1]], cached[-1]):
            return
        cached.insert(bisect.bisect_left(cached, rank, key=lambda key: (-table[key], key)), item_id)
        del cached[_CACHE_K:]

    def observe_event(self, event: UserEvent, weights: dict[str, float] | None = None) -> None:
        """Count every item an event touches, weighted by its kind (purchases count most)."""
        weights = weights or DEFAULT_EVENT_WEIGHTS
        if isinstance(event, Purchase):
            kind = "purchase"
        elif hasattr(event, "action"):
            kind = {"add_to_cart": "cart", "wishlist": "wishlist"}.get(event.action, "click")
        else:
            kind = "browse"
        for item_id, category in event_items(event):
            self.observe(item_id, category, event.ts, weights.get(kind, 1.0))
        self.related.observe_event(event)

    def _rebase(self, new_ref: int) -> None:
        assert self._ref is not None
        factor = 2.0 ** (-(new_ref - self._ref) / self.half_life_ms)
        for table in (self._items, self._cat_total, *self._by_cat.values()):
            for key in table:
                table[key] *= factor
        self._ref = new_ref

    # --- reads -------------------------------------------------------------------------------------------

    @property
    def clock_ms(self) -> int:
        """Newest event time seen."""
        return self._clock

    def _scale(self, now_ms: int | None) -> float:
        if self._ref is None:
            return 0.0
        now = self._clock if now_ms is None else now_ms
        return 2.0 ** (-(now - self._ref) / self.half_life_ms)

    def score(self, item_id: str, now_ms: int | None = None) -> float:
        """Decayed interaction count of ``item_id`` at ``now_ms`` (default: the newest event time)."""
        return self._items.get(item_id, 0.0) * self._scale(now_ms)

    def scores(self, item_ids: Iterable[str], now_ms: int | None = None) -> list[float]:
        """``score`` of many items at once (the decay factor computed once): the re-ranker's
        popularity lookup (``RerankContext.popularity``), a few hundred items per user."""
        scale, items = self._scale(now_ms), self._items
        return [items.get(item_id, 0.0) * scale for item_id in item_ids]

    def category_of(self, item_id: str) -> str | None:
        return self._category.get(item_id)

    def __len__(self) -> int:
        return len(self._items)

    def _top_keys(self, table: dict[str, float], cache_key: str | None, k: int) -> list[str]:
        if k > _CACHE_K:
            return _ranked(table, k)
        cached = self._cache.get(cache_key)
        if cached is None:
            cached = self._cache[cache_key] = _ranked(table, _CACHE_K)
        return cached

    def _top(
        self,
        table: dict[str, float],
        cache_key: str | None,
        n: int,
        exclude: Collection[str],
        now_ms: int | None,
    ) -> list[tuple[str, float]]:
        scale = self._scale(now_ms)
        keys = self._top_keys(table, cache_key, n + len(exclude))
        return [(key, table[key] * scale) for key in keys if key not in exclude][:n]

    def top(
        self, n: int, exclude: Collection[str] = (), now_ms: int | None = None
    ) -> list[tuple[str, float]]:
        """The ``n`` most popular items not in ``exclude``, ``(item_id, score)`` best first."""
        return self._top(self._items, None, n, exclude, now_ms)

    def top_in_category(
        self,
        category: str,
        n: int,
        exclude: Collection[str] = (),
        now_ms: int | None = None,
    ) -> list[tuple[str, float]]:
        """The ``n`` most popular items of ``category`` not in ``exclude``."""
        table = self._by_cat.get(category)
        if not table:
            return []
        return self._top(table, "cat:" + category, n, exclude, now_ms)

    def top_categories(self, n: int, now_ms: int | None = None) -> list[tuple[str, float]]:
        scale = self._scale(now_ms)
        return [(cat, self._cat_total[cat] * scale) for cat in _ranked(self._cat_total, n)]

    # --- checkpoint --------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "half_life_s": self.half_life_ms / 1000.0,
            "max_items": self.max_items,
            "max_per_category": self.max_per_category,
            "max_categories": self.max_categories,
            "max_known_categories": self.max_known_categories,
            "items": dict(self._items),
            "by_cat": {c: dict(t) for c, t in self._by_cat.items()},
            "cat_total": dict(self._cat_total),
            "category": dict(self._category),
            "clock": self._clock,
            "ref": self._ref,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trending:
        inst = cls(
            data["half_life_s"],
            data["max_items"],
            data["max_per_category"],
            data["max_categories"],
            data["max_known_categories"],
        )
        inst._items = dict(data["items"])
        inst._by_cat = {c: dict(t) for c, t in data["by_cat"].items()}
        inst._cat_total = dict(data["cat_total"])
        inst._category = dict(data["category"])
        inst._clock, inst._ref = data["clock"], data["ref"]
        return inst


def log_popularity(values: Iterable[float]) -> list[float]:
    """``log1p`` scaled to [0, 1] by the largest value: popularity as a bounded feature."""
    logs = [math.log1p(max(v, 0.0)) for v in values]
    top = max(logs, default=0.0)
    return [v / top if top > 0 else 0.0 for v in logs]
