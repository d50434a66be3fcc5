"""Online experiments as ops see them: Prometheus counters per arm, and `/experiments` (JSON).

The counters are cumulative over this worker's closed feedback windows, labelled by experiment, arm
and scene, so any rate over any range is a PromQL division, e.g. CTR per arm over the last hour:
`sum by (arm) (increase(streamrec_experiment_clicks_total{experiment="x"}[1h]))
 / sum by (arm) (increase(streamrec_experiment_lists_total{experiment="x"}[1h]))`.
`/experiments` gives the running experiment and, per experiment seen in this worker's recent and
open windows, each arm's rates with 95% intervals (app/evaluation/abtest.py); with several workers
each answers for its own partitions, and `streamrec experiment report` sums them all from reco.metrics.
The dashboard's per-arm table is `dashboard_section`, one row per experiment and arm.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import Counter

from app.evaluation.abtest import ArmFigures, arm_figures, sum_arms
from app.runtime.faust_app import StreamRec
from models.feedback import RANK_K, WindowMetrics

_LABELS = ["experiment", "arm", "scene"]
USERS = Counter("streamrec_experiment_users", "users entering an experiment arm", _LABELS)
LISTS = Counter("streamrec_experiment_lists", "lists served in an experiment arm", _LABELS)
CLICKS = Counter("streamrec_experiment_clicks", "experiment lists with an attributed click", _LABELS)
CONVERSIONS = Counter("streamrec_experiment_conversions", "experiment lists with an attributed purchase",
                      _LABELS)
SCORED = Counter("streamrec_experiment_scored", "experiment lists scored against the next interaction",
                 _LABELS)
HITS = Counter("streamrec_experiment_hits", f"scored experiment lists whose next interaction is in the top {RANK_K}",
               _LABELS)
RECIPROCAL_RANK = Counter("streamrec_experiment_reciprocal_rank",
                          f"sum of 1/rank of the next interaction (0 past {RANK_K}): / scored = MRR@{RANK_K}", _LABELS)


def export(closed: Iterable[WindowMetrics]) -> None:
    """Add closed windows of experiments to the Prometheus counters."""
    for w in closed:
        if w.experiment is None:
            continue
        labels = (w.experiment, w.arm, w.scene)
        hist = w.rank_hist or [0] * (RANK_K + 1)
        USERS.labels(*labels).inc(w.users)
        LISTS.labels(*labels).inc(w.lists)
        CLICKS.labels(*labels).inc(w.clicks)
        CONVERSIONS.labels(*labels).inc(w.conversions)
        SCORED.labels(*labels).inc(w.scored)
        HITS.labels(*labels).inc(sum(hist[:RANK_K]))
        RECIPROCAL_RANK.labels(*labels).inc(sum(n / rank for rank, n in enumerate(hist[:RANK_K], start=1)))


def arms_now(runtime: StreamRec) -> dict[str, dict[str, ArmFigures]]:
    """Per experiment seen in this worker's recent closed and open feedback windows: each arm's figures."""
    windows = list(runtime.extras.get("feedback_recent", ()))
    open_windows = runtime.extras.get("feedback")
    if open_windows is not None:
        windows += open_windows.snapshot()
    names = sorted({w.experiment for w in windows if w.experiment is not None})
    return {name: {arm: arm_figures(totals) for arm, totals in sum_arms(windows, name)[0].items()}
            for name in names}


def experiments_document(runtime: StreamRec) -> dict[str, Any]:
    """The running experiment and per-arm figures with 95% intervals from this worker's windows."""
    services = runtime.services
    running = services.experiment if services is not None else None
    registry = runtime.extras.get("experiments")
    definitions = registry.definitions if registry is not None else {}
    out = {}
    for name, arms in arms_now(runtime).items():
        definition = definitions.get(name)
        out[name] = {"definition": msgspec.to_builtins(definition) if definition else None,
                     "arms": {arm: msgspec.to_builtins(figures) for arm, figures in arms.items()}}
    return {
        "running": msgspec.to_builtins(running.definition) if running is not None else None,
        "error": services.experiment_error if services is not None else None,
        "experiments": out,
        "scope": "this worker's partitions, recent closed and open feedback windows",
    }


def dashboard_section(runtime: StreamRec) -> dict[str, Any]:
    """The dashboard's experiment table: one flat row per experiment and arm, intervals beside each rate."""
    services = runtime.services
    running = services.experiment if services is not None else None
    rows = []
    for name, arms in arms_now(runtime).items():
        for arm, f in arms.items():
            rows.append({"experiment": name, "arm": arm, "model_version": f.model_versions[-1] if f.model_versions else None,
                         "users": f.users, "lists": f.lists,
                         "ctr": f.ctr.value, "ctr_low": f.ctr.ci_low, "ctr_high": f.ctr.ci_high,
                         "conversion_rate": f.conversion_rate.value, "conversion_low": f.conversion_rate.ci_low,
                         "conversion_high": f.conversion_rate.ci_high, "hit_rate_20": f.hit_rate_20.value,
                         "mrr_20": f.mrr_20.value, "mrr_low": f.mrr_20.ci_low, "mrr_high": f.mrr_20.ci_high})
    return {"running": running.name if running is not None else None, "rows": rows}


def experiment_routes(runtime: StreamRec) -> list[web.RouteDef]:
    async def experiments(_: web.Request) -> web.Response:
        return web.json_response(experiments_document(runtime), dumps=lambda v: msgspec.json.encode(v).decode())

    return [web.get("/experiments", experiments)]
