"""StreamRec behind the evaluation protocol: the production code path, replayed offline (issue 8).

What runs is what the worker runs: ``apply_event`` folds each event into a ``UserProfile`` (decay,
session, scene with the online ``SceneModel``), ``Trending`` (with its co-occurrence table) observes
the same events, ``train_model`` trains item vectors and the user encoder on the training split
only, the vectors go into a milvus-lite file in a temporary directory (``MilvusRecall``), and every
list is ``Recommender.recommend`` (encoder via ONNX Runtime, batched recall, scene re-ranking). No
Kafka and no Faust: those move events, they do not change what is recommended.

Refresh timing (documented decision): the worker refreshes a user after each batch of that user's
events. Offline, a user's list only matters when that user's next event is scored, so refreshes
are lazy: ``observe`` marks the user pending, and the next ``recommend`` for that user computes the
list from the state at that instant, which holds every event before the scored one and nothing
after it. Users who never come back are never refreshed, which is what makes a full-data run fit
in the time budget. Cold users (no event yet) get the cold-start list of the same ``Recommender``
(an empty profile), recomputed once per minute of event time, as a trending job would publish it.

Ablations share one trained model version and one Milvus collection (same training data):
``streamrec_no_decay`` folds with half-lives of ~30 years (interest = plain weighted counts, also
for trending), ``streamrec_no_scene`` has no scene model (rules only) and re-ranks every user as
browsing (``use_scene=False``), ``streamrec_no_encoder`` queries Milvus with the interest-weighted
mean of the recent item vectors instead of the learned encoder (``use_encoder=False``).
``streamrec_no_resurface`` is the full system with every item the user already touched (any earlier
event, training period included) excluded from the list, like the bought items: it measures what
re-surfacing viewed items is worth (``resurface=False``). ``streamrec_relist_bought`` is not an
ablation but a what-if for a product decision: the full system with bought items allowed back in the
list like any viewed item (DESIGN.md never lists them; ``relist_bought=True``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.evaluation.baselines import RecommenderFactory, Served, baseline_factories
from app.evaluation.evaluate import EvaluationResult, load_events, run_evaluation, write_json, write_report
from app.store.vectors import MilvusRecall
from app.tools.training import train_model
from models.encoder import ModelVersion, load_model_version
from models.popularity import Trending
from models.profile import ProfileParams, UserProfile, apply_event, new_profile
from models.recommender import Recommender, RecommenderOptions, UserRequest
from models.rerank import RerankParams
from models.scene import SceneModel, SceneModelMetrics, rule_scene
from schemas.events import UserEvent, event_items

log = logging.getLogger(__name__)

NO_DECAY_HALF_LIFE_S = 1e9  # ~30 years: weights become plain weighted counts
COLD_REFRESH_MS = 60_000


@dataclass(frozen=True, slots=True)
class Variant:
    """One configuration of the system under test (the full system or an ablation)."""

    name: str = "streamrec"
    decay: bool = True
    use_scene: bool = True
    use_encoder: bool = True
    resurface: bool = True  # False: items of the user's earlier events are never listed
    relist_bought: bool = False  # True: bought items may be listed again (a what-if; DESIGN.md forbids it)


VARIANTS: tuple[Variant, ...] = (
    Variant("streamrec"),
    Variant("streamrec_no_decay", decay=False),
    Variant("streamrec_no_scene", use_scene=False),
    Variant("streamrec_no_encoder", use_encoder=False),
    Variant("streamrec_no_resurface", resurface=False),
    Variant("streamrec_relist_bought", relist_bought=True),
)


def _fingerprint(events: Sequence[UserEvent]) -> str:
    digest = hashlib.sha256()
    for event in events:
        digest.update(f"{event.event_id}\x00{event.ts}\n".encode())
    return digest.hexdigest()


class SharedModel:
    """One trained model version and its Milvus collection, shared by every variant of one run.

    Trained on the first ``fit`` with the training split; a later ``fit`` with other events trains
    again (never serves a model trained on different data). ``close`` removes the temporary files.
    """

    def __init__(self, workdir: Path | None = None, dim: int = 64, seed: int = 0) -> None:
        self._own_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="streamrec-eval-")) if workdir is None else Path(workdir)
        self.dim, self.seed = dim, seed
        self._key: str | None = None
        self.model: ModelVersion | None = None
        self.recall: MilvusRecall | None = None
        self.train_seconds = 0.0

    def get(self, train: Sequence[UserEvent]) -> tuple[ModelVersion, MilvusRecall]:
        key = _fingerprint(train)
        if key != self._key or self.model is None or self.recall is None:
            started = time.perf_counter()
            path = train_model(train, self.workdir / "models", dim=self.dim, seed=self.seed)
            model = load_model_version(path, "auto")
            if self.recall is not None:
                self.recall.close()
            recall = MilvusRecall(str(self.workdir / f"milvus-{key[:8]}.db"), "eval_items", model.dim,
                                  consistency="Strong")
            vectors = model.vectors
            recall.load_items(list(vectors.ids), vectors.matrix,
                              [vectors.categories.get(item) or "none" for item in vectors.ids])
            self.model, self.recall, self._key = model, recall, key
            self.train_seconds = time.perf_counter() - started
            log.info("trained %s and loaded %d vectors in %.1f s", model.version, len(vectors.ids),
                     self.train_seconds)
        assert self.model is not None and self.recall is not None
        return self.model, self.recall

    def close(self) -> None:
        if self.recall is not None:
            self.recall.close()
            self.recall = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass(slots=True)
class SceneComparison:
    """Online scene-model quality vs the rule baseline, both scored on the same delayed labels."""

    model: SceneModelMetrics
    rule_accuracy: float
    rule_auc: float
    rule_labels: int


@dataclass
class StreamRecSystem:
    """The production recommender behind ``StreamingRecommender`` (fit / recommend / observe)."""

    variant: Variant
    shared: SharedModel
    options: RecommenderOptions = field(default_factory=RecommenderOptions)
    rerank_params: RerankParams = field(default_factory=RerankParams)
    params: ProfileParams = field(default_factory=ProfileParams)

    def __post_init__(self) -> None:
        self.name = self.variant.name
        if not self.variant.decay:
            self.params = dataclasses.replace(
                self.params, short_half_life_s=NO_DECAY_HALF_LIFE_S, long_half_life_s=NO_DECAY_HALF_LIFE_S
            )
        self.trending = Trending(half_life_s=3600.0 if self.variant.decay else NO_DECAY_HALF_LIFE_S)
        self.scene_model: SceneModel | None = SceneModel() if self.variant.use_scene else None
        self.options = dataclasses.replace(
            self.options, use_scene=self.variant.use_scene, use_encoder=self.variant.use_encoder,
            relist_bought=self.variant.relist_bought,
        )
        self.recommender = Recommender(None, None, self.trending, self.options, self.rerank_params)
        self.profiles: dict[str, UserProfile] = {}
        self._pending: set[str] = set()
        self._seen: dict[str, set[str]] = {}  # every item of each user's events (resurface=False only)
        self._lists: dict[str, tuple[str, ...]] = {}
        self._cold: tuple[int, tuple[str, ...]] | None = None
        self.refreshes = 0

    # --- protocol -------------------------------------------------------------------------------
    def fit(self, train: Sequence[UserEvent]) -> None:
        """Train the model on ``train`` (shared by the variants) and warm profiles and trending with it."""
        model, recall = self.shared.get(train)
        self.recommender.model, self.recommender.recall = model, recall
        for event in train:
            self.observe(event)

    def observe(self, event: UserEvent) -> None:
        profile = self.profiles.get(event.user_id)
        if profile is None:
            profile = self.profiles[event.user_id] = new_profile(event.user_id)
        applied = apply_event(profile, event, self.params, self.scene_model)
        if not applied.duplicate:
            self.trending.observe_event(event)
            self._pending.add(event.user_id)
            if not self.variant.resurface:
                self._seen.setdefault(event.user_id, set()).update(item for item, _ in event_items(event))

    def recommend(self, user_id: str, k: int, now_ms: int) -> Served:
        profile = self.profiles.get(user_id)
        if profile is None:
            return Served(self._cold_list(now_ms)[:k], scene="browsing", cold_start=True)
        if user_id in self._pending or user_id not in self._lists:
            self._refresh([profile], now_ms)
        scene = profile.scene if self.variant.use_scene else "browsing"
        return Served(self._lists[user_id][:k], scene=scene, cold_start=False)

    # --- internals ------------------------------------------------------------------------------
    def _refresh(self, profiles: list[UserProfile], now_ms: int) -> None:
        requests = [UserRequest(p, exclude=frozenset(self._seen.get(p.user_id, ()))) for p in profiles]
        results = self.recommender.recommend(requests, now_ms)
        for result in results:
            self._lists[result.user_id] = tuple(r.item_id for r in result.items)
            self._pending.discard(result.user_id)
        self.refreshes += len(results)

    def _cold_list(self, now_ms: int) -> tuple[str, ...]:
        bucket = now_ms // COLD_REFRESH_MS
        if self._cold is None or self._cold[0] != bucket:
            result = self.recommender.recommend([UserRequest(new_profile("\x00cold"))], now_ms)[0]
            self._cold = (bucket, tuple(r.item_id for r in result.items))
        return self._cold[1]


def streamrec_factories(
    shared: SharedModel,
    variants: Sequence[Variant] = VARIANTS,
    *,
    list_size: int = 50,
    params: ProfileParams | None = None,
    rerank_params: RerankParams | None = None,
    options: RecommenderOptions | None = None,
) -> dict[str, RecommenderFactory]:
    """Factories for the full system and its ablations; ``list_size`` covers the HR@1..50 curve."""
    base = dataclasses.replace(options or RecommenderOptions(), list_size=list_size)

    def make(variant: Variant) -> RecommenderFactory:
        return lambda: StreamRecSystem(
            variant, shared, base, rerank_params or RerankParams(), params or ProfileParams()
        )

    return {variant.name: make(variant) for variant in variants}


def compare_scene_model(events: Sequence[UserEvent], params: ProfileParams | None = None) -> SceneComparison:
    """Replay ``events`` through profiles with the online scene model; score the rule baseline's
    shopping call on exactly the delayed labels the model is scored on (progressive validation)."""
    params = params or ProfileParams()
    model = _RuleScoredSceneModel()
    profiles: dict[str, UserProfile] = {}
    for event in events:
        profile = profiles.get(event.user_id)
        if profile is None:
            profile = profiles[event.user_id] = new_profile(event.user_id)
        apply_event(profile, event, params, model)
    return SceneComparison(model.metrics(), model.rule_accuracy(), _roc_auc(model.labels, model.rule_scores),
                           len(model.labels))


class _RuleScoredSceneModel(SceneModel):
    """The production scene model, also scoring the rules' purchase-intent call on each label."""

    def __init__(self) -> None:
        super().__init__()
        self.labels: list[bool] = []
        self.rule_scores: list[float] = []

    def _learn(self, features, label: bool, intent: float) -> None:  # type: ignore[override]
        from models.scene import FEATURE_NAMES

        named = dict(features) if isinstance(features, dict) else dict(zip(FEATURE_NAMES, features, strict=True))
        self.labels.append(label)
        self.rule_scores.append(1.0 if rule_scene(named) == "shopping" else 0.0)
        super()._learn(features, label, intent)

    def rule_accuracy(self) -> float:
        hits = sum((score >= 0.5) == label for score, label in zip(self.rule_scores, self.labels, strict=True))
        return hits / len(self.labels) if self.labels else float("nan")


def _roc_auc(labels: Sequence[bool], scores: Sequence[float]) -> float:
    """Exact ROC AUC (ties count half); NaN without both classes."""
    from scipy.stats import rankdata

    n_pos = sum(bool(y) for y in labels)
    n_neg = len(labels) - n_pos
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(scores)  # average ranks: ties count half (Mann-Whitney U)
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def scene_notes(events: Sequence[UserEvent]) -> list[str]:
    """Report lines: the online scene model vs the rule baseline on the same delayed labels."""
    cmp = compare_scene_model(events)
    m = cmp.model
    return [
        "## Scene model (online, delayed labels, progressive validation)",
        "",
        (f"Replaying every event of the file through the profiles: {m.labels:,} labelled predictions "
         f"({m.positives:,} bought within the horizon)."),
        "",
        "| intent model | accuracy (%) | ROC AUC |",
        "|---|---:|---:|",
        f"| river logistic regression (online) | {100 * m.accuracy:.2f} | {m.roc_auc:.3f} |",
        f"| rule baseline (`rule_scene` == shopping) | {100 * cmp.rule_accuracy:.2f} | {cmp.rule_auc:.3f} |",
        "",
    ]


def evaluate_with_streamrec(
    data: Path,
    json_out: Path | None,
    report: Path | None,
    *,
    baselines_only: bool = False,
    progress: bool = True,
) -> EvaluationResult:
    """`streamrec evaluate`: StreamRec, its ablations and the baselines in one run, JSON and report."""
    command = f"streamrec evaluate --data {data}"
    command += f" --json {json_out}" if json_out is not None else ""
    command += f" --report {report}" if report is not None else ""
    command += " --baselines-only" if baselines_only else ""
    shared = SharedModel()
    try:
        systems = dict(baseline_factories()) if baselines_only else {
            **streamrec_factories(shared), **baseline_factories()}
        result = run_evaluation(Path(data), systems, progress=progress, command=command)
    finally:
        shared.close()
    if not baselines_only:
        events, _ = load_events(Path(data))
        notes = [*scene_notes(events),
                 f"StreamRec model training (item2vec + encoder + Milvus load): {shared.train_seconds:.1f} s."]
        result = dataclasses.replace(result, notes=tuple(notes))
    if json_out is not None:
        write_json(result, Path(json_out))
    if report is not None:
        write_report(result, Path(report))
    return result
