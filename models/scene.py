"""The user's scene (DESIGN.md §2.3): browsing, shopping or post_purchase.

Three parts, each replaceable on its own:

- ``SceneModel``: an online purchase-intent model (river: scaler + logistic regression) over session
  features. It learns from DELAYED labels: each recorded prediction waits, inside the user's profile,
  until the user buys within ``purchase_horizon_s`` of it (label 1) or the horizon passes (label 0).
  Each prediction is scored when its label arrives (progressive validation) with the probability it
  had when it was made. One instance is shared by all users of a worker and checkpointed as bytes.
- ``decide_scene``: rules plus the intent with hysteresis. Hard signals switch at once (a purchase or
  the order page -> post_purchase; an add-to-cart -> shopping from browsing); soft ones (intent above
  ``upper_intent``, ``strong_view_count`` views of one category) only after ``min_dwell_s`` in the
  current scene; shopping falls back to browsing only after ``low_events_to_leave`` consecutive events
  with intent below ``lower_intent``. The gap between the two thresholds and the dwell stop flapping.
- ``rule_scene``: a stateless rules-only baseline for comparison.
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from river import compose, linear_model, metrics, preprocessing

log = logging.getLogger(__name__)

SceneName = Literal["browsing", "shopping", "post_purchase"]
BROWSING: SceneName = "browsing"
SHOPPING: SceneName = "shopping"
POST_PURCHASE: SceneName = "post_purchase"

FEATURE_NAMES = (
    "log_events",  # log1p(events in the session)
    "product_views",  # product page views / item opens in the session
    "carts",  # add-to-cart clicks in the session
    "wishlist",  # wishlist clicks in the session
    "session_purchases",  # orders earlier in the session
    "max_cat_views",  # most views of a single category in the session (repeated views)
    "cat_concentration",  # max_cat_views / all category views: 1 = one category only
    "n_categories",  # distinct categories viewed in the session
    "mean_dwell_s",  # mean dwell of browse events that carry one (capped)
    "session_minutes",  # time since the session started (capped)
    "review_views",  # review page views (comparisons before a purchase, reviewing after one)
    "cart_page_views",  # cart page views
    "minutes_since_purchase",  # since the user's last order, capped at 24 h (1440 = none recently)
    "log_lifetime_purchases",  # log1p(orders ever seen for this user)
)


@dataclass(frozen=True, slots=True)
class SceneParams:
    """Scene thresholds. Times are event time, in seconds."""

    upper_intent: float = 0.6  # intent at or above this (after the dwell) -> shopping
    lower_intent: float = 0.35  # intent below this for low_events_to_leave events -> browsing
    low_events_to_leave: int = 3
    min_dwell_s: float = 60.0  # minimum time in a scene before a soft signal can switch it
    post_purchase_s: float = 30 * 60.0  # stay in post_purchase this long after an order ...
    strong_view_count: int = 3  # ... unless carts or this many views of one category come first
    max_pending: int = 32  # delayed-label predictions kept per user
    pending_min_gap_s: float = 120.0  # at most one recorded prediction per user per this interval


@dataclass(frozen=True, slots=True)
class SceneSwitch:
    """An observable scene change of one user (published by the agents)."""

    user_id: str
    from_scene: str
    to_scene: str
    ts: int
    intent: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SceneSignals:
    """What the current event says beyond the session features."""

    is_purchase: bool = False
    is_order_page: bool = False
    is_review_page: bool = False
    is_cart: bool = False
    category_views: int = 0  # views of this event's category since the scene was entered
    session_started: bool = False  # this event opened a new session


@dataclass(frozen=True, slots=True)
class SceneDecision:
    scene: SceneName
    low_streak: int
    reason: str


@dataclass(frozen=True, slots=True)
class SceneModelMetrics:
    """Progressive-validation quality of the intent model: accuracy (at 0.5) over every label so far,
    ROC AUC (exact) over the latest ``auc_window`` labels; NaN until both classes were seen."""

    accuracy: float
    roc_auc: float
    labels: int
    positives: int
    dropped_pending: int


def default_pipeline() -> compose.Pipeline:
    return compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression())


class SceneModel:
    """Purchase-intent model shared by all users of a worker; learns from delayed labels."""

    def __init__(self, model: Any | None = None, auc_window: int = 10_000) -> None:
        self._model = model if model is not None else default_pipeline()
        self._accuracy = metrics.Accuracy()
        # Exact AUC over the latest labels: cheap (<1 us per label), and recent quality is what ops watch;
        # river's ROCAUC estimates with thresholds (default 10: 0.02 below the exact AUC on Taobao).
        self._auc = metrics.RollingROCAUC(window_size=auc_window)
        self._labels = 0
        self._positives = 0
        self._dropped = 0

    def predict_intent(self, features: Mapping[str, float]) -> float:
        """P(purchase within the horizon | session so far); 0.5 before any label was learned."""
        proba = self._model.predict_proba_one(dict(features))
        return float(proba.get(True, 0.0))

    def record(
        self,
        pending: list[list[Any]],
        ts_ms: int,
        features: Mapping[str, float],
        intent: float,
        params: SceneParams,
    ) -> bool:
        """Remember a prediction until its label is known; bounded and thinned to one per gap.

        Entries are ``[ts_ms, [value per FEATURE_NAMES], intent]``: compact JSON inside the profile.
        """
        if pending and ts_ms - pending[-1][0] < params.pending_min_gap_s * 1000.0:
            return False
        pending.append([ts_ms, [float(features.get(name, 0.0)) for name in FEATURE_NAMES], intent])
        if len(pending) > params.max_pending:
            del pending[: len(pending) - params.max_pending]
            self._dropped += 1
        return True

    def resolve(
        self,
        pending: list[list[Any]],
        now_ms: int,
        horizon_s: float,
        purchase_ts: int | None = None,
    ) -> int:
        """Learn the pending predictions whose label is known; returns how many were learned.

        A purchase at ``purchase_ts`` labels 1 every prediction made in ``[purchase_ts - horizon,
        purchase_ts]``; a prediction older than ``now_ms - horizon`` with no purchase is labelled 0.
        Later predictions stay pending. ``pending`` is changed in place.
        """
        horizon_ms = horizon_s * 1000.0
        keep: list[list[Any]] = []
        learned = 0
        for entry in pending:
            ts, features, intent = entry
            if purchase_ts is not None and purchase_ts - horizon_ms <= ts <= purchase_ts:
                self._learn(features, True, intent)
            elif now_ms - ts > horizon_ms:
                self._learn(features, False, intent)
            else:
                keep.append(entry)
                continue
            learned += 1
        pending[:] = keep
        return learned

    def _learn(self, features: Mapping[str, float] | list[float], label: bool, intent: float) -> None:
        # Progressive validation: score the prediction made back then, then learn from the label.
        self._accuracy.update(label, intent >= 0.5)
        self._auc.update(label, intent)
        x = (
            dict(features)
            if isinstance(features, Mapping)
            else dict(zip(FEATURE_NAMES, features, strict=True))
        )
        self._model.learn_one(x, label)
        self._labels += 1
        self._positives += int(label)

    def metrics(self) -> SceneModelMetrics:
        auc = self._auc.get() if self._positives and self._positives < self._labels else math.nan
        acc = self._accuracy.get() if self._labels else math.nan
        return SceneModelMetrics(
            accuracy=float(acc),
            roc_auc=float(auc),
            labels=self._labels,
            positives=self._positives,
            dropped_pending=self._dropped,
        )

    def to_bytes(self) -> bytes:
        """Checkpoint: model, metrics and counters (pickle; only load checkpoints you wrote)."""
        return pickle.dumps(
            (self._model, self._accuracy, self._auc, self._labels, self._positives, self._dropped),
            protocol=pickle.HIGHEST_PROTOCOL,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SceneModel:
        model, accuracy, auc, labels, positives, dropped = pickle.loads(data)  # own checkpoint only
        inst = cls(model)
        inst._accuracy, inst._auc = accuracy, auc
        inst._labels, inst._positives, inst._dropped = labels, positives, dropped
        return inst


def rule_scene(features: Mapping[str, float], params: SceneParams = SceneParams()) -> SceneName:
    """Stateless rules-only baseline: recent order -> post_purchase; carts/repeat views -> shopping."""
    if features.get("minutes_since_purchase", math.inf) * 60.0 < params.post_purchase_s:
        return POST_PURCHASE
    if features.get("carts", 0.0) > 0 or features.get("max_cat_views", 0.0) >= params.strong_view_count:
        return SHOPPING
    return BROWSING


def rule_intent(features: Mapping[str, float], params: SceneParams = SceneParams()) -> float:
    """Intent of the rules baseline (1.0 when the rules say shopping), used when no model is given."""
    return 1.0 if rule_scene(features, params) == SHOPPING else 0.0


def decide_scene(
    scene: SceneName,
    since_ms: int,
    low_streak: int,
    last_purchase_ts: int | None,
    now_ms: int,
    intent: float,
    signals: SceneSignals,
    params: SceneParams,
) -> SceneDecision:
    """Next scene with hysteresis; pure, so the agents and the offline evaluator agree."""
    recent_purchase = (
        last_purchase_ts is not None and now_ms - last_purchase_ts < params.post_purchase_s * 1000
    )
    dwell_ok = now_ms - since_ms >= params.min_dwell_s * 1000
    strong = signals.is_cart or signals.category_views >= params.strong_view_count

    if signals.is_purchase:
        return SceneDecision(POST_PURCHASE, 0, "purchase")
    if signals.is_order_page or (signals.is_review_page and recent_purchase):
        return SceneDecision(POST_PURCHASE, 0, "order/review page after a purchase")

    expired = scene == POST_PURCHASE
    if expired:
        if recent_purchase:
            if dwell_ok and strong:
                return SceneDecision(SHOPPING, 0, "new shopping signals after the purchase")
            return SceneDecision(POST_PURCHASE, 0, "")
        scene, dwell_ok = BROWSING, True  # the post-purchase period is over: judge as browsing

    if scene == SHOPPING:
        if signals.session_started and not strong:
            return SceneDecision(BROWSING, 0, "new session")
        low_streak = low_streak + 1 if intent < params.lower_intent else 0
        if low_streak >= params.low_events_to_leave and dwell_ok and not strong:
            return SceneDecision(BROWSING, 0, "low purchase intent")
        return SceneDecision(SHOPPING, low_streak, "")

    if signals.is_cart:
        return SceneDecision(SHOPPING, 0, "added to cart")
    if dwell_ok and intent >= params.upper_intent:
        return SceneDecision(SHOPPING, 0, "high purchase intent")
    if dwell_ok and signals.category_views >= params.strong_view_count:
        return SceneDecision(SHOPPING, 0, "repeated views in one category")
    return SceneDecision(BROWSING, 0, "post-purchase period over" if expired else "")
