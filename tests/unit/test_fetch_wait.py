"""The worker's Kafka fetches wait `fetch_max_wait_ms`, not Faust's hard-coded 1,500 ms (app/runtime/faust_fixes/highwater.py)."""

from __future__ import annotations

import asyncio

from app.runtime.faust_app import build_runtime
from app.runtime.settings import Settings


def _worker_consumer_wait_ms(settings: Settings) -> int:
    async def build() -> int:
        sr = build_runtime(settings)
        consumer = sr.app.consumer._thread._create_worker_consumer(sr.app.transport)
        try:
            return consumer._fetch_max_wait_ms
        finally:
            await consumer.stop()  # never started: releases the client it made

    return asyncio.run(build())


def test_fetch_wait_comes_from_the_settings(tmp_path) -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:9", data_dir=tmp_path, fetch_max_wait_ms=123)
    assert _worker_consumer_wait_ms(settings) == 123


def test_default_fetch_wait_is_fausts_own(tmp_path) -> None:
    assert _worker_consumer_wait_ms(Settings(kafka_bootstrap="127.0.0.1:9", data_dir=tmp_path)) == 1500
