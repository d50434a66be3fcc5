"""Feedback metrics (DESIGN.md §2.7): attribute interactions to served lists, aggregate in event-time windows.

Pure logic, no Kafka: the feedback stage (app/runtime/feedback.py) feeds it the lists the refresh agent
builds and the events the profile agent accepts, one user's state at a time (a user's lists and
events meet in one partition), and the feedback timer publishes what `close` returns.

Decisions (written down because the contract is silent):
- Event time of a list is its ``source_ts`` (the newest event it reflects), so lists and interactions
  live on the same clock also when a recorded data set is replayed with its original timestamps.
- Attribution: a click/purchase carrying ``rec_id`` goes to that list; one without goes to the newest
  recent list containing the item. Only within ``attribution_ms`` after the list's ``source_ts``. A
  list counts at most one click and one conversion, so CTR = clicked lists / lists and conversion =
  converted lists / lists, both in [0, 1].
- Hit-rate@K / NDCG@K: the user's latest list is scored once, against the first item interaction after
  its ``source_ts`` (a purchase scores its best-ranked item).
- Windows are tumbling on event time; a window closes when the watermark (newest event time seen,
  advanced by idle wall time so a quiet stream still closes windows) passes ``end + grace``. Events
  for a closed window are counted as ``late_dropped``, never silently lost.
- Every figure is split by (scene, model_version, experiment, arm). A list served in an online
  experiment carries its own ``experiment`` and ``arm`` (models/experiments.py), and everything
  attributed to it counts there: the arm is read from the list, never recomputed. Other lists have no
  experiment and ``arm`` is the A/B bucket of a plain user hash.
- Experiment figures add what the report's tests need: ``users`` (users whose first list of the
  experiment falls in the window; summed over windows it is the arm's size, for the sample-ratio
  check), HR@20 / MRR@20 of the next interaction, and ``rank_hist``, the scored lists by that
  interaction's rank (1..20, then a miss), so MRR can be bootstrapped without the raw events.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from models.metrics import category_diversity, ndcg, rank_of
from schemas.events import Purchase, Recommendation, UserEvent, event_items

MAX_LISTS = 8  # recent lists remembered per user for attribution
MAX_EVENT_IDS = 64  # recent event ids remembered per user (redelivery must not count twice)
MAX_FRESHNESS_SAMPLES = 20_000  # per group and window: exact percentiles, bounded memory
RANK_K = 20  # HR@20 / MRR@20 and the rank histogram's length (plus one slot for a miss)
MAX_EXPERIMENTS = 16  # experiments remembered per user (counted once as an arm's user)


@dataclass(frozen=True, slots=True)
class FeedbackParams:
    window_ms: int = 60_000
    grace_ms: int = 10_000
    attribution_ms: int = 30 * 60_000
    k: int = 10
    ab_split: float = 0.5  # share of users in arm "A"


def ab_arm(user_id: str, split: float = 0.5, salt: str = "streamrec") -> str:
    """Stable A/B arm of a user: a hash of the id, not Python's per-process salted hash()."""
    digest = hashlib.blake2b(f"{salt}:{user_id}".encode(), digest_size=8).digest()
    return "A" if int.from_bytes(digest, "big") / 2**64 < split else "B"


def window_start(ts_ms: int, window_ms: int) -> int:
    return ts_ms - ts_ms % window_ms


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100]); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[rank - 1])


# --- per-user attribution state (kept in the `feedback` table) ------------------------------------------


@dataclass(slots=True)
class ListRef:
    rec_id: str
    source_ts: int
    scene: str
    model_version: str
    items: list[str]
    clicked: bool = False
    converted: bool = False
    experiment: str | None = None
    arm: str | None = None  # None only in rows written before arms were kept

    def to_dict(self) -> dict[str, Any]:
        """What ``dataclasses.asdict`` gives, built directly: asdict's deep copy was 7% of a benchmark
        worker's samples (every event and list rewrites its user's row)."""
        return {"rec_id": self.rec_id, "source_ts": self.source_ts, "scene": self.scene,
                "model_version": self.model_version, "items": list(self.items), "clicked": self.clicked,
                "converted": self.converted, "experiment": self.experiment, "arm": self.arm}


@dataclass(slots=True)
class UserFeedback:
    """What must survive between a user's messages: recent lists, whether the latest is scored, dedupe ids."""

    lists: list[ListRef] = field(default_factory=list)  # oldest first
    latest_scored: bool = True
    last_scene: str | None = None
    event_ids: list[str] = field(default_factory=list)
    experiments: list[str] = field(default_factory=list)  # experiments whose lists this user has had

    def to_dict(self) -> dict[str, Any]:
        return {"lists": [ref.to_dict() for ref in self.lists], "latest_scored": self.latest_scored,
                "last_scene": self.last_scene, "event_ids": list(self.event_ids),
                "experiments": list(self.experiments)}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> UserFeedback:
        return cls(lists=[ListRef(**ref) for ref in doc.get("lists", ())],
                   latest_scored=bool(doc.get("latest_scored", True)), last_scene=doc.get("last_scene"),
                   event_ids=list(doc.get("event_ids", ())), experiments=list(doc.get("experiments", ())))


# --- windowed aggregates -----------------------------------------------------------------------------------


GroupKey = tuple[int, str, str, str, str]  # window start, scene, model_version, experiment ("" for none), arm


@dataclass(slots=True)
class GroupStats:
    lists: int = 0
    impressions: int = 0  # items shown
    clicks: int = 0  # lists with an attributed click
    conversions: int = 0  # lists with an attributed purchase
    scored: int = 0  # latest lists scored against the next interaction
    hits: int = 0
    ndcg_sum: float = 0.0
    diversity_sum: float = 0.0
    diversity_n: int = 0
    scene_switches: int = 0
    items: set[str] = field(default_factory=set)
    freshness_ms: list[float] = field(default_factory=list)
    users: int = 0  # users whose first list of the experiment is in this group
    rank_hist: list[int] = field(default_factory=lambda: [0] * (RANK_K + 1))  # ranks 1..RANK_K, then misses


@dataclass(frozen=True, slots=True)
class WindowMetrics:
    """One closed window of one (scene, model_version, arm) group: the record published on reco.metrics."""

    metric: str
    window_start: int
    window_end: int
    scene: str
    model_version: str
    arm: str
    lists: int
    impressions: int
    clicks: int
    conversions: int
    ctr: float | None
    conversion_rate: float | None
    k: int
    scored: int
    hit_rate: float | None
    ndcg: float | None
    coverage: float | None
    distinct_items: int
    diversity: float | None
    scene_switches: int
    freshness_p50_ms: float | None
    freshness_p99_ms: float | None
    late_dropped_total: int
    scene_model_accuracy: float | None
    experiment: str | None = None
    users: int = 0
    hit_rate_20: float | None = None
    mrr_20: float | None = None
    rank_hist: list[int] | None = None  # scored lists by the next interaction's rank: 1..20, then a miss


def _ratio(num: float, den: int) -> float | None:
    return num / den if den else None


@dataclass
class FeedbackWindows:
    """Attribution and tumbling event-time windows. Feed it with `on_list` / `on_event`, then `close`."""

    params: FeedbackParams = field(default_factory=FeedbackParams)
    category_of: Callable[[str], str | None] = lambda _item: None
    catalog_size: Callable[[], int] = lambda: 0
    groups: dict[GroupKey, GroupStats] = field(default_factory=dict)
    watermark: int | None = None  # newest event time seen
    closed_until: int | None = None  # every window ending at or before this is closed
    late_dropped: int = 0  # events whose window had already closed (total)

    def _group(self, ts: int, scene: str, model_version: str, experiment: str | None,
               arm: str) -> GroupStats | None:
        start = window_start(ts, self.params.window_ms)
        if self.closed_until is not None and start + self.params.window_ms <= self.closed_until:
            self.late_dropped += 1
            return None
        key = (start, scene, model_version, experiment or "", arm)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = GroupStats()
        return group

    def _advance(self, ts: int) -> None:
        self.watermark = ts if self.watermark is None else max(self.watermark, ts)

    def on_list(self, state: UserFeedback, rec: Recommendation) -> bool:
        """A served list; False when it was seen before (redelivery)."""
        if any(ref.rec_id == rec.rec_id for ref in state.lists):
            return False
        items = [item.item_id for item in rec.items]
        experiment = rec.experiment
        arm = (rec.arm or "unknown") if experiment is not None else ab_arm(rec.user_id, self.params.ab_split)
        group = self._group(rec.source_ts, rec.scene, rec.model_version, experiment, arm)
        if group is not None:
            if experiment is not None and experiment not in state.experiments:
                state.experiments.append(experiment)
                del state.experiments[:-MAX_EXPERIMENTS]
                group.users += 1
            group.lists += 1
            group.impressions += len(items)
            group.items.update(items)
            if len(group.freshness_ms) < MAX_FRESHNESS_SAMPLES:
                group.freshness_ms.append(float(rec.generated_at - rec.source_ts))
            diversity = category_diversity([self.category_of(i) for i in items])
            if diversity is not None:
                group.diversity_sum += diversity
                group.diversity_n += 1
            if state.last_scene is not None and state.last_scene != rec.scene:
                group.scene_switches += 1
        state.last_scene = rec.scene
        state.lists.append(ListRef(rec.rec_id, rec.source_ts, rec.scene, rec.model_version, items,
                                   experiment=experiment, arm=arm))
        del state.lists[:-MAX_LISTS]
        state.latest_scored = False
        self._advance(rec.source_ts)
        return True

    def on_event(self, state: UserFeedback, event: UserEvent) -> bool:
        """A user interaction: attribution and next-interaction scoring; False for a redelivered event."""
        if event.event_id in state.event_ids:
            return False
        state.event_ids.append(event.event_id)
        del state.event_ids[:-MAX_EVENT_IDS]
        self._advance(event.ts)
        touched = [item for item, _ in event_items(event)]
        if not touched:
            return True
        latest = state.lists[-1] if state.lists else None
        if latest is not None and not state.latest_scored and event.ts > latest.source_ts:
            state.latest_scored = True
            ranks = [r for r in (rank_of(latest.items, item) for item in touched) if r is not None]
            best = min(ranks) if ranks else None
            group = self._group(event.ts, latest.scene, latest.model_version, latest.experiment,
                                self._arm_of(latest, event.user_id))
            if group is not None:
                group.scored += 1
                if best is not None and best <= self.params.k:
                    group.hits += 1
                group.ndcg_sum += ndcg(best, self.params.k)
                group.rank_hist[best - 1 if best is not None and best <= RANK_K else RANK_K] += 1
        source = self._attributed(state, event, touched)
        if source is not None:
            purchase = isinstance(event, Purchase)
            if (source.converted if purchase else source.clicked):
                return True
            group = self._group(event.ts, source.scene, source.model_version, source.experiment,
                                self._arm_of(source, event.user_id))
            if group is not None:
                if purchase:
                    source.converted = True
                    group.conversions += 1
                else:
                    source.clicked = True
                    group.clicks += 1
        return True

    def _arm_of(self, ref: ListRef, user_id: str) -> str:
        return ref.arm if ref.arm is not None else ab_arm(user_id, self.params.ab_split)

    def _attributed(self, state: UserFeedback, event: UserEvent, touched: list[str]) -> ListRef | None:
        window = self.params.attribution_ms
        in_window = [ref for ref in state.lists if 0 <= event.ts - ref.source_ts <= window]
        rec_id = getattr(event, "rec_id", None)
        if rec_id is not None:
            return next((ref for ref in in_window if ref.rec_id == rec_id), None)
        for ref in reversed(in_window):
            if any(item in ref.items for item in touched):
                return ref
        return None

    def effective_watermark(self, idle_ms: int = 0) -> int | None:
        return None if self.watermark is None else self.watermark + max(0, idle_ms)

    def close(self, idle_ms: int = 0, scene_model_accuracy: float | None = None,
              force: bool = False) -> list[WindowMetrics]:
        """Close every window whose end + grace is at or before the watermark (all of them if `force`)."""
        mark = self.effective_watermark(idle_ms)
        if mark is None:
            return []
        horizon = mark - self.params.grace_ms
        boundary = horizon - horizon % self.params.window_ms  # windows ending at or before it are done
        if force and self.groups:
            boundary = max(boundary, max(key[0] for key in self.groups) + self.params.window_ms)
        done = sorted(key for key in self.groups if key[0] + self.params.window_ms <= boundary)
        self.closed_until = boundary if self.closed_until is None else max(self.closed_until, boundary)
        return [self._summary(key, self.groups.pop(key), scene_model_accuracy) for key in done]

    def snapshot(self, scene_model_accuracy: float | None = None) -> list[WindowMetrics]:
        """The open windows' figures so far, without closing them (live dashboards)."""
        return [self._summary(key, group, scene_model_accuracy, final=False)
                for key, group in sorted(self.groups.items())]

    def _summary(self, key: GroupKey, g: GroupStats, accuracy: float | None, final: bool = True) -> WindowMetrics:
        start, scene, model_version, experiment, arm = key
        size = self.catalog_size()
        hits_20 = sum(g.rank_hist[:RANK_K])
        rr_20 = sum(n / rank for rank, n in enumerate(g.rank_hist[:RANK_K], start=1))
        accuracy = None if accuracy is None or math.isnan(accuracy) else accuracy
        return WindowMetrics(
            metric="feedback" if final else "feedback_open", window_start=start, window_end=start + self.params.window_ms, scene=scene,
            model_version=model_version, arm=arm, lists=g.lists, impressions=g.impressions, clicks=g.clicks,
            conversions=g.conversions, ctr=_ratio(g.clicks, g.lists), conversion_rate=_ratio(g.conversions, g.lists),
            k=self.params.k, scored=g.scored, hit_rate=_ratio(g.hits, g.scored), ndcg=_ratio(g.ndcg_sum, g.scored),
            coverage=len(g.items) / size if size else None, distinct_items=len(g.items),
            diversity=_ratio(g.diversity_sum, g.diversity_n), scene_switches=g.scene_switches,
            freshness_p50_ms=percentile(g.freshness_ms, 50), freshness_p99_ms=percentile(g.freshness_ms, 99),
            late_dropped_total=self.late_dropped, scene_model_accuracy=accuracy,
            experiment=experiment or None, users=g.users, hit_rate_20=_ratio(hits_20, g.scored),
            mrr_20=_ratio(rr_20, g.scored), rank_hist=list(g.rank_hist))


def scene_distribution(windows: Iterable[WindowMetrics]) -> dict[str, float]:
    """Share of lists per scene over some closed windows."""
    counts: dict[str, int] = {}
    for w in windows:
        counts[w.scene] = counts.get(w.scene, 0) + w.lists
    total = sum(counts.values())
    return {scene: n / total for scene, n in sorted(counts.items())} if total else {}
