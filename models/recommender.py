"""One refresh of many users at once: candidates from several sources, then the scene's re-ranking.

This is the code path that the Faust refresh agent and the offline evaluator both run, so what is
measured offline is what serves online. It is a ``models.ranking.Ranker`` like every baseline: the
worker passes each user's profile from its table in the request (``UserRequest``); run on its own
(``streamrec evaluate`` / ``tune``) it folds observed events into in-memory ``UserStates`` exactly as
the profile agent folds them, and ``fit`` trains the model version through an injected trainer. A
micro-batch of users is encoded in one ONNX call and recalled in one batched Milvus search;
everything per user after that is cheap Python.

Candidate sources (each candidate keeps the item that brought it, for the reason text):
- ann: Milvus nearest neighbours of the user vector (encoder output, or the weighted mean of the
  user's recent item vectors when the encoder is switched off),
- history: the user's own recent items (re-surfacing viewed items is often right in e-commerce),
- cooccur: items that co-occur in sessions with the user's most recent items (``Trending.related``,
  learnt online from the stream),
- category: trending items in the user's top categories,
- trending: trending items overall (cold start and backfill).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from models.encoder import ModelVersion, build_inputs
from models.popularity import Trending
from models.profile import UserProfile, new_profile
from models.ranking import RankedList, Ranker, Request
from models.recall import RecallTimeout, VectorIndex
from models.rerank import Candidate, Ranked, RerankContext, RerankParams, rerank
from models.state import UserStates
from schemas.events import UserEvent

logger = logging.getLogger(__name__)
FALLBACK_NOTE = "popularity fallback: similar-item recall timed out"


@dataclass(frozen=True, slots=True)
class RecommenderOptions:
    list_size: int = 20
    recall_k: int = 200
    history_candidates: int = 50
    cooccur_candidates: int = 100
    cooccur_anchors: int = 5  # most recent history items whose co-occurring items are recalled
    category_candidates: int = 30
    trending_candidates: int = 60
    top_categories: int = 3
    use_encoder: bool = True
    use_scene: bool = True
    # How the user's own items are ordered before the rank score ``1 / (1 + rank) ** power``
    # ("weight", "recency", "session", "mixed", "mixed_session", "adaptive": see ``_history``),
    # chosen with `streamrec tune` on the validation slices of both Taobao files (docs/EVALUATION.md):
    # the files disagree, so "adaptive" orders a history inside the current session by recency
    # (power ``history_session_power``) and any longer one by the even mix of weight and recency.
    history_order: str = "adaptive"
    history_rank_power: float = 0.5
    history_recency_share: float = 0.5
    history_session_power: float = 0.75  # "adaptive": the rank power of a history inside one session
    # DESIGN.md §2.5: a bought item is not listed within this cool-down after its purchase, nor in the
    # post-purchase scene its order started (``UserProfile.exclusions``); after it, it is an ordinary
    # history item (repeat purchases). Measured against the profile's clock, the event time of the
    # state the list is made from: the refresh agent's own ``now_ms`` is wall time, which for a
    # replayed stream lies far from the events. ``math.inf``: never listed again (the rule before
    # issue 21). The worker takes it from STREAMREC_BOUGHT_COOLDOWN_S.
    bought_cooldown_s: float = 24 * 3600.0
    # True lets bought items back at once like any viewed item (no cool-down, no post-purchase
    # exclusion): a what-if measured by `streamrec evaluate` (docs/EVALUATION.md), off in the worker.
    relist_bought: bool = False
    # A user with no state at all gets the cold-start list, shared by everyone and recomputed at
    # most once per this much event time, as a trending job would publish it (in-memory state only:
    # the worker's requests always carry a profile).
    cold_refresh_ms: int = 60_000


@dataclass(frozen=True, slots=True)
class UserRequest:
    """A user to refresh with the profile the caller keeps (the worker: its table), and what they
    were shown recently. Any other ``models.ranking.Request`` is ranked from the in-memory state."""

    profile: UserProfile
    recently_shown: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()  # never listed for this request, besides the bought items

    @property
    def user_id(self) -> str:
        return self.profile.user_id


Trainer = Callable[[Sequence[UserEvent]], tuple[ModelVersion, VectorIndex]]
"""Trains a model version on events and loads its item vectors into a vector index."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """What re-ranking needs for one user: the candidates of every source and the context."""

    profile: UserProfile
    scene: str
    candidates: list[Candidate]
    context: RerankContext


@dataclass
class Recommender(Ranker):
    model: ModelVersion | None
    recall: VectorIndex | None
    trending: Trending
    options: RecommenderOptions = field(default_factory=RecommenderOptions)
    rerank_params: RerankParams = field(default_factory=RerankParams)
    state: UserStates = field(default_factory=UserStates)  # profiles of requests that carry none
    trainer: Trainer | None = None  # what ``fit`` trains the model with; None: keep the model given
    retrains: bool = True  # False: ``retrain`` keeps the model of ``fit`` (the frozen-model comparison)
    name: str = "streamrec"
    _cold: tuple[int, int, tuple[Ranked, ...]] | None = field(default=None, init=False, repr=False)

    @property
    def model_version(self) -> str:
        return self.model.version if self.model else "popularity-only"

    @property
    def list_size(self) -> int:  # type: ignore[override]
        return self.options.list_size

    # --- the Ranker interface -----------------------------------------------------------------
    def fit(self, train: Sequence[UserEvent]) -> None:
        """Train a model version on ``train`` (when a trainer is set), then fold it into the state."""
        if self.trainer is not None:
            self.model, self.recall = self.trainer(train)
        self.observe(train)

    def observe(self, events: Sequence[UserEvent]) -> None:
        for event in events:
            self.state.fold(event, self.trending)

    def retrain(self, history: Sequence[UserEvent]) -> None:
        """A new model version on ``history`` (items first seen since ``fit`` get vectors and can be
        recalled); the online state (profiles, popularity, co-occurrence) is kept as it is."""
        if self.trainer is not None and self.retrains:
            self.model, self.recall = self.trainer(history)

    def recommend(self, requests: Sequence[Request], now_ms: int, *, k: int | None = None) -> list[RankedList]:
        size = self.options.list_size if k is None else k
        out: list[RankedList | None] = [None] * len(requests)
        warm: list[tuple[int, UserRequest]] = []
        for index, request in enumerate(requests):
            if isinstance(request, UserRequest):
                warm.append((index, request))
                continue
            profile = self.state.get(request.user_id)
            if profile is None:
                out[index] = self._cold_list(request, now_ms, size)
            else:
                warm.append((index, UserRequest(profile, request.recently_shown, request.exclude)))
        prepared, fallback = self.prepare([request for _, request in warm], now_ms)
        for (index, _), item in zip(warm, prepared, strict=True):
            ranked = rerank(item.candidates, item.context, size, self.rerank_params)
            if fallback:  # say so where consumers look: every item's reason
                ranked = [dataclasses.replace(r, reason=f"{r.reason} ({FALLBACK_NOTE})") for r in ranked]
            out[index] = RankedList(item.profile.user_id, tuple(ranked), item.scene, fallback=fallback)
        return out  # type: ignore[return-value]  # every index is filled above

    def _cold_list(self, request: Request, now_ms: int, k: int) -> RankedList:
        bucket = now_ms // self.options.cold_refresh_ms
        if self._cold is None or self._cold[:2] != (bucket, k):
            prepared, _ = self.prepare([UserRequest(new_profile("\x00cold"))], now_ms)
            self._cold = (bucket, k, tuple(rerank(prepared[0].candidates, prepared[0].context, k,
                                                  self.rerank_params)))
        items = self._cold[2]
        if request.exclude:
            items = tuple(r for r in items if r.item_id not in request.exclude)
        return RankedList(request.user_id, items, "browsing", cold_start=True)

    def prepare(self, requests: Sequence[UserRequest], now_ms: int) -> tuple[list[Prepared], bool]:
        """Candidates (one batched recall) and re-rank context per user; ``True`` when recall fell back."""
        if not requests:
            return [], False
        scenes = [r.profile.scene if self.options.use_scene else "browsing" for r in requests]
        weights = [(r.profile.category_weights(), r.profile.item_weights()) for r in requests]
        with_vectors = [self._needs_vectors(scene, bool(cw or iw)) for scene, (cw, iw) in zip(scenes, weights)]
        ann, fallback = self._ann_candidates(requests, with_vectors)
        out = []
        for request, ann_hits, scene, (cw, iw), vectors in zip(
                requests, ann, scenes, weights, with_vectors, strict=True):
            profile = request.profile
            candidates = (ann_hits + self._history(profile, vectors) + self._cooccur(profile, vectors)
                          + self._popular(profile, vectors))
            bought = profile.exclusions(profile.clock_ms, self.options.bought_cooldown_s)
            ctx = RerankContext(
                scene=scene,
                category_weights=cw,
                item_weights=iw,
                purchased=bought | request.exclude,
                excluded=request.exclude if self.options.relist_bought else None,
                purchased_categories=profile.last_order_categories(),
                recently_shown=request.recently_shown,
                popularity=self.trending.scores,
                now_ms=now_ms,
            )
            out.append(Prepared(profile, scene, candidates, ctx))
        return out, fallback

    # --- candidate sources ---------------------------------------------------------------------
    def _vector(self, item_id: str, category: str | None, wanted: bool = True) -> np.ndarray | None:
        return self.model.vectors.vector(item_id, category) if wanted and self.model else None

    def _needs_vectors(self, scene: str, surely_warm: bool) -> bool:
        """Whether this user's candidates need item vectors: only MMR diversity (lambda < 1) uses
        them, and a user with interests is never re-ranked as cold. Skipping the 200-400 lookups per
        user otherwise was a sixth of the refresh agent's time (py-spy, demo run); the list is the
        same either way."""
        params = self.rerank_params
        return params.for_scene(scene, False).mmr_lambda < 1.0 or (
            not surely_warm and params.for_scene(scene, True).mmr_lambda < 1.0)

    def _ann_candidates(self, requests: Sequence[UserRequest],
                        with_vectors: Sequence[bool]) -> tuple[list[list[Candidate]], bool]:
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
            wanted = with_vectors[i]
            empty[i] = [Candidate(h.item_id, float(h.score), "ann", h.category,
                                  self._vector(h.item_id, h.category, wanted), anchor) for h in hits[row]]
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

    def _history(self, profile: UserProfile, with_vectors: bool = False) -> list[Candidate]:
        """The user's items scored ``1 / (1 + rank) ** history_rank_power`` (``history_order``).

        A rank, not the weight itself: with a short half-life, yesterday's items have weights
        ~1e-20 of today's, yet their order (recency x frequency, S-POP-like) still predicts well.
        Orders: "weight" (decayed interest), "recency" (last touched first), "session" (the current
        session's items newest first, then the older ones by weight); "mixed" and "mixed_session"
        blend the weight rank score with the recency / session one (``history_recency_share``);
        "adaptive" is "recency" when every item lies in the current session, else "mixed".
        """
        recent = profile.history(self.options.history_candidates)  # oldest first
        power = self.options.history_rank_power
        how = self.options.history_order
        if how == "adaptive":  # a history inside the current session: by recency, else the mix
            start = profile.session.start_ts
            if all(profile.items[item][1] >= start for item, _, _ in recent):
                how, power = "recency", self.options.history_session_power
            else:
                how = "mixed"
        by_weight = sorted(recent, key=lambda h: (-h[2], h[0]))
        if how in ("weight", "mixed", "recency"):
            second = list(reversed(recent))
        elif how in ("session", "mixed_session"):
            start = profile.session.start_ts
            current = [h for h in reversed(recent) if profile.items[h[0]][1] >= start]
            second = current + [h for h in by_weight if profile.items[h[0]][1] < start]
        else:
            raise ValueError(f"unknown history_order {how!r}")
        share = {"weight": 0.0, "recency": 1.0, "session": 1.0}.get(how, self.options.history_recency_share)
        rank_w = {item: rank for rank, (item, _, _) in enumerate(by_weight)}
        rank_2 = {item: rank for rank, (item, _, _) in enumerate(second)}
        return [
            Candidate(item, (1.0 - share) / (1.0 + rank_w[item]) ** power + share / (1.0 + rank_2[item]) ** power,
                      "history", category, self._vector(item, category, with_vectors), item)
            for item, category, _ in recent
        ]

    def _cooccur(self, profile: UserProfile, with_vectors: bool = False) -> list[Candidate]:
        """Items related to the newest history items, newest weighted most (1, 1/2, 1/3, ...)."""
        related = getattr(self.trending, "related", None)
        n = self.options.cooccur_candidates
        if related is None or n <= 0:
            return []
        scores: dict[str, float] = {}
        anchors: dict[str, tuple[float, str]] = {}
        recent = profile.history(self.options.cooccur_anchors)
        for age, (anchor, _, _) in enumerate(reversed(recent)):
            for item, score in related.neighbours(anchor, n):
                part = score / (age + 1)
                scores[item] = scores.get(item, 0.0) + part
                if part > anchors.get(item, (0.0, ""))[0]:
                    anchors[item] = (part, anchor)
        best = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        out = []
        for item, score in best:
            category = self.trending.category_of(item)
            out.append(Candidate(item, score, "cooccur", category, self._vector(item, category, with_vectors),
                                 anchors[item][1]))
        return out

    def _popular(self, profile: UserProfile, with_vectors: bool = False) -> list[Candidate]:
        out = []
        for category, _ in profile.top_categories(self.options.top_categories):
            for item, score in self.trending.top_in_category(category, self.options.category_candidates):
                out.append(Candidate(item, score, "category", category,
                                     self._vector(item, category, with_vectors), None))
        for item, score in self.trending.top(self.options.trending_candidates):
            category = self.trending.category_of(item)
            out.append(Candidate(item, score, "trending", category,
                                 self._vector(item, category, with_vectors), None))
        return out
