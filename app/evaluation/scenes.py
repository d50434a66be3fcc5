"""The online scene model against the rule baseline, scored on the same delayed labels (a report section)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from models.profile import ProfileParams, UserProfile, apply_event, new_profile
from models.scene import SceneModel, SceneModelMetrics, rule_scene
from schemas.events import UserEvent


@dataclass(frozen=True, slots=True)
class SceneComparison:
    """Online scene-model quality vs the rule baseline, both scored on the same delayed labels."""

    model: SceneModelMetrics
    rule_accuracy: float
    rule_auc: float
    rule_labels: int


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
