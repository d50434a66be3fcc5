"""Scene-aware re-ranking of recalled candidates, with diversity and a reason per item (DESIGN.md §2.6).

Steps, all deterministic (ties broken by item id):

1. Merge candidates by item id (the most personal source wins: history > ann > category > trending,
   then the higher score; its anchor gives the reason; missing category/vector filled in) and drop
   the excluded bought items (``RerankContext.purchased``: within the cool-down or of the order behind
   the post-purchase scene); in post_purchase also drop (or down-weight) same-category substitutes of
   the latest order.
2. Relevance = a weighted blend, per scene, of the recall score (scaled to [0, 1] within its source:
   divided by the source's best, min-max when negative, as ANN similarities and popularity counts
   are not comparable), popularity (log-scaled), the user's category interest and the user's own
   recent interest in the item. Viewed-but-not-bought items may come back: that weight is tunable,
   not an exclusion. Shopping adds a boost for the user's current top categories. Recently shown
   items are multiplied by ``shown_penalty``.
3. Diversity, after the first ``diversity_head`` items, which stay in relevance order (the top few
   carry most of the hits, so diversifying only below them costs least): either category coverage
   (each further item of a category already listed has its relevance multiplied by
   ``category_decay``, one sort, no item vectors needed) or MMR (pick ``argmax lambda * rel -
   (1 - lambda) * max_sim(picked)`` where sim is the cosine of the vectors when both have one, else 1
   for the same category).
4. Scene strategies (``RerankParams``, docs/EVALUATION.md "Scene strategies and diversity"): browsing
   explores (category coverage on, a little more popularity), shopping focuses on the user's current
   categories (``focus_boost``; the Taobao data has no prices, so there is no price band yet),
   post-purchase shows complements of the order (``complement``) and never its substitutes.
5. Cold start: with no personal signal at all (no interests, only trending/category candidates) the
   list is popularity with category diversity.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import msgspec
import numpy as np

Source = Literal["ann", "history", "cooccur", "trending", "category"]
PERSONAL_SOURCES = frozenset({"ann", "history", "cooccur"})
_SOURCE_PRIORITY = {"history": 0, "cooccur": 1, "ann": 2, "category": 3, "trending": 4}


class Candidate(msgspec.Struct, frozen=True, eq=False):
    """A recalled item. ``anchor``: the item that brought it (its ANN query item, or the bought item).

    A msgspec Struct, not a dataclass: a refresh builds 200-400 of these per user, and a frozen
    dataclass took ~1.0-1.4 us each against ~0.15 us (py-spy of a bench worker: building the ANN
    candidates was 11.5% of its samples). Compared by identity (``vector`` is an array)."""

    item_id: str
    score: float
    source: Source
    category: str | None = None
    vector: np.ndarray | None = None
    anchor: str | None = None


@dataclass(frozen=True, slots=True)
class RerankContext:
    """What the re-ranker knows about the user at ``now_ms``."""

    scene: str
    category_weights: Mapping[str, float]
    item_weights: Mapping[str, float]
    purchased: frozenset[str]  # bought items not to list now (``UserProfile.exclusions``); anchors too
    purchased_categories: frozenset[str]  # categories of the latest order: substitutes in post_purchase
    recently_shown: frozenset[str]
    # item id -> popularity: a mapping, or a batch lookup of many ids at once (``Trending.scores``)
    popularity: Callable[[Sequence[str]], Sequence[float]] | Mapping[str, float]
    now_ms: int
    # never listed; None: ``purchased`` (DESIGN.md). Set apart from ``purchased``, which also
    # says which candidates complement a purchase, for the `relist_bought` what-if (models/recommender.py).
    excluded: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class SceneWeights:
    """Blend for one scene; relevance terms are each in [0, 1]."""

    recall: float  # recall score, scaled to [0, 1] within its source
    popularity: float  # log1p popularity / the candidates' maximum
    category: float  # user's interest in the item's category / the user's strongest category
    item: float  # user's own recent interest in this item (re-surfacing viewed items)
    focus_boost: float  # added when the category is one of the user's top ``focus_categories``
    mmr_lambda: float  # 1 = pure relevance, lower = more diverse
    substitute_factor: float  # multiplier for same-category-as-latest-order items; 0 = excluded
    # Evidence from every source that brought the item (not only the one the merge kept), each
    # scaled to [0, 1] within its source: an item the user viewed AND that co-occurs with their
    # recent items is likelier than one with a single signal.
    history: float = 0.0  # the user's own items (recency x frequency, ``history`` candidates)
    cooccur: float = 0.0  # session co-occurrence with the user's recent items (``cooccur`` candidates)
    ann: float = 0.0  # encoder/vector similarity (``ann`` candidates)
    # Category coverage: each further item of a category already listed has its relevance multiplied
    # by this (1 = off). One diversity method at a time: coverage or MMR (``mmr_lambda`` < 1).
    category_decay: float = 1.0
    diversity_head: int = 0  # the first items kept in relevance order; diversity re-orders the rest
    # Added for items recalled from a bought item (its co-occurring or similar items): complements.
    complement: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.category_decay <= 1.0:
            raise ValueError(f"category_decay {self.category_decay} outside [0, 1]")
        if self.category_decay < 1.0 and self.mmr_lambda < 1.0:
            raise ValueError("one diversity method at a time: category_decay < 1 or mmr_lambda < 1")
        if self.diversity_head < 0:
            raise ValueError(f"diversity_head {self.diversity_head} < 0")


# The evidence blend every warm scene shares, chosen on validation splits of the TRAINING periods of
# BOTH Taobao files (the last quarter of each; never the evaluated days) with `streamrec tune`
# (docs/EVALUATION.md, "How the re-rank blend was chosen"): the user's own items and session
# co-occurrence carry the ranking; the raw decayed item weight (``item``) costs MRR, so it is off.
# How history candidates are ordered is a RecommenderOptions choice (history_order).
_EVIDENCE = SceneWeights(
    recall=0.2, popularity=0.05, category=0.1, item=0.0, focus_boost=0.0, mmr_lambda=1.0,
    substitute_factor=1.0, history=3.0, cooccur=2.0, ann=0.2,
)

# The scene strategies (below): each scene is the evidence blend plus its own settings.
_BROWSING = dataclasses.replace(_EVIDENCE, popularity=0.1, category_decay=0.6, diversity_head=5)
_SHOPPING = dataclasses.replace(_EVIDENCE, focus_boost=0.3)
_POST_PURCHASE = dataclasses.replace(_EVIDENCE, substitute_factor=0.0, complement=0.5)


@dataclass(frozen=True, slots=True)
class RerankParams:
    """Per-scene weights (DESIGN.md §2.3, §2.6): the scenes share the evidence blend and differ in
    strategy. Browsing explores: category coverage below the top items, a little more popularity.
    Shopping focuses: a boost for the user's current top categories (no price band: the data has no
    prices). Post-purchase shows complements of the order and never its substitutes (items of the
    order's categories are excluded; the bought items themselves by ``RerankContext.purchased``).
    Strengths chosen from the accuracy-diversity trade-off measured with `streamrec tune`
    (docs/EVALUATION.md, "Scene strategies and diversity")."""

    browsing: SceneWeights = _BROWSING
    shopping: SceneWeights = _SHOPPING
    post_purchase: SceneWeights = _POST_PURCHASE
    cold: SceneWeights = SceneWeights(
        recall=0.5,
        popularity=1.0,
        category=0.0,
        item=0.0,
        focus_boost=0.0,
        mmr_lambda=0.6,
        substitute_factor=1.0,
    )
    shown_penalty: float = 0.5  # multiplier for items in the recently shown lists
    focus_categories: int = 3

    def for_scene(self, scene: str, cold: bool) -> SceneWeights:
        if cold:
            return self.cold
        return {"shopping": self.shopping, "post_purchase": self.post_purchase}.get(scene, self.browsing)


RELEVANCE_PARAMS = RerankParams(
    browsing=_EVIDENCE, shopping=_EVIDENCE,
    post_purchase=dataclasses.replace(_EVIDENCE, substitute_factor=0.5),
)
"""The defaults before issue 21 (AD_p075 / M50_all in docs/EVALUATION.md): the same pure-relevance
blend in every scene, the order's substitutes kept at half weight after a purchase. Tuned for hit
rate alone; kept as the `streamrec_relevance_only` ablation and as the base of the older grid entries."""


def with_browsing_diversity(params: RerankParams, category_decay: float, head: int) -> RerankParams:
    """``params`` with the browsing scene's category coverage set (``category_decay`` 1 = off, pure
    relevance order): the knob a shop turns along the accuracy-diversity trade-off that docs/EVALUATION.md
    measures (``STREAMREC_BROWSING_CATEGORY_DECAY`` / ``STREAMREC_BROWSING_DIVERSITY_HEAD``)."""
    browsing = dataclasses.replace(params.browsing, category_decay=category_decay,
                                   diversity_head=head if category_decay < 1.0 else 0)
    return dataclasses.replace(params, browsing=browsing)


def without_diversity(params: RerankParams) -> RerankParams:
    """``params`` with diversity off in the warm scenes (pure relevance order), everything else kept:
    what the diversity of a blend costs or buys (the `streamrec_no_diversity` ablation)."""
    plain = {"category_decay": 1.0, "mmr_lambda": 1.0, "diversity_head": 0}
    return dataclasses.replace(
        params,
        browsing=dataclasses.replace(params.browsing, **plain),
        shopping=dataclasses.replace(params.shopping, **plain),
        post_purchase=dataclasses.replace(params.post_purchase, **plain),
    )


DESIGNED_PARAMS = RerankParams(
    browsing=SceneWeights(recall=1.0, popularity=0.5, category=0.3, item=0.2, focus_boost=0.0,
                          mmr_lambda=0.5, substitute_factor=1.0),
    shopping=SceneWeights(recall=1.0, popularity=0.2, category=0.8, item=0.6, focus_boost=0.6,
                          mmr_lambda=0.85, substitute_factor=1.0),
    post_purchase=SceneWeights(recall=1.0, popularity=0.3, category=0.3, item=0.0, focus_boost=0.0,
                               mmr_lambda=0.7, substitute_factor=0.0),
)
"""The hand-set blend the scene strategies were designed with (diverse browsing, focused shopping,
no substitutes after a purchase): the tuning baseline of `streamrec tune` ("designed") and the blend the
unit tests exercise the mechanisms under. The shipped defaults above were learnt on validation data."""


@dataclass(frozen=True, slots=True)
class Ranked:
    item_id: str
    score: float
    reason: str


def _merge(candidates: Sequence[Candidate]) -> list[Candidate]:
    best: dict[str, Candidate] = {}
    priority = _SOURCE_PRIORITY
    for cand in candidates:
        old = best.get(cand.item_id)
        if old is None:
            best[cand.item_id] = cand
        elif (priority.get(cand.source, 9), -cand.score) < (priority.get(old.source, 9), -old.score):
            best[cand.item_id] = _with_fallbacks(cand, old)
        elif (old.category is None and cand.category is not None) or (
            old.vector is None and cand.vector is not None
        ):
            best[cand.item_id] = _with_fallbacks(old, cand)
    return [best[key] for key in sorted(best)]


def _with_fallbacks(main: Candidate, other: Candidate) -> Candidate:
    if main.category is not None and main.vector is not None:
        return main
    return Candidate(
        main.item_id,
        main.score,
        main.source,
        main.category if main.category is not None else other.category,
        main.vector if main.vector is not None else other.vector,
        main.anchor,
    )


def _scaled_by_source(cands: Sequence[Candidate]) -> np.ndarray:
    """Each score scaled to [0, 1] within its source: divided by the source's best when all are
    non-negative (keeps ratios of similarities and counts), min-max otherwise."""
    scores = np.array([c.score for c in cands], dtype=float)
    index: dict[str, int] = {}
    codes = np.array([index.setdefault(c.source, len(index)) for c in cands])
    out = np.empty(len(cands))
    if len(index) == 1:
        out[:] = _scaled(scores)
        return out
    for code in range(len(index)):
        mask = codes == code
        out[mask] = _scaled(scores[mask])
    return out


def _scaled(raw: np.ndarray) -> np.ndarray | float:
    lo, hi = float(raw.min()), float(raw.max())
    if lo >= 0:
        return raw / hi if hi > 0 else 1.0
    return (raw - lo) / (hi - lo) if hi > lo else 1.0


def _evidence(candidates: Sequence[Candidate], sources: frozenset[str]) -> dict[str, dict[str, float]]:
    """For each of ``sources``, each item's best score scaled to [0, 1] within that source (before
    the merge, so an item keeps the evidence of every source that brought it)."""
    out: dict[str, dict[str, float]] = {source: {} for source in sources}
    if not sources:
        return out
    for cand, value in zip(candidates, _scaled_by_source(candidates).tolist(), strict=True):
        per = out.get(cand.source)
        if per is not None and value > per.get(cand.item_id, 0.0):
            per[cand.item_id] = value
    return out


def _norm_lookup(weights: Mapping[str, float], keys: Sequence[str | None]) -> np.ndarray:
    top = max(weights.values(), default=0.0)
    if top <= 0:
        return np.zeros(len(keys))
    return np.array([max(weights.get(k, 0.0), 0.0) / top if k is not None else 0.0 for k in keys])


def _popularity(ctx: RerankContext, items: Sequence[str]) -> np.ndarray:
    lookup = ctx.popularity
    raw = lookup(items) if callable(lookup) else [lookup.get(i, 0.0) for i in items]
    logs = np.log1p(np.maximum(np.array(raw, dtype=float), 0.0))
    top = float(logs.max(initial=0.0))
    return logs / top if top > 0 else logs


class _Similarity:
    """Similarity rows on demand (MMR needs only k of the C rows): the cosine where both items have a
    vector, else 1.0 for equal known categories. Rows are matrix-vector products: a full C x C product
    is slower here, as multi-threaded BLAS contends for the cores on small matrices."""

    __slots__ = ("_cat", "_has", "_mat")

    def __init__(self, cands: Sequence[Candidate]) -> None:
        codes: dict[str, int] = {}
        self._cat = np.array(
            [codes.setdefault(c.category, len(codes)) if c.category is not None else -1 for c in cands],
        )
        dim = next((len(c.vector) for c in cands if c.vector is not None), 0)
        self._has = np.array([c.vector is not None and len(c.vector) == dim > 0 for c in cands], dtype=bool)
        self._mat: np.ndarray | None = None
        if self._has.sum() >= 2:
            mat = np.zeros((len(cands), dim))
            mat[self._has] = np.stack(
                [np.asarray(c.vector, dtype=float) for c, ok in zip(cands, self._has, strict=True) if ok]
            )
            norms = np.linalg.norm(mat, axis=1)
            self._mat = np.divide(mat, norms[:, None], out=np.zeros_like(mat), where=norms[:, None] > 0)

    def __call__(self, i: int) -> np.ndarray:
        row = ((self._cat == self._cat[i]) & (self._cat >= 0)).astype(float)
        if self._mat is not None and self._has[i]:
            row = np.where(self._has, self._mat @ self._mat[i], row)
        row[i] = 1.0
        return row


def mmr(
    relevance: np.ndarray, sim: np.ndarray | Callable[[int], np.ndarray], k: int, lam: float, head: int = 0
) -> list[int]:
    """Maximal marginal relevance order of the first ``k`` picks; ties go to the lower index.

    ``sim`` is a similarity matrix or a function giving row ``i`` of it. The first ``head`` picks are
    by relevance alone (they still count as picked for the similarity of the rest).
    """
    row = sim if callable(sim) else sim.__getitem__
    n = len(relevance)
    chosen: list[int] = []
    free = np.ones(n, dtype=bool)
    max_sim = np.zeros(n)
    for step in range(min(k, n)):
        if step < head:
            value = relevance
        else:
            value = lam * relevance - (1.0 - lam) * (max_sim if chosen else 0.0)
        value = np.where(free, value, -np.inf)
        best = int(np.argmax(value))
        chosen.append(best)
        free[best] = False
        max_sim = np.maximum(max_sim, row(best))
    return chosen


def category_codes(categories: Sequence[str | None]) -> np.ndarray:
    """An integer per category (equal categories, equal codes); -1 for an item without one."""
    known = np.array([c is not None for c in categories], dtype=bool)
    codes = np.full(len(categories), -1, dtype=np.int64)
    if known.any():
        names = np.array([c for c in categories if c is not None])
        codes[known] = np.unique(names, return_inverse=True)[1]
    return codes


def coverage_order(relevance: np.ndarray, codes: np.ndarray, k: int, decay: float, head: int = 0) -> list[int]:
    """The first ``k`` indices, ``head`` by relevance, then greedy by ``relevance * decay ** n`` where
    ``n`` counts the items of the same category already picked; ties go to the lower index.

    No pick loop: within a category the greedy always takes the most relevant item left, so the
    ``j``-th item of a category (by relevance) is worth ``rel * decay ** j`` whenever it is picked, and
    those values fall within each category: the greedy order is one sort of them. Items without a
    category (code -1) are never discounted.
    """
    n = len(relevance)
    if n == 0 or k <= 0:
        return []
    index = np.arange(n)
    by_relevance = np.lexsort((index, -relevance))
    top = by_relevance[: min(head, n)]
    # rank of each item within its category, most relevant first (index breaks ties, as above)
    order = np.lexsort((index, -relevance, codes))
    grouped = codes[order]
    starts = np.r_[True, grouped[1:] != grouped[:-1]]
    first = np.maximum.accumulate(np.where(starts, index, 0))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = index - first
    rank[codes < 0] = 0
    value = relevance * np.power(decay, rank)
    rest = np.lexsort((index, -relevance, -value))
    if len(top):
        below = np.ones(n, dtype=bool)
        below[top] = False
        rest = rest[below[rest]]
    return [int(i) for i in np.concatenate([top, rest])[:k]]


def _reason(cand: Candidate, ctx: RerankContext, in_focus: bool, cold: bool) -> str:
    if ctx.scene == "post_purchase" and cand.anchor is not None and cand.anchor in ctx.purchased:
        return f"goes with your purchase of {cand.anchor}"
    if ctx.item_weights.get(cand.item_id, 0.0) > 0 or cand.source == "history":
        return "you viewed this item"
    if cand.source == "cooccur" and cand.anchor is not None:
        return f"often viewed together with item {cand.anchor} you viewed"
    if cand.source == "ann" and cand.anchor is not None:
        return f"similar to item {cand.anchor} you viewed"
    if cand.category is not None and in_focus and not cold:
        return f"more from category {cand.category} you are looking at"
    if cand.source == "ann":
        return "matches your recent interests"
    if cand.source == "category" and cand.category is not None:
        return f"popular in category {cand.category}"
    return "trending now"


def rerank(
    candidates: Sequence[Candidate],
    ctx: RerankContext,
    k: int,
    params: RerankParams = RerankParams(),
) -> list[Ranked]:
    """The final list of at most ``k`` items for ``ctx.scene``, best first, each with a reason.

    Terms whose weight is zero are not computed (each is finite, so the sum is the same)."""
    excluded = ctx.purchased if ctx.excluded is None else ctx.excluded
    cands = [c for c in _merge(candidates) if c.item_id not in excluded]
    cold = (
        not ctx.category_weights
        and not ctx.item_weights
        and not any(c.source in PERSONAL_SOURCES for c in cands)
    )
    weights = params.for_scene(ctx.scene, cold)
    if weights.substitute_factor <= 0:
        cands = [c for c in cands if c.category is None or c.category not in ctx.purchased_categories]
    if not cands or k <= 0:
        return []

    items = [c.item_id for c in cands]
    cats = [c.category for c in cands]
    focus = {
        cat
        for cat, _ in sorted(ctx.category_weights.items(), key=lambda kv: (-kv[1], kv[0]))[
            : params.focus_categories
        ]
        if ctx.category_weights.get(cat, 0.0) > 0
    }
    in_focus = np.array([c in focus for c in cats])
    cat_interest = _norm_lookup(ctx.category_weights, cats)
    rel = weights.recall * _scaled_by_source(cands)
    if weights.popularity:
        rel = rel + weights.popularity * _popularity(ctx, items)
    rel = rel + weights.category * cat_interest
    if weights.item:
        rel = rel + weights.item * _norm_lookup(ctx.item_weights, items)
    if weights.focus_boost:
        rel = rel + weights.focus_boost * in_focus * np.maximum(cat_interest, 0.5)
    blended = {"history": weights.history, "cooccur": weights.cooccur, "ann": weights.ann}
    evidence = _evidence(candidates, frozenset(source for source, weight in blended.items() if weight))
    for source, weight in blended.items():
        if weight:
            scaled = evidence[source]
            rel = rel + weight * np.array([scaled.get(item, 0.0) for item in items])
    if weights.complement:  # recalled from a bought item: a complement (substitutes are handled below)
        rel = rel + weights.complement * np.array(
            [c.anchor is not None and c.anchor in ctx.purchased for c in cands], dtype=float)
    if weights.substitute_factor < 1:
        rel *= np.array(
            [
                weights.substitute_factor if c is not None and c in ctx.purchased_categories else 1.0
                for c in cats
            ]
        )
    if ctx.recently_shown:
        rel *= np.array([params.shown_penalty if i in ctx.recently_shown else 1.0 for i in items])
    top = float(rel.max())
    rel = rel / top if top > 0 else rel

    if weights.category_decay < 1.0:
        order = coverage_order(rel, category_codes(cats), k, weights.category_decay, weights.diversity_head)
    elif weights.mmr_lambda < 1.0:
        order = mmr(rel, _Similarity(cands), k, weights.mmr_lambda, weights.diversity_head)
    else:  # pure relevance: what mmr() would pick, without the similarity rows
        order = [int(i) for i in np.argsort(-rel, kind="stable")[:k]]
    return [
        Ranked(items[i], round(float(rel[i]), 6), _reason(cands[i], ctx, bool(in_focus[i]), cold))
        for i in order
        if math.isfinite(float(rel[i]))
    ]
