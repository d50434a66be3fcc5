"""`streamrec worker`: one Faust worker process running every agent, plus its HTTP endpoints.

With no STREAMREC_KAFKA_BOOTSTRAP it starts the embedded broker itself (a one-machine setup).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import NoReturn

import orjson
from aiohttp import web

from agents import catalog, feedback, ingest, profile, refresh
from app.runtime import experiments
from app.runtime.broker import EmbeddedBroker
from app.runtime.counters import totals
from app.runtime.faust_app import StreamRec, build_runtime
from app.runtime.faust_fixes import StreamRecWorker, pipeline_state
from app.runtime.kafka import ensure_topics, producer
from app.runtime.services import Services
from app.runtime.settings import Settings
from app.serving import lag
from app.serving.api import LazyProducer, api_routes
from app.serving.dashboard import dashboard_routes
from app.serving.experiments import experiment_routes
from app.serving.web import build_web_app, start_web
from app.store import open_store

logger = logging.getLogger(__name__)

MODEL_POLL_S = 10.0


def readiness(runtime: StreamRec) -> dict:
    app = runtime.app
    assigned = len(app.assignor.assigned_actives()) if app.assignor else 0
    recovered = app.tables.recovery.completed.is_set() if app.tables else False
    services = runtime.loaded_services()
    model = services.ready or services.model_path is None
    store = runtime.opened_store is not None
    synced = services.experiments_synced.is_set()  # the refresh serves no list before it
    return {"ready": bool(assigned and recovered and not app.rebalancing and model and store and synced),
            "assigned_partitions": assigned, "recovered": recovered, "rebalancing": bool(app.rebalancing),
            "model_version": services.recommender.model_version, "experiments_synced": synced,
            "experiment": services.experiment.name if services.experiment else None}


def build_worker_runtime(settings: Settings) -> StreamRec:
    runtime = build_runtime(settings)
    services = runtime.services = Services.load(settings)
    for module in (ingest, profile, refresh, catalog, feedback):
        module.register(runtime)
    lag.register(runtime)  # lag sampler: reco.lag, Prometheus, dashboard
    experiments.register(runtime)  # follows reco.experiments: which experiment this worker serves
    lag.register_stats_collector(lambda: totals(runtime.stats.items()))

    @runtime.app.timer(MODEL_POLL_S)
    async def watch_models() -> None:
        loaded = await asyncio.to_thread(services.load_newer)
        if loaded is not None:
            services.install(*loaded)

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(totals(runtime.stats.items()))

    async def debug_pipeline(_: web.Request) -> web.Response:
        return web.json_response(pipeline_state(runtime.app), dumps=lambda v: orjson.dumps(v, default=str).decode())

    async def user_state(request: web.Request) -> web.Response:
        """This worker's table rows for a user (operators and tests; 404 when it holds none)."""
        key = request.match_info["user_id"].encode()
        rows = {"profile": runtime.profiles.get(key), "recstate": runtime.recstate.get(key),
                "feedback": runtime.feedback.get(key)}  # feedback: the user's attribution state
        if all(row is None for row in rows.values()):
            return web.json_response({"error": "no state for this user on this worker"}, status=404)
        return web.json_response({name: orjson.loads(row) if row else None for name, row in rows.items()})

    @runtime.app.task
    async def startup() -> None:
        runtime.set_store(await open_store(settings))
        routes = [web.get("/stats", stats), web.get("/debug/pipeline", debug_pipeline),
                  web.get("/users/{user_id}/state", user_state),
                  *api_routes(lambda: runtime.opened_store, LazyProducer(lambda: producer(settings)),
                              services.limits),
                  *dashboard_routes(runtime), *experiment_routes(runtime)]
        runtime.http = await start_web(build_web_app(lambda: readiness(runtime), routes), settings.web_host,
                                       settings.web_port)

    return runtime


def run_worker(settings: Settings) -> NoReturn:
    """Run one worker until it is stopped, then end the process at once (see `exit_now`)."""
    broker, code = None, 0
    if settings.embedded_broker:
        broker = EmbeddedBroker().start()
        settings = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})
        logger.info("no STREAMREC_KAFKA_BOOTSTRAP: started the embedded broker on %s", broker.bootstrap)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        asyncio.run(ensure_topics(settings))
        runtime = build_worker_runtime(settings)
        worker = StreamRecWorker(runtime.app, loglevel=settings.log_level, quiet=True, override_logging=False)
        worker.execute_from_commandline()
    except SystemExit as stopped:
        code = stopped.code if isinstance(stopped.code, int) else 1
    finally:
        if broker is not None:
            broker.stop()
    exit_now(code)


def exit_now(code: int) -> NoReturn:
    """End the process without interpreter finalization.

    Faust has stopped by now: agents, commits, producer flush, tables. Finalization then joined
    threads and ran destructors (gRPC, RocksDB) that, on a loaded machine, kept a stopped worker alive
    past its 10 s budget with the watchdog thread already frozen (tests/reliability/
    test_stop_and_stall.py). RocksDB's WAL and SQLite's commits are on disk; milvus-lite's server stops
    when our file lock goes with the process.
    """
    logging.shutdown()
    os._exit(code)
