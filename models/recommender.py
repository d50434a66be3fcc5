"""One refresh of many users at once: candidates from several sources, then the scene's re-ranking.

This is the code path that the Faust refresh agent and the offline evaluator both run, so what is
measured offline is what serves online. A micro-batch of users is encoded in one ONNX call and
recalled in one batched Milvus search; everything per user after that is cheap Python.

Candidate sources (each candidate keeps the item that brought it, for the reason text):
- ann: Milvus nearest neighbours of the user vector (encoder output, or the weighted mean of the
  user's recent item vectors when the encoder is switched off),
- history: the user's own recent items (re-surfacing viewed items is often right in e-commerce),
- category: trending items in the user's top categories,
- trending: trending items overall (cold start and backfill).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from models.encoder import ModelVersion, build_inputs
from models.popularity import Trending
from models.profile import UserProfile
from models.recall import MilvusRecall, RecallTimeout
from models.rerank import Candidate, Ranked, RerankContext, RerankParams, rerank

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RecommenderOptions:
    list_size: int = 20
    recall_k: int = 200
    history_candidates: int = 50
    category_candidates: int = 30
    trending_candidates: int = 60
    top_categories: int = 3
    use_encoder: bool = True
    use_scene: bool = True


@dataclass(frozen=True, slots=True)
class UserRequest:
    """A user to refresh: their profile and what they were shown recently."""

    profile: UserProfile
    recently_shown: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Refreshed:
    user_id: str
    scene: str
    items: list[Ranked]
    fallback: bool = False  # recall was unavailable: the list is popularity only


@dataclass
class Recommender:
    model: ModelVersion | None
    recall: MilvusRecall | None
    trending: Trending
    options: RecommenderOptions = field(default_factory=RecommenderOptions)
    rerank_params: RerankParams = field(default_factory=RerankParams)

    @property
    def model_version(self) -> str:
        return self.model.version if self.model else "popularity-only"

    def recommend(self, requests: Sequence[UserRequest], now_ms: int) -> list[Refreshed]:
        if not requests:
            return []
        ann, fallback = self._ann_candidates(requests)
        out = []
        for request, ann_hits in zip(requests, ann, strict=True):
            profile = request.profile
            scene = profile.scene if self.options.use_scene else "browsing"
            candidates = ann_hits + self._history(profile) + self._popular(profile)
            ctx = RerankContext(
                scene=scene,
                category_weights=profile.category_weights(),
                item_weights=profile.item_weights(),
                purchased=profile.exclusions(),
                purchased_categories=profile.last_order_categories(),
                recently_shown=request.recently_shown,
                popularity=self.trending.score,
                now_ms=now_ms,
            )
            ranked = rerank(candidates, ctx, self.options.list_size, self.rerank_params)
            out.append(Refreshed(profile.user_id, scene, ranked, fallback))
        return out

    # --- candidate sources ---------------------------------------------------------------------
    def _vector(self, item_id: str, category: str | None) -> np.ndarray | None:
        return self.model.vectors.vector(item_id, category) if self.model else None

    def _ann_candidates(self, requests: Sequence[UserRequest]) -> tuple[list[list[Candidate]], bool]:
        empty: list[list[Candidate]] = [[] for _ in requests]
        if self.model is None or self.recall is None:
            return empty, False
        histories = [r.profile.history(self.model.max_len) for r in requests]
        warm = [i for i, h in enumerate(histories) if h]
        if not warm:
            return empty, False
        queries = self._user_vectors([histories[i] for i in warm], [requests[i].profile for i in warm])
        try:
            hits = self.recall.search(queries, self.options.recall_k)
        except RecallTimeout:
            logger.warning("recall timed out for %d users: serving popularity for this batch", len(warm))
            return empty, True
        for row, i in enumerate(warm):
            anchor = max(histories[i], key=lambda h: h[2])[0]
            empty[i] = [Candidate(h.item_id, float(h.score), "ann", h.category,
                                  self._vector(h.item_id, h.category), anchor) for h in hits[row]]
        return empty, False

    def _user_vectors(self, histories: list, profiles: list[UserProfile]) -> np.ndarray:
        assert self.model is not None
        scenes = [p.scene if self.options.use_scene else "browsing" for p in profiles]
        seq, weights, scene = build_inputs(histories, scenes, self.model.vectors, self.model.max_len)
        if self.options.use_encoder:
            return self.model.encoder.encode(seq, weights, scene)
        pooled = (seq * weights[:, :, None]).sum(axis=1)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-9)).astype(np.float32)

    def _history(self, profile: UserProfile) -> list[Candidate]:
        recent = profile.history(self.options.history_candidates)
        return [Candidate(item, weight, "history", category, self._vector(item, category), item)
                for item, category, weight in recent]

    def _popular(self, profile: UserProfile) -> list[Candidate]:
        out = []
        for category, _ in profile.top_categories(self.options.top_categories):
            for item, score in self.trending.top_in_category(category, self.options.category_candidates):
                out.append(Candidate(item, score, "category", category, self._vector(item, category), None))
        for item, score in self.trending.top(self.options.trending_candidates):
            category = self.trending.category_of(item)
            out.append(Candidate(item, score, "trending", category, self._vector(item, category), None))
        return out
