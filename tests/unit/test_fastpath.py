"""app/fastpath.py pieces that need no broker: the drain wait, and which App class is used."""

from __future__ import annotations

import asyncio

import faust
from faust.transport.consumer import Consumer as FaustConsumer

from app.fastpath import FastConsumer, StreamRecApp, app_class, drained
from app.faust_app import build_runtime
from app.settings import Settings


def test_drained_waits_until_every_queue_is_half_empty() -> None:
    async def go() -> list[int]:
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=10)
        for i in range(10):
            queue.put_nowait(i)
        sizes: list[int] = []

        async def consume() -> None:
            while not queue.empty():
                await asyncio.sleep(0.001)
                queue.get_nowait()

        task = asyncio.create_task(consume())
        await drained([queue], poll_s=0.001)
        sizes.append(queue.qsize())
        await task
        return sizes

    (size,) = asyncio.run(go())
    assert size <= 5


def test_drained_returns_at_once_when_there_is_room() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=10)
    queue.put_nowait(1)
    asyncio.run(asyncio.wait_for(drained([queue]), timeout=1.0))


def test_runtime_uses_faust_s_own_loop_unless_the_fast_path_is_enabled() -> None:
    assert app_class(True) is StreamRecApp and issubclass(app_class(False), faust.App)
    fast = build_runtime(Settings(kafka_bootstrap="127.0.0.1:9", app_id="fp-on", faust_fastpath=True))
    stock = build_runtime(Settings(kafka_bootstrap="127.0.0.1:9", app_id="fp-off"))  # the default
    assert isinstance(fast.app, StreamRecApp) and not isinstance(stock.app, StreamRecApp)
    assert type(fast.app.transport).Consumer is FastConsumer
    # fast path off: Faust's own per-message loop (wait_first per message) is the one that runs
    stock_drain = type(stock.app.transport).Consumer._drain_messages
    assert stock_drain is FaustConsumer._drain_messages
