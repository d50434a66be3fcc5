"""`streamrec serve`: the serving API in its own process, for scaling reads apart from the workers.

It needs only the store and Kafka (to produce POSTed events); /readyz is 200 once both are reachable.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from app.runtime.kafka import producer
from app.runtime.settings import Settings
from app.serving.api import LazyProducer, api_routes
from app.serving.web import build_web_app, start_web
from app.store import open_store
from schemas.validation import Limits

logger = logging.getLogger(__name__)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    store = await open_store(settings)
    kafka = LazyProducer(lambda: producer(settings))
    await kafka()  # fail early when Kafka is unreachable
    routes = api_routes(lambda: store, kafka, Limits.from_settings(settings))
    runner = await start_web(build_web_app(lambda: {"ready": True, "store": settings.store}, routes),
                             settings.web_host, settings.web_port)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await kafka.stop()
        await store.close()


def run_serve(settings: Settings) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    asyncio.run(main())
