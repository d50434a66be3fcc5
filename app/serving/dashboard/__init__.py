"""The built-in ops dashboard at /dashboard: one static page drawing Chart.js charts from one JSON document.

The page (index.html) polls `/dashboard/data` every POLL_INTERVAL_S and shows nothing that is not in
that document, so the page and its tests agree on one source: a new figure is a key here plus an
element with ``data-field`` in the page, a new chart is one entry in the page's CHARTS list. `counters`
is exactly what `/stats` answers; `series` holds the time series the charts draw, each ``[[t_ms, value]]``.
Chart.js (static/, MIT, version in docs/ARCHITECTURE.md) is served by the worker: no CDN at run time.

events/s is measured over a RATE_WINDOW_S window of counter samples taken every SAMPLE_EVERY_S: the
stats table is written once per batch, so the difference between two polls read 0 while events flowed.
`/dashboard/users/{id}` is the user lookup: recent interactions, current scene and the latest list with
its reasons. Errors are JSON ``{"error", "detail"}`` (app/serving/web.py), which the page shows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from importlib import resources
from typing import Any

import msgspec
import orjson
from aiohttp import web

from app.runtime.counters import totals
from app.runtime.faust_app import StreamRec
from app.serving.experiments import dashboard_section
from models.feedback import WindowMetrics, percentile

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 2.0  # the page's poll period (sent to it in every document)
SAMPLE_EVERY_S = 1.0  # how often the consumed counter is sampled for events/s
RATE_WINDOW_S = 10.0  # events/s is the counter's increase over this window
HISTORY_STEP_S = 5.0  # one point per step in the events/s and freshness series
HISTORY_S = 15 * 60.0  # the time series cover this much
QUALITY_WINDOW_MS = 15 * 60_000  # CTR / scene figures cover closed windows this recent, plus the open ones
FRESHNESS_WINDOW_S = 120.0
STATIC = {"chart.umd.min.js": "text/javascript", "chart.js-LICENSE.md": "text/plain"}  # served as is


class RateMeter:
    """Events/s from samples of a monotonic counter, over a sliding window.

    A rate between two consecutive samples reads 0 whenever the counter (written once per batch) did not
    move in between; over RATE_WINDOW_S of samples it reads the flow. No rate (None) until the samples
    span half a window, so a fresh worker shows "no data" rather than a number from one interval.
    """

    def __init__(self, window_s: float = RATE_WINDOW_S, history_step_s: float = HISTORY_STEP_S,
                 history_s: float = HISTORY_S) -> None:
        self.window_s = window_s
        self.history_step_s = history_step_s
        self.samples: deque[tuple[float, int]] = deque()
        self.history: deque[list[float]] = deque(maxlen=max(1, int(history_s / history_step_s)))

    def add(self, t: float, count: int) -> None:
        """Record the counter's value at time t (seconds); appends a history point every history_step_s."""
        self.samples.append((t, count))
        while len(self.samples) > 2 and self.samples[1][0] <= t - self.window_s:
            self.samples.popleft()  # keep one sample at or before the window's start
        rate = self.rate()
        if rate is not None and (not self.history or t * 1000 - self.history[-1][0] >= self.history_step_s * 1000):
            self.history.append([int(t * 1000), round(rate, 2)])

    def rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, c0), (t1, c1) = self.samples[0], self.samples[-1]
        span = t1 - t0
        if span < self.window_s / 2:
            return None
        return max(0, c1 - c0) / span  # a counter that went down (partitions moved away) is not a negative rate


def quality(windows: list[WindowMetrics]) -> dict[str, Any]:
    groups: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    scenes: dict[str, int] = defaultdict(int)
    for w in windows:
        g = groups[(w.scene, w.model_version)]
        g[0] += w.lists
        g[1] += w.clicks
        g[2] += w.conversions
        scenes[w.scene] += w.lists
    rows = [{"scene": s, "model_version": m, "lists": n, "clicks": c, "conversions": v,
             "ctr": c / n if n else None, "conversion_rate": v / n if n else None}
            for (s, m), (n, c, v) in sorted(groups.items())]
    return {"by_scene_model": rows, "scenes": dict(sorted(scenes.items())), "lists_total": sum(scenes.values())}


def freshness_series(samples: list[tuple[float, float]], step_s: float = HISTORY_STEP_S * 2) -> dict[str, list]:
    """p50 and p99 of list freshness per step_s bucket of arrival time: ``{"p50_ms": [[t_ms, v]], ...}``."""
    buckets: dict[int, list[float]] = defaultdict(list)
    for t, ms in samples:
        buckets[int(t // step_s)].append(ms)
    ordered = sorted(buckets.items())
    return {"p50_ms": [[int((b + 1) * step_s * 1000), percentile(v, 50)] for b, v in ordered],
            "p99_ms": [[int((b + 1) * step_s * 1000), percentile(v, 99)] for b, v in ordered]}


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def _page() -> bytes:
    return resources.files(__package__).joinpath("index.html").read_bytes()


def dashboard_routes(runtime: StreamRec) -> list[web.RouteDef]:
    """The dashboard's routes; starts the events/s sampler on the app (call it with the app running)."""
    meter = RateMeter()

    def consumed() -> int:
        return totals(runtime.stats.items()).get("ingest.consumed", 0)

    async def sample_rate() -> None:
        while True:
            try:
                meter.add(time.time(), consumed())
            except Exception:  # a table mid-rebalance; the next sample will do
                logger.debug("events/s sample failed", exc_info=True)
            await asyncio.sleep(SAMPLE_EVERY_S)

    runtime.app.add_future(sample_rate())  # mode's Service API: cancelled when the app stops

    async def page(_: web.Request) -> web.Response:
        return web.Response(body=_page(), content_type="text/html", charset="utf-8")

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=_static(name), content_type=STATIC[name], charset="utf-8",
                            headers={"Cache-Control": "max-age=3600"})

    async def data(_: web.Request) -> web.Response:
        now = time.time()
        counts = totals(runtime.stats.items())
        lag_now = runtime.extras.get("lag_latest", [])
        fresh_all = list(runtime.extras.get("freshness_recent", ()))
        fresh = [ms for t, ms in fresh_all if now - t <= FRESHNESS_WINDOW_S]
        windows = runtime.extras.get("feedback")
        recent = [w for w in runtime.extras.get("feedback_recent", ())
                  if w.window_end >= now * 1000 - QUALITY_WINDOW_MS]
        open_now = windows.snapshot() if windows is not None else []
        known_lag = [s for s in lag_now if s.lag is not None]
        ages = [s.age_s for s in known_lag if s.age_s is not None]
        fresh_series = freshness_series([(t, ms) for t, ms in fresh_all if now - t <= HISTORY_S])
        body = {
            "now": int(now * 1000),
            "poll_interval_s": POLL_INTERVAL_S,
            "model_version": runtime.services.recommender.model_version if runtime.services else None,
            "counters": counts,
            "throughput": {"events_per_s": meter.rate(), "window_s": RATE_WINDOW_S},
            "lag": [s.to_dict() for s in lag_now],
            "lag_total": sum(s.lag for s in known_lag) if lag_now else None,
            "lag_age_s": max(ages, default=0.0) if lag_now else None,
            "freshness": {"p50_ms": percentile(fresh, 50), "p99_ms": percentile(fresh, 99), "lists": len(fresh),
                          "window_s": FRESHNESS_WINDOW_S},
            "quality": quality(recent + open_now),
            "windows_closed": len(runtime.extras.get("feedback_recent", ())),
            "experiments": dashboard_section(runtime),  # per arm of an online experiment, 95% intervals
            "series": {"events_per_s": list(meter.history),
                       "lag_total": list(runtime.extras.get("lag_history", ())),
                       "freshness_p50_ms": fresh_series["p50_ms"],
                       "freshness_p99_ms": fresh_series["p99_ms"]},
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    async def user(request: web.Request) -> web.Response:
        user_id = request.match_info["user_id"]  # checked by app/serving/web.py's middleware (400 if malformed)
        store = runtime.opened_store
        if store is None:
            return web.json_response({"error": "not_ready", "detail": "store not open"}, status=503)
        profile, latest = await store.get_profile(user_id), await store.latest_recommendation(user_id)
        if profile is None and latest is None:
            return web.json_response({"error": "not_found", "detail": f"no data for user {user_id!r}"}, status=404)
        payload = profile.payload_json() if profile is not None else {}
        recent = sorted(({"item_id": item, "weight": round(entry[0], 4), "ts": entry[1], "category": entry[2]}
                         for item, entry in payload.get("items", {}).items()), key=lambda r: -r["ts"])[:20]
        body = {"user_id": user_id, "scene": profile.scene if profile else (latest.scene if latest else None),
                "interests": profile.interests if profile else {}, "counts": payload.get("counts", {}),
                "recent": recent, "latest": msgspec.to_builtins(latest) if latest else None}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    return [web.get("/dashboard", page), web.get("/dashboard/", page), web.get("/dashboard/data", data),
            web.get("/dashboard/static/{name}", static), web.get("/dashboard/users/{user_id}", user)]
