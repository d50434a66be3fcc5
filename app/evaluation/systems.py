"""Every system `streamrec evaluate` and `streamrec tune` run, each a ``models.ranking.Ranker``.

StreamRec is the production ``Recommender`` itself, folding events into in-memory ``UserStates`` as
the profile agent folds them into its table; its ``fit`` trains a model version on the training
events only (item2vec + user encoder -> ONNX) and loads the vectors into a milvus-lite file in a
temporary directory, shared by every configuration of one run (``SharedModel``). No Kafka and no
Faust: those move events, they do not change what is recommended.

Configurations (``Variant``) of the same Recommender, all sharing that model version:
``streamrec_no_decay`` folds with half-lives of ~30 years (interest = plain weighted counts, also
for trending), ``streamrec_no_scene`` has no scene model (rules only) and re-ranks every user as
browsing, ``streamrec_no_encoder`` queries Milvus with the interest-weighted mean of the recent item
vectors instead of the learned encoder, ``streamrec_no_resurface`` never lists an item of the user's
earlier events (training period included), like the bought items: what re-surfacing viewed items is
worth. Bought items (DESIGN.md §2.5): the full system keeps one out of the list for a cool-down after
its purchase (24 h) and in the post-purchase scene its order started, then lets it back;
``streamrec_never_relist_bought`` never lists a bought item again (the rule before issue 21), and
``streamrec_relist_bought`` lists them at once like any viewed item (no exclusion at all: the
other end, a what-if). Scene strategies and diversity (issue 21): ``streamrec_no_diversity`` is the
full system with diversity off in every scene (the scene strategies kept), and
``streamrec_relevance_only`` re-ranks with the blend tuned for hit rate alone before issue 21 (the same
pure-relevance weights in every scene, substitutes at half weight after a purchase). When the replay
retrains (``streamrec evaluate --retrain-every-hours``), ``streamrec_no_retrain`` keeps the model of the
training period: what the scheduled retrain is worth.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from app.evaluation.baselines import RankerFactory, baseline_factories
from app.store.vectors import MilvusRecall
from app.tools.training import train_model
from models.encoder import ModelVersion, load_model_version
from models.popularity import Trending
from models.profile import ProfileParams
from models.ranking import RankedList, Ranker, Request
from models.recommender import Recommender, RecommenderOptions
from models.rerank import RELEVANCE_PARAMS, RerankParams, without_diversity
from models.scene import SceneModel
from models.state import UserStates
from schemas.events import UserEvent, event_items

log = logging.getLogger(__name__)

NO_DECAY_HALF_LIFE_S = 1e9  # ~30 years: weights become plain weighted counts
LIST_SIZE = 50  # the evaluator asks K=50 (the HR@1..50 curve)


def _fingerprint(events: Sequence[UserEvent]) -> str:
    digest = hashlib.sha256()
    for event in events:
        digest.update(f"{event.event_id}\x00{event.ts}\n".encode())
    return digest.hexdigest()


class SharedModel:
    """One trained model version and its Milvus collection, shared by every configuration of a run.

    A ``models.recommender.Trainer``: trains on the first call, and again only for other events
    (never serves a model trained on different data). ``close`` removes the temporary files.
    """

    def __init__(self, workdir: Path | None = None, dim: int = 64, seed: int = 0) -> None:
        self._own_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="streamrec-eval-")) if workdir is None else Path(workdir)
        self.dim, self.seed = dim, seed
        self._key: str | None = None
        self.model: ModelVersion | None = None
        self.recall: MilvusRecall | None = None
        self._earlier: list[MilvusRecall] = []  # the collections of earlier versions, closed with the rest
        self.train_seconds = 0.0
        self.trainings = 0

    def __call__(self, train: Sequence[UserEvent]) -> tuple[ModelVersion, MilvusRecall]:
        key = _fingerprint(train)
        if key != self._key or self.model is None or self.recall is None:
            started = time.perf_counter()
            path = train_model(train, self.workdir / "models", dim=self.dim, seed=self.seed)
            model = load_model_version(path, "auto")
            if self.recall is not None:  # still served by configurations that do not retrain
                self._earlier.append(self.recall)
            recall = MilvusRecall(str(self.workdir / f"milvus-{key[:8]}.db"), "eval_items", model.dim,
                                  consistency="Strong")
            vectors = model.vectors
            recall.load_items(list(vectors.ids), vectors.matrix,
                              [vectors.categories.get(item) or "none" for item in vectors.ids])
            self.model, self.recall, self._key = model, recall, key
            took = time.perf_counter() - started
            self.train_seconds += took
            self.trainings += 1
            log.info("trained %s on %d events and loaded %d vectors in %.1f s", model.version, len(train),
                     len(vectors.ids), took)
        assert self.model is not None and self.recall is not None
        return self.model, self.recall

    def close(self) -> None:
        for recall in [*self._earlier, *([self.recall] if self.recall is not None else [])]:
            recall.close()
        self._earlier, self.recall = [], None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


class NoResurface(Ranker):
    """Any ranker, never listing an item of the user's earlier events (passed as ``exclude``)."""

    def __init__(self, inner: Ranker) -> None:
        self.inner = inner
        self.name = inner.name
        self.list_size = inner.list_size
        self._touched: dict[str, set[str]] = {}

    def _remember(self, events: Sequence[UserEvent]) -> None:
        for event in events:
            self._touched.setdefault(event.user_id, set()).update(item for item, _ in event_items(event))

    def fit(self, train: Sequence[UserEvent]) -> None:
        self.inner.fit(train)
        self._remember(train)

    def observe(self, events: Sequence[UserEvent]) -> None:
        self.inner.observe(events)
        self._remember(events)

    def retrain(self, history: Sequence[UserEvent]) -> None:
        self.inner.retrain(history)

    def recommend(self, requests: Sequence[Request], now_ms: int, *, k: int | None = None) -> list[RankedList]:
        widened = [dataclasses.replace(r, exclude=r.exclude | touched)  # type: ignore[type-var]
                   if (touched := self._touched.get(r.user_id)) else r for r in requests]
        return self.inner.recommend(widened, now_ms, k=k)


@dataclass(frozen=True, slots=True)
class Variant:
    """One configuration of StreamRec: the full system, an ablation or a what-if."""

    name: str = "streamrec"
    decay: bool = True
    use_scene: bool = True
    use_encoder: bool = True
    resurface: bool = True  # False: items of the user's earlier events are never listed
    relist_bought: bool = False  # True: bought items listed again at once (a what-if; DESIGN.md forbids it)
    bought_cooldown_s: float | None = None  # None: the options' cool-down (24 h); math.inf: never again
    rerank: RerankParams | None = None  # None: the shipped re-rank defaults (scene strategies, diversity)
    retrain: bool = True  # False: the model of the training period serves the whole replay


VARIANTS: tuple[Variant, ...] = (
    Variant("streamrec"),
    Variant("streamrec_no_decay", decay=False),
    Variant("streamrec_no_scene", use_scene=False),
    Variant("streamrec_no_encoder", use_encoder=False),
    Variant("streamrec_no_resurface", resurface=False),
    Variant("streamrec_never_relist_bought", bought_cooldown_s=math.inf),
    Variant("streamrec_relist_bought", relist_bought=True),
    Variant("streamrec_no_diversity", rerank=without_diversity(RerankParams())),
    Variant("streamrec_relevance_only", rerank=RELEVANCE_PARAMS),
    Variant("streamrec_no_retrain", retrain=False),
)


def streamrec_ranker(
    variant: Variant,
    trainer: Callable[[Sequence[UserEvent]], tuple[ModelVersion, MilvusRecall]] | None,
    *,
    options: RecommenderOptions | None = None,
    rerank_params: RerankParams | None = None,
    params: ProfileParams | None = None,
) -> Ranker:
    """The production Recommender configured as ``variant``, folding its own state, training with ``trainer``."""
    params = params or ProfileParams()
    half_life_s = 3600.0
    if not variant.decay:
        params = dataclasses.replace(params, short_half_life_s=NO_DECAY_HALF_LIFE_S,
                                     long_half_life_s=NO_DECAY_HALF_LIFE_S)
        half_life_s = NO_DECAY_HALF_LIFE_S
    options = dataclasses.replace(options or RecommenderOptions(list_size=LIST_SIZE),
                                  use_scene=variant.use_scene, use_encoder=variant.use_encoder,
                                  relist_bought=variant.relist_bought)
    if variant.bought_cooldown_s is not None:
        options = dataclasses.replace(options, bought_cooldown_s=variant.bought_cooldown_s)
    recommender = Recommender(
        None, None, Trending(half_life_s=half_life_s), options, rerank_params or variant.rerank or RerankParams(),
        state=UserStates(params, SceneModel() if variant.use_scene else None), trainer=trainer,
        retrains=variant.retrain, name=variant.name)
    return recommender if variant.resurface else NoResurface(recommender)


def streamrec_factories(
    shared: SharedModel,
    variants: Sequence[Variant] = VARIANTS,
    *,
    options: RecommenderOptions | None = None,
    rerank_params: RerankParams | None = None,
    params: ProfileParams | None = None,
) -> dict[str, RankerFactory]:
    """Factories of the full system and its configurations, sharing ``shared``'s model version."""

    def make(variant: Variant) -> RankerFactory:
        return lambda: streamrec_ranker(variant, shared, options=options, rerank_params=rerank_params,
                                        params=params)

    return {variant.name: make(variant) for variant in variants}


def all_systems(shared: SharedModel) -> dict[str, RankerFactory]:
    """What `streamrec evaluate` compares: StreamRec, its configurations and every baseline."""
    return {**streamrec_factories(shared), **baseline_factories()}
