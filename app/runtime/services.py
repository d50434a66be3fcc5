"""Long-lived services of one worker process: models, recall, popularity, the scene model, the store.

Built once at worker start and attached to the runtime; agents reach them through `runtime.services`.
A new model version written by `streamrec train` is picked up without a restart (`maybe_reload`).
While an online experiment runs, both arms' model versions stay loaded, each behind its own
`Recommender` sharing the one popularity model (`install_experiment`); the default recommender keeps
following the newest version for users outside the experiment.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from app.runtime.settings import Settings
from app.store.vectors import MilvusRecall
from models.encoder import ModelVersion, latest_model_version, load_model_version
from models.experiments import assign_arm, version_path
from models.popularity import Trending
from models.profile import ProfileParams
from models.recall import VectorIndex
from models.recommender import Recommender, RecommenderOptions
from models.rerank import RerankParams, with_browsing_diversity
from models.scene import SceneModel
from schemas.experiments import ARMS, Experiment
from schemas.validation import Limits

logger = logging.getLogger(__name__)


def rerank_params(settings: Settings) -> RerankParams:
    """The shipped scene strategies with the browsing diversity the settings ask for."""
    return with_browsing_diversity(RerankParams(), settings.browsing_category_decay,
                                   settings.browsing_diversity_head)


def recall_for(settings: Settings, model: ModelVersion) -> MilvusRecall:
    """The Milvus collection of one model version; loaded on first use, reused when it exists."""
    suffix = re.sub(r"[^0-9A-Za-z_]", "_", model.version)
    uri = settings.milvus_uri or str(settings.milvus_lite_path)
    if not settings.milvus_uri:
        settings.milvus_lite_path.parent.mkdir(parents=True, exist_ok=True)
    recall = MilvusRecall(uri, f"{settings.milvus_collection}_{suffix}", model.dim,
                          token=settings.milvus_token.get_secret_value(), timeout_s=settings.recall_timeout_s)
    loaded = recall.count() if recall.exists() else -1  # -1: no collection for this version yet
    if loaded != len(model.vectors.ids):
        vectors = model.vectors
        recall.load_items(list(vectors.ids), vectors.matrix,
                          [vectors.categories.get(item) or "" for item in vectors.ids])
        logger.info("loaded %d item vectors of %s into Milvus", len(vectors.ids), model.version)
    return recall


LoadedVersions = dict[str, tuple[ModelVersion, VectorIndex]]


@dataclass(frozen=True)
class RunningExperiment:
    """An experiment as one worker serves it: its definition and a recommender per arm."""

    definition: Experiment
    arms: dict[str, Recommender]

    @property
    def name(self) -> str:
        return self.definition.name

    def arm_of(self, user_id: str) -> str:
        return assign_arm(self.definition, user_id)


@dataclass
class Services:
    settings: Settings
    limits: Limits
    params: ProfileParams
    scene_model: SceneModel
    trending: Trending
    recommender: Recommender
    model_path: Path | None = None
    # Items the catalog retired. Recall filters them in Milvus, but a user's own items, co-occurrence and
    # trending bring candidates from elsewhere: the refresh excludes these from every list. Frozen, and
    # replaced when the catalog changes (rare), so a refresh micro-batch uses it without copying.
    unavailable: frozenset[str] = frozenset()
    experiment: RunningExperiment | None = None  # the online experiment this worker serves, if any
    experiment_error: str | None = None  # why the running definition could not be served here
    # Set once the experiments topic has been read to its end at startup (app/runtime/experiments.py):
    # the refresh waits for it, so no list goes out with the wrong arm after a restart.
    experiments_synced: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def load(cls, settings: Settings) -> Services:
        trending = Trending()
        options = RecommenderOptions(list_size=settings.list_size, recall_k=settings.recall_k,
                                     bought_cooldown_s=settings.bought_cooldown_s)
        services = cls(settings=settings, limits=Limits.from_settings(settings),
                       params=ProfileParams.from_settings(settings), scene_model=SceneModel(),
                       trending=trending,
                       recommender=Recommender(None, None, trending, options, rerank_params(settings)))
        services.maybe_reload()
        return services

    def maybe_reload(self) -> bool:
        """Load the newest model version under model_dir if it is not the one serving; True if swapped."""
        loaded = self.load_newer()
        if loaded is not None:
            self.install(*loaded)
        return loaded is not None

    def load_newer(self) -> tuple[ModelVersion, MilvusRecall, Path] | None:
        """The slow half of a reload (files, Milvus load): safe to run in a thread."""
        latest = latest_model_version(self.settings.model_dir) if self.settings.model_dir.exists() else None
        if latest is None or latest == self.model_path:
            return None
        model = load_model_version(latest, self.settings.encoder_device, self.settings.encoder_gpu_min_batch)
        return model, recall_for(self.settings, model), latest

    def install(self, model: ModelVersion, recall: MilvusRecall, path: Path) -> None:
        """The swap: run on the event loop, between two refresh batches, so a batch sees one version."""
        self.recommender.model, self.recommender.recall = model, recall
        self.model_path = path
        logger.info("serving model %s (encoder on %s)", model.version, model.encoder.provider)

    def load_versions(self, definition: Experiment) -> LoadedVersions:
        """The slow half of starting an experiment (files, Milvus load) for both arms' versions: safe in a
        thread. A version the default recommender serves already is shared, not loaded twice."""
        loaded: LoadedVersions = {}
        current = self.recommender
        for version in dict.fromkeys((definition.control, definition.treatment)):
            if current.model is not None and current.recall is not None and current.model.version == version:
                loaded[version] = (current.model, current.recall)
                continue
            path = version_path(self.settings.model_dir, version)
            if path is None:
                raise FileNotFoundError(f"model version {version!r} is not under {self.settings.model_dir}")
            model = load_model_version(path, self.settings.encoder_device, self.settings.encoder_gpu_min_batch)
            if model.version != version:  # lists name the version they were served by: it must be this one
                raise ValueError(f"folder {path} holds model version {model.version!r}, not {version!r}")
            loaded[version] = (model, recall_for(self.settings, model))
        return loaded

    def install_experiment(self, definition: Experiment, loaded: LoadedVersions) -> None:
        """Serve `definition`: on the event loop, between two refresh batches, like a model swap."""
        base = self.recommender
        arms = {arm: Recommender(*loaded[definition.version_of(arm)], self.trending, base.options,
                                 base.rerank_params) for arm in ARMS}
        self.experiment, self.experiment_error = RunningExperiment(definition, arms), None
        logger.info("experiment %s: control %s, treatment %s (share %.3f)", definition.name,
                    definition.control, definition.treatment, definition.share)

    def end_experiment(self, error: str | None = None) -> None:
        if self.experiment is not None:
            logger.info("experiment %s: no longer served", self.experiment.name)
        self.experiment, self.experiment_error = None, error

    def recommenders(self) -> list[Recommender]:
        """Every recommender serving now (the default and each arm's), each recall once."""
        out = [self.recommender]
        if self.experiment is not None:
            out += list(self.experiment.arms.values())
        seen: set[int] = set()
        unique = []
        for recommender in out:
            if id(recommender.recall) not in seen:
                seen.add(id(recommender.recall))
                unique.append(recommender)
        return unique

    @property
    def ready(self) -> bool:
        return self.recommender.model is not None

    def apply_catalog(self, items: list) -> None:
        """Upsert catalog items into recall (own vector, else category centroid) and popularity's map, in
        every model version serving now (an experiment's arms too)."""
        retired = set(self.unavailable)
        for item in items:
            if item.available:
                retired.discard(item.item_id)
            else:
                retired.add(item.item_id)
        self.unavailable = frozenset(retired)
        for recommender in self.recommenders():
            model, recall = recommender.model, recommender.recall
            if model is None or recall is None:
                continue
            for item in items:
                vector = item.vector or model.vectors.vector(item.item_id, item.category)
                if vector is not None and len(vector) == model.dim:
                    recall.upsert_item(item.item_id, vector, item.category, item.available)
                else:
                    recall.set_available(item.item_id, item.available)
