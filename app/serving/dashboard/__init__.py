"""The built-in ops dashboard at /dashboard: one static page (own small SVG charts, no CDN) polling JSON.

`/dashboard/data` gathers what the worker already keeps: the lag sampler's latest sample and history,
events/s from the stats table, freshness of recent lists, CTR/conversion per scene and model version
and the scene distribution from the feedback windows (open and recently closed). `/dashboard/users/{id}`
is the user lookup: recent interactions, current scene and the latest list with its reasons.
Errors are JSON ``{"error", "detail"}`` (app/serving/web.py), which the page shows as the lookup's answer.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from importlib import resources
from typing import Any

import msgspec
import orjson
from aiohttp import web

from app.runtime.counters import totals
from app.runtime.faust_app import StreamRec
from models.feedback import WindowMetrics, percentile

HISTORY = 180  # points kept per chart (one per sample)
QUALITY_WINDOW_MS = 15 * 60_000  # CTR / scene charts cover closed windows this recent, plus the open ones
FRESHNESS_WINDOW_S = 120.0


def _page() -> bytes:
    return resources.files(__package__).joinpath("index.html").read_bytes()


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
    return {"by_scene_model": rows, "scenes": dict(sorted(scenes.items()))}


def dashboard_routes(runtime: StreamRec) -> list[web.RouteDef]:
    rates: deque[tuple[float, int]] = deque(maxlen=HISTORY)

    async def page(_: web.Request) -> web.Response:
        return web.Response(body=_page(), content_type="text/html", charset="utf-8")

    async def data(_: web.Request) -> web.Response:
        now = time.time()
        counts = totals(runtime.stats.items())
        consumed = counts.get("ingest.consumed", 0)
        rates.append((now, consumed))
        events_per_s = None
        if len(rates) >= 2:
            (t0, c0), (t1, c1) = rates[-2], rates[-1]
            events_per_s = max(0, c1 - c0) / (t1 - t0) if t1 > t0 else None
        runtime.extras.setdefault("events_rate_history", deque(maxlen=HISTORY))
        if events_per_s is not None:
            runtime.extras["events_rate_history"].append([int(now * 1000), round(events_per_s, 1)])
        fresh = [ms for t, ms in runtime.extras.get("freshness_recent", ()) if now - t <= FRESHNESS_WINDOW_S]
        windows = runtime.extras.get("feedback")
        recent = [w for w in runtime.extras.get("feedback_recent", ())
                  if w.window_end >= now * 1000 - QUALITY_WINDOW_MS]
        open_now = windows.snapshot() if windows is not None else []
        body = {
            "now": int(now * 1000),
            "lag": [s.to_dict() for s in runtime.extras.get("lag_latest", [])],
            "lag_history": list(runtime.extras.get("lag_history", ())),
            "counters": counts,
            "events_per_s": events_per_s,
            "events_rate_history": list(runtime.extras["events_rate_history"]),
            "freshness": {"p50_ms": percentile(fresh, 50), "p99_ms": percentile(fresh, 99), "lists": len(fresh),
                          "window_s": FRESHNESS_WINDOW_S},
            "quality": quality(recent + open_now),
            "windows_closed": len(runtime.extras.get("feedback_recent", ())),
            "model_version": runtime.services.recommender.model_version if runtime.services else None,
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

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
            web.get("/dashboard/users/{user_id}", user)]
