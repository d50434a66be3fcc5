"""Offline replay evaluation of StreamRec against strong baselines (issue 8, `streamrec evaluate`).

Protocol: split the events by time; each system is fitted on the earlier part only; then the later part
is replayed in time order and, before each event, every system serves the user's current list, which
is scored against that event's item; then every system observes the event. So no system can see an
event before it is asked to predict it, and all systems are judged on the same events in one pass.
Every system is a ``models.ranking.Ranker`` and is driven the same way (``fit`` / ``recommend`` /
``observe``): the production Recommender as much as a baseline.

Decisions (also in the report):
- the scored item of a click or an item browse is its item; a purchase scores every order line
  against the one list served before the order (one scored target per line); a browse without an
  item is fed to the systems but not scored;
- an event is *warm* when its user had any earlier event (training or replay); top-level numbers are
  on warm events, `all_events` on every scored target;
- lists are requested at K=50 for the HR@1..50 curve; HR/MRR/NDCG@20, coverage, diversity and novelty
  use the first 20 items;
- per-scene groups use the scene reported by the reference system (StreamRec when present), so every
  system is compared on the same events in each scene;
- per-target groups say what the scored item was to its user before the event: ``bought`` (the user
  bought it earlier), ``seen`` (touched earlier, not bought) or ``new``; StreamRec lists a bought
  item only after its cool-down (DESIGN.md §2.5), a baseline at any time, and this is where that shows.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import orjson
from tqdm import tqdm

from app.evaluation.accumulators import ListAccumulator, RankingAccumulator
from app.evaluation.baselines import RankerFactory, baseline_factories
from app.tools.replay import read_events, split_by_time
from models.metrics import category_diversity, novelty, rank_of
from models.ranking import RankedList, Ranker, RankRequest
from schemas.events import Browse, CatalogItem, Click, Purchase, UserEvent, event_items

log = logging.getLogger(__name__)

DAY_MS = 24 * 3600 * 1000
MAX_K = 50
DEFAULT_TRAIN_FRACTION = 0.5
LONG_SPAN_MS = 3 * DAY_MS
"""Data spanning at least this long is split by time window (last `eval_days` evaluated)."""
DEFAULT_EVAL_DAYS = 2.0
REFERENCE_SYSTEM = "streamrec"
PROTOCOL_NOTE = (
    "Protocol: fit on the earlier part only; replay the later part in time order; before each event "
    "every system serves the user's current list (K=50 asked), scored against the event's item; then "
    "every system observes the event. A purchase scores each order line against the list served "
    "before the order; browses without an item are fed in, not scored. Coverage, diversity "
    "(share of distinct-category pairs) and novelty (mean -log2 training popularity share) use the "
    "top {k}. Per-scene groups use StreamRec's scene when it is in the run."
)
TARGET_GROUPS = ("bought", "seen", "new")
JSON_SYSTEM_ORDER = (
    "streamrec",
    "popularity",
    "recent_popularity",
    "user_pop",
    "item_knn",
    "session_knn",
    "vsknn",
    "streamrec_no_decay",
    "streamrec_no_scene",
    "streamrec_no_encoder",
    "streamrec_no_resurface",
    "streamrec_never_relist_bought",
    "streamrec_relist_bought",
    "streamrec_no_diversity",
    "streamrec_relevance_only",
    "streamrec_no_retrain",
)

Metrics = dict[str, float | int | None]


@dataclass(frozen=True, slots=True)
class SystemResult:
    """Everything measured for one system in one run."""

    name: str
    warm: Metrics
    all_events: Metrics
    by_scene: dict[str, Metrics]
    by_event_type: dict[str, Metrics]
    by_target: dict[str, Metrics]  # TARGET_GROUPS: what the scored item was to its user before
    hr_curve_warm: list[float]
    hr_curve_all: list[float]
    fit_seconds: float
    replay_seconds: float
    replay_events: int
    retrain_seconds: float = 0.0  # the scheduled retrains during the replay (--retrain-every-hours)

    def to_json(self) -> dict:
        return {
            **self.warm,
            "all_events": self.all_events,
            "by_scene": self.by_scene,
            "by_event_type": self.by_event_type,
            "by_target": self.by_target,
            "hr_curve": self.hr_curve_warm,
            "hr_curve_all_events": self.hr_curve_all,
            "fit_seconds": round(self.fit_seconds, 3),
            "replay_seconds": round(self.replay_seconds, 3),
            "retrain_seconds": round(self.retrain_seconds, 3),
            "replay_events_per_s": round(self.replay_events / self.replay_seconds, 1)
            if self.replay_seconds > 0
            else None,
        }


@dataclass(frozen=True, slots=True)
class EvaluationResult:
    """One evaluation run: the split, what was scored and every system's numbers."""

    dataset: str
    k: int
    split_ts: int
    train_events: int
    test_events: int
    events_scored: int
    warm_events_scored: int
    unknown_item_share: float
    warm_unknown_item_share: float
    catalog_size: int
    systems: dict[str, SystemResult]
    command: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict:
        ordered = sorted(self.systems, key=_system_order)
        return {
            "dataset": self.dataset,
            "command": self.command,
            "k": self.k,
            "split_ts": self.split_ts,
            "train_events": self.train_events,
            "test_events": self.test_events,
            "events_scored": self.events_scored,
            "warm_events_scored": self.warm_events_scored,
            "unknown_item_share": self.unknown_item_share,
            "warm_unknown_item_share": self.warm_unknown_item_share,
            "catalog_size": self.catalog_size,
            "systems": {name: self.systems[name].to_json() for name in ordered},
        }


def _system_order(name: str) -> tuple[int, str]:
    return (
        (JSON_SYSTEM_ORDER.index(name), name) if name in JSON_SYSTEM_ORDER else (len(JSON_SYSTEM_ORDER), name)
    )


def event_kind(event: UserEvent) -> str:
    """Report group of an event: its type, with the action for clicks (cart and wishlist differ a lot)."""
    if isinstance(event, Click):
        return f"click:{event.action}"
    if isinstance(event, Browse):
        return "browse"
    return "purchase"


def split_at(events: Sequence[UserEvent], boundary_ms: int) -> tuple[list[UserEvent], list[UserEvent]]:
    """Events before `boundary_ms` train, the rest are replayed: the boundary belongs to the future."""
    train = [event for event in events if event.ts < boundary_ms]
    test = [event for event in events if event.ts >= boundary_ms]
    return train, test


def choose_boundary(events: Sequence[UserEvent], eval_days: float = DEFAULT_EVAL_DAYS) -> int | None:
    """Last `eval_days` evaluated when the data spans several days, else None (split by fraction).

    The span ignores the earliest 0.1% of timestamps, so a few stray old rows (the Taobao file has
    some from September) do not make a 2-hour slice look like months.
    """
    if not events:
        return None
    stamps = sorted(event.ts for event in events)
    low = stamps[int(len(stamps) * 0.001)]
    high = stamps[-1]
    if high - low < LONG_SPAN_MS:
        return None
    return high - int(eval_days * DAY_MS)


def _ensure_time_order(train: Sequence[UserEvent], test: Sequence[UserEvent]) -> None:
    if train and test and max(event.ts for event in train) > min(event.ts for event in test):
        raise ValueError("training events must all precede the evaluated ones (never train on the future)")


@dataclass(slots=True)
class _Tracked:
    system: Ranker
    ranking: RankingAccumulator = field(default_factory=RankingAccumulator)
    lists: ListAccumulator = field(default_factory=ListAccumulator)
    fit_seconds: float = 0.0
    replay_seconds: float = 0.0
    retrain_seconds: float = 0.0


def _reference_scene(served: Mapping[str, RankedList], reference: str) -> str:
    own = served.get(reference)
    if own is not None and own.scene is not None:
        return own.scene
    for result in served.values():
        if result.scene is not None:
            return result.scene
    return "none"


def evaluate_streams(
    train: Sequence[UserEvent],
    test: Sequence[UserEvent],
    systems: Mapping[str, RankerFactory],
    *,
    dataset: str = "",
    k: int = 20,
    max_k: int = MAX_K,
    reference: str = REFERENCE_SYSTEM,
    progress: bool = True,
    categories: Mapping[str, str] | None = None,
    scored_users: Callable[[str], bool] | None = None,
    retrain_every_ms: int | None = None,
) -> EvaluationResult:
    """Fit every system on `train`, replay `test` in order, score each list before its event.

    ``scored_users`` limits scoring to the users it accepts (a sample, for tuning); every event is
    still observed by every system. ``retrain_every_ms``: each time the replay's clock passes another
    such period after the split, every system retrains on all events before that moment (train and
    replayed), as a deployment's scheduled retrain would; the next event is scored after it."""
    _ensure_time_order(train, test)
    max_k = max(max_k, k)
    item_category: dict[str, str] = dict(categories or {})
    for event in (*train, *test):
        for item, category in event_items(event):
            if category is not None:
                item_category[item] = category
    catalog_size = len({item for event in (*train, *test) for item, _ in event_items(event)})
    train_counts: Counter[str] = Counter(item for event in train for item, _ in event_items(event))
    train_total = sum(train_counts.values())
    known_users = {event.user_id for event in train}
    touched: dict[str, set[str]] = {}
    bought: dict[str, set[str]] = {}
    for event in train:
        _remember(event, touched, bought)

    tracked: dict[str, _Tracked] = {}
    for name, factory in systems.items():
        system = factory()
        started = time.perf_counter()
        system.fit(train)
        tracked[name] = _Tracked(system=system, fit_seconds=time.perf_counter() - started)
        log.info("fitted %s on %d events in %.1f s", name, len(train), tracked[name].fit_seconds)

    scored = warm_scored = unknown = warm_unknown = 0
    history = list(train)  # every event before the current one: what a scheduled retrain sees
    next_retrain = (test[0].ts + retrain_every_ms) if retrain_every_ms and test else None
    for event in tqdm(
        test, desc=f"evaluate {dataset}".strip(), unit="ev", disable=not progress, mininterval=2
    ):
        if next_retrain is not None and event.ts >= next_retrain:
            for name, entry in tracked.items():
                started = time.perf_counter()
                entry.system.retrain(history)
                entry.retrain_seconds += time.perf_counter() - started
            log.info("retrained on %d events at %d", len(history), next_retrain)
            while next_retrain <= event.ts:
                next_retrain += retrain_every_ms  # type: ignore[operator]
        targets = [item for item, _ in event_items(event)]
        user = event.user_id
        if targets and (scored_users is None or scored_users(user)):
            warm = user in known_users
            served: dict[str, RankedList] = {}
            request = [RankRequest(user)]
            for name, entry in tracked.items():
                started = time.perf_counter()
                served[name] = entry.system.recommend(request, event.ts, k=max_k)[0]
                entry.replay_seconds += time.perf_counter() - started
            scene = _reference_scene(served, reference)
            kind = event_kind(event)
            keys: list[Hashable] = ["all", ("all", "scene", scene), ("all", "type", kind)]
            if warm:
                keys += ["warm", ("warm", "scene", scene), ("warm", "type", kind)]
            new_items = sum(1 for item in targets if item not in train_counts)
            scored += len(targets)
            unknown += new_items
            if warm:
                warm_scored += len(targets)
                warm_unknown += new_items
            own_touched, own_bought = touched.get(user, ()), bought.get(user, ())
            target_keys = {
                item: [*keys, ("warm", "target", _target_group(item, own_touched, own_bought))] if warm else keys
                for item in targets
            }
            for name, entry in tracked.items():
                ranked = served[name].item_ids
                for item in targets:
                    entry.ranking.add(rank_of(ranked, item), target_keys[item])
                top = ranked[:k]
                entry.lists.add(
                    top,
                    keys,
                    user_id=user,
                    cold_start=served[name].cold_start,
                    diversity=category_diversity([item_category.get(item) for item in top]),
                    novelty=novelty(top, train_counts, train_total),
                )
        observed = [event]
        for entry in tracked.values():
            started = time.perf_counter()
            entry.system.observe(observed)
            entry.replay_seconds += time.perf_counter() - started
        known_users.add(user)
        _remember(event, touched, bought)
        history.append(event)

    results = {
        name: _system_result(name, entry, k, max_k, catalog_size, len(test))
        for name, entry in tracked.items()
    }
    return EvaluationResult(
        dataset=dataset,
        k=k,
        split_ts=min((event.ts for event in test), default=0),
        train_events=len(train),
        test_events=len(test),
        events_scored=scored,
        warm_events_scored=warm_scored,
        unknown_item_share=unknown / scored if scored else 0.0,
        warm_unknown_item_share=warm_unknown / warm_scored if warm_scored else 0.0,
        catalog_size=catalog_size,
        systems=results,
    )


def _remember(event: UserEvent, touched: dict[str, set[str]], bought: dict[str, set[str]]) -> None:
    items = [item for item, _ in event_items(event)]
    touched.setdefault(event.user_id, set()).update(items)
    if isinstance(event, Purchase):
        bought.setdefault(event.user_id, set()).update(items)


def _target_group(item: str, touched: set[str] | tuple, bought: set[str] | tuple) -> str:
    return "bought" if item in bought else "seen" if item in touched else "new"


def _metrics(entry: _Tracked, key: Hashable, k: int, catalog_size: int) -> Metrics:
    ranking = entry.ranking.summary(key, k)
    lists = entry.lists.summary(key, catalog_size)
    return {
        f"hr@{k}": ranking.hit_rate,
        f"mrr@{k}": ranking.mrr,
        f"ndcg@{k}": ranking.ndcg,
        "coverage": lists.coverage,
        "diversity": lists.diversity,
        "novelty": lists.novelty,
        "cold_start_share": lists.cold_start_share,
        "cold_start_user_share": lists.cold_start_user_share,
        "events": ranking.events,
    }


def _system_result(
    name: str, entry: _Tracked, k: int, max_k: int, catalog_size: int, replayed: int
) -> SystemResult:
    keys = entry.ranking.keys()
    scenes = sorted(key[2] for key in keys if isinstance(key, tuple) and key[:2] == ("warm", "scene"))
    kinds = sorted(key[2] for key in keys if isinstance(key, tuple) and key[:2] == ("warm", "type"))
    return SystemResult(
        name=name,
        warm=_metrics(entry, "warm", k, catalog_size),
        all_events=_metrics(entry, "all", k, catalog_size),
        by_scene={scene: _metrics(entry, ("warm", "scene", scene), k, catalog_size) for scene in scenes},
        by_event_type={kind: _metrics(entry, ("warm", "type", kind), k, catalog_size) for kind in kinds},
        by_target={group: _metrics(entry, ("warm", "target", group), k, catalog_size)
                   for group in TARGET_GROUPS if entry.ranking.count(("warm", "target", group))},
        hr_curve_warm=entry.ranking.hit_rate_curve("warm", max_k),
        hr_curve_all=entry.ranking.hit_rate_curve("all", max_k),
        fit_seconds=entry.fit_seconds,
        replay_seconds=entry.replay_seconds,
        replay_events=replayed,
        retrain_seconds=entry.retrain_seconds,
    )


def load_events(data_path: Path) -> tuple[list[UserEvent], dict[str, str]]:
    """User events of a Taobao CSV (plain or gzip) or JSON-lines file in time order, and catalog categories.

    Catalog records are not replayed to the systems (the protocol is about user events); their
    categories only serve the diversity metric when events carry none.
    """
    events: list[UserEvent] = []
    categories: dict[str, str] = {}
    for event in read_events(data_path):
        if isinstance(event, CatalogItem):
            categories[event.item_id] = event.category
        else:
            events.append(event)
    return events, categories


def split_events(
    events: Sequence[UserEvent],
    *,
    train_fraction: float | None = None,
    eval_days: float | None = None,
) -> tuple[list[UserEvent], list[UserEvent]]:
    """The time split: explicit `eval_days` or `train_fraction` if given, else chosen from the span.

    Multi-day data evaluates its last `DEFAULT_EVAL_DAYS` days; shorter data splits by fraction.
    """
    if eval_days is not None:
        boundary = max(event.ts for event in events) - int(eval_days * DAY_MS)
        return split_at(events, boundary)
    if train_fraction is None:
        boundary = choose_boundary(events)
        if boundary is not None:
            return split_at(events, boundary)
        train_fraction = DEFAULT_TRAIN_FRACTION
    train, test = split_by_time(events, train_fraction)
    return list(train), list(test)


def run_evaluation(
    data_path: Path,
    systems: Mapping[str, RankerFactory] | None = None,
    *,
    train_fraction: float | None = None,
    eval_days: float | None = None,
    k: int = 20,
    progress: bool = True,
    command: str = "",
    retrain_every_ms: int | None = None,
) -> EvaluationResult:
    """Read, split by time, and evaluate `systems` (default: the baselines) on one replay file."""
    data_path = Path(data_path)
    events, catalog_categories = load_events(data_path)
    train, test = split_events(events, train_fraction=train_fraction, eval_days=eval_days)
    log.info("%s: %d events, %d train, %d replayed", data_path, len(events), len(train), len(test))
    result = evaluate_streams(
        train,
        test,
        systems if systems is not None else baseline_factories(),
        dataset=f"{data_path.parent.name}/{data_path.name}",
        k=k,
        progress=progress,
        categories=catalog_categories,
        retrain_every_ms=retrain_every_ms,
    )
    return _with_command(result, command)


def _with_command(result: EvaluationResult, command: str) -> EvaluationResult:
    return replace(result, command=command)


def write_json(result: EvaluationResult, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


def _fmt(value: float | None, percent: bool = True) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{100 * value:.2f}" if percent else f"{value:.2f}"


def _plot_hr_curves(result: EvaluationResult, path: Path) -> None:
    from matplotlib.figure import Figure  # object API: no pyplot global state, no display needed

    figure = Figure(figsize=(8, 5), dpi=110)
    axes = figure.add_subplot()
    for name in sorted(result.systems, key=_system_order):
        curve = result.systems[name].hr_curve_warm
        axes.plot(range(1, len(curve) + 1), curve, label=name, linewidth=1.6)
    axes.set_xlabel("K (list length)")
    axes.set_ylabel("HR@K (warm events)")
    axes.set_title(f"HR@K, {result.dataset}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


def _metrics_table(
    result: EvaluationResult, pick: Callable[[SystemResult], Metrics], speed: bool
) -> list[str]:
    k = result.k
    head = f"| system | HR@{k} (%) | MRR@{k} (%) | NDCG@{k} (%) | coverage (%) | diversity (%) | novelty (bits) | cold start (% lists) |"
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|"
    if speed:
        head += " fit (s) | replay (events/s) |"
        rule += "---:|---:|"
    lines = [head, rule]
    for name in sorted(result.systems, key=_system_order):
        system = result.systems[name]
        m = pick(system)
        row = (
            f"| {name} | {_fmt(m[f'hr@{k}'])} | {_fmt(m[f'mrr@{k}'])} | {_fmt(m[f'ndcg@{k}'])} | "
            f"{_fmt(m['coverage'])} | {_fmt(m['diversity'])} | {_fmt(m['novelty'], percent=False)} | "
            f"{_fmt(m['cold_start_share'])} |"
        )
        if speed:
            rate = system.replay_events / system.replay_seconds if system.replay_seconds > 0 else None
            row += f" {system.fit_seconds:.1f} | {_fmt(rate, percent=False) if rate else '-'} |"
        lines.append(row)
    return lines


def _group_table(result: EvaluationResult, groups: Callable[[SystemResult], dict[str, Metrics]]) -> list[str]:
    k = result.k
    names = sorted(result.systems, key=_system_order)
    columns = sorted({group for name in names for group in groups(result.systems[name])})
    if not columns:
        return []
    first = groups(result.systems[names[0]])
    lines = [
        "| system | "
        + " | ".join(f"{c} (n={_fmt(first.get(c, {}).get('events', 0))})" for c in columns)
        + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name in names:
        cells = [_fmt(groups(result.systems[name]).get(column, {}).get(f"hr@{k}")) for column in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _target_table(result: EvaluationResult) -> list[str]:
    """HR and MRR per target group, and how many of a system's warm MRR points each group gives."""
    k = result.k
    names = sorted(result.systems, key=_system_order)
    first = result.systems[names[0]].by_target if names else {}
    groups = [group for group in TARGET_GROUPS if group in first]
    if not groups:
        return []
    warm_n = result.systems[names[0]].warm["events"] or 0
    head = "| system | " + " | ".join(
        f"{g} (n={_fmt(first[g]['events'])}) HR@{k} | MRR@{k} | MRR points" for g in groups) + " |"
    lines = [head, "|---|" + "---:|---:|---:|" * len(groups)]
    for name in names:
        by_target = result.systems[name].by_target
        cells = []
        for group in groups:
            m = by_target.get(group, {})
            mrr, n = m.get(f"mrr@{k}"), m.get("events") or 0
            share = (mrr or 0.0) * n / warm_n if warm_n else None
            cells += [_fmt(m.get(f"hr@{k}")), _fmt(mrr), _fmt(share)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def render_report(result: EvaluationResult, plot_name: str) -> str:
    """The Markdown report of one run; `plot_name` is the PNG's path relative to the report."""
    k = result.k
    strongest = max(
        (name for name in result.systems if not name.startswith("streamrec")),
        key=lambda name: result.systems[name].warm[f"hr@{k}"] or 0.0,
        default=None,
    )
    lines = [
        f"# Evaluation: {result.dataset}",
        "",
        f"Made by: `{result.command}`" if result.command else "",
        "",
        (
            f"- events: {result.train_events:,} before the split (fit), {result.test_events:,} replayed "
            f"after it (split at ts {result.split_ts}, UTC ms)"
        ),
        (
            f"- scored targets: {result.events_scored:,} in all, {result.warm_events_scored:,} warm "
            "(the user had an earlier event)"
        ),
        (
            f"- targets whose item was unknown at training time: {_fmt(result.unknown_item_share)}% "
            f"(warm: {_fmt(result.warm_unknown_item_share)}%)"
        ),
        f"- catalog (distinct items in the file): {result.catalog_size:,}",
        "",
        PROTOCOL_NOTE.format(k=k),
        "",
        f"## Warm events (top-level numbers), @{k}",
        "",
        *_metrics_table(result, lambda system: system.warm, speed=True),
        "",
        f"Strongest baseline here (HR@{k}, warm): **{strongest}**." if strongest else "",
        "",
        f"## All events, @{k}",
        "",
        *_metrics_table(result, lambda system: system.all_events, speed=False),
        "",
        f"## HR@{k} (%) by event type, warm events",
        "",
        *_group_table(result, lambda system: system.by_event_type),
        "",
        f"## HR@{k} (%) by scene, warm events",
        "",
        *_group_table(result, lambda system: system.by_scene),
        "",
        "## By what the target was to its user before the event, warm events",
        "",
        ("bought: the user had bought the item; seen: touched it, not bought; new: never touched. "
         f"MRR points: the group's share of the system's warm MRR@{k} (they add up to it)."),
        "",
        *_target_table(result),
        "",
        "## HR@K for K = 1..50, warm events",
        "",
        f"![HR@K]({plot_name})",
        "",
        *result.notes,
    ]
    return "\n".join(lines).rstrip() + "\n"


def write_report(result: EvaluationResult, path: Path) -> Path:
    """Write the Markdown report and its HR@K plot (PNG beside it); returns the plot's path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    slug = result.dataset.rsplit("/", 1)[-1].split(".")[0] or "data"
    plot = path.with_name(f"{path.stem}_{slug}_hr_at_k.png")
    _plot_hr_curves(result, plot)
    path.write_text(render_report(result, plot.name), encoding="utf-8")
    return plot
