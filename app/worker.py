"""`streamrec worker`: one Faust worker process running every agent, plus its HTTP endpoints.

With no STREAMREC_KAFKA_BOOTSTRAP it starts the embedded broker itself (a one-machine setup).
"""

from __future__ import annotations

import asyncio
import logging

import faust
from aiohttp import web

from agents import catalog, ingest, profile, refresh
from app.broker import EmbeddedBroker
from app.counters import totals
from app.faust_app import StreamRec, build_runtime
from app.kafka import ensure_topics
from app.services import Services
from app.settings import Settings
from app.store import open_store
from app.web import build_web_app, start_web

logger = logging.getLogger(__name__)

MODEL_POLL_S = 10.0


def readiness(sr: StreamRec) -> dict:
    app = sr.app
    assigned = len(app.assignor.assigned_actives()) if app.assignor else 0
    recovered = app.tables.recovery.completed.is_set() if app.tables else False
    model = sr.services.ready or sr.services.model_path is None
    store = "store" in sr.extras
    return {"ready": bool(assigned and recovered and not app.rebalancing and model and store),
            "assigned_partitions": assigned, "recovered": recovered, "rebalancing": bool(app.rebalancing),
            "model_version": sr.services.recommender.model_version}


def build_worker_runtime(settings: Settings) -> StreamRec:
    sr = build_runtime(settings)
    sr.services = Services.load(settings)
    for module in (ingest, profile, refresh, catalog):
        module.register(sr)

    @sr.app.timer(MODEL_POLL_S)
    async def watch_models() -> None:
        await asyncio.to_thread(sr.services.maybe_reload)

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(totals(sr.stats.items()))

    @sr.app.task
    async def startup() -> None:
        sr.extras["store"] = await open_store(settings)
        routes = [web.get("/stats", stats)]
        sr.extras["web"] = await start_web(build_web_app(lambda: readiness(sr), routes), settings.web_host,
                                           settings.web_port)

    return sr


def run_worker(settings: Settings) -> None:
    broker = None
    if settings.embedded_broker:
        broker = EmbeddedBroker().start()
        settings = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})
        logger.info("no STREAMREC_KAFKA_BOOTSTRAP: started the embedded broker on %s", broker.bootstrap)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        asyncio.run(ensure_topics(settings))
        sr = build_worker_runtime(settings)
        worker = faust.Worker(sr.app, loglevel=settings.log_level, quiet=True, override_logging=False)
        worker.execute_from_commandline()
    finally:
        if broker is not None:
            broker.stop()
