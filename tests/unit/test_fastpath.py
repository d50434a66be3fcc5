"""app/runtime/faust_fixes/fastpath.py pieces that need no broker: the drain wait, the drain loop on a scripted fetch, and which
App class is used."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import faust
from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP, Message

from app.runtime.faust_app import build_runtime
from app.runtime.faust_fixes.apps import FastPathApp, FastPathConsumer, app_class
from app.runtime.faust_fixes.fastpath import drained
from app.runtime.settings import Settings


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
    assert app_class(True) is FastPathApp and issubclass(app_class(False), faust.App)
    fast = build_runtime(Settings(kafka_bootstrap="127.0.0.1:9", app_id="fp-on", faust_fastpath=True))
    stock = build_runtime(Settings(kafka_bootstrap="127.0.0.1:9", app_id="fp-off"))  # the default
    assert isinstance(fast.app, FastPathApp) and not isinstance(stock.app, FastPathApp)
    assert type(fast.app.transport).Consumer is FastPathConsumer
    # fast path off: Faust's own per-message loop (wait_first per message) is the one that runs
    stock_drain = type(stock.app.transport).Consumer._drain_messages
    assert stock_drain is FaustConsumer._drain_messages


TP_CLICK = TP("ecom.click", 0)


def _drained(app_id: str, fetches: list[list[tuple[int, int]]],
             before: Callable[[FastPathConsumer, int], None]) -> tuple[list[int], FastPathConsumer]:
    """Run the fast path's real drain loop over scripted fetches of (offset, generation) records of
    one partition, read offset 99 at the start; `before(consumer, offset)` runs just before a record
    is handed over, i.e. while the loop could be waiting. Returns the offsets delivered, in order."""
    app = build_runtime(Settings(kafka_bootstrap="127.0.0.1:9", app_id=app_id, faust_fastpath=True)).app
    consumer = app.consumer
    assert isinstance(consumer, FastPathConsumer)
    delivered: list[int] = []

    class Fetcher:
        _stopped = asyncio.Event()

    fetcher = Fetcher()

    async def getmany(timeout: float):  # the real one's signature
        batch = fetches.pop(0)
        if not fetches:
            fetcher._stopped.set()
        for offset, generation in batch:
            before(consumer, offset)
            yield TP_CLICK, Message("ecom.click", 0, offset, 0.0, 0, None, b"k", b"v", None, tp=TP_CLICK,
                                    generation_id=generation)

    async def callback(record: Message) -> None:
        delivered.append(record.offset)

    async def drain() -> None:
        app.consumer_generation_id = 1
        consumer._read_offset[TP_CLICK] = 99
        consumer.getmany = getmany
        consumer.callback = callback
        app.topics.acks_enabled_for = lambda topic: True  # as for the worker's input topics
        app.flow_control.resume()  # a running worker's state: the callback is awaited directly
        await consumer._drain_messages(fetcher)

    asyncio.run(drain())
    return delivered, consumer


def test_records_of_an_earlier_assignment_end_the_batch_without_a_gap_or_a_read_offset() -> None:
    """The fast path's loss under SIGKILLs (docs/RELIABILITY.md, fault 16), on the real drain loop.

    A rebalance begins and ends while the loop is between two records of one fetch: the new assignment
    sought the partition back to its committed offset (read offset 50). The rest of that fetch (101,
    102) is stale. Compared with the new read offset it looks like a jump, and the loop used to record
    51..100 as a gap (counted as acknowledged), so the next commit went past offsets still being
    processed. Now the stale rest ends the batch, and the re-fetch from 50 is delivered as usual.
    """
    def rebalance_at_101(consumer: FastPathConsumer, offset: int) -> None:
        if offset == 101:  # a rebalance, all of it, while the loop waited (queue room, a commit)
            consumer.app.consumer_generation_id = 2
            consumer._read_offset[TP_CLICK] = 50  # Faust's perform_seek: read again from the committed offset

    delivered, consumer = _drained("fp-stale", [[(100, 1), (101, 1), (102, 1)], [(50, 2), (51, 2)]], rebalance_at_101)
    assert delivered == [100, 50, 51]
    assert not consumer._gap[TP_CLICK] and consumer.gaps == 0  # nothing counted as acknowledged undelivered
    assert consumer._read_offset[TP_CLICK] == 51


def test_records_a_seek_made_stale_during_the_waits_are_dropped_not_delivered_out_of_order() -> None:
    """Fault 17 on the fast path: recovery sought the partition back (read offset 50) while the loop
    held records fetched before the seek (101, 102, same generation). Delivering them would apply
    them before 50..100, which the sought position fetches again; recording a gap would lose those."""
    def seek_at_101(consumer: FastPathConsumer, offset: int) -> None:
        if offset == 101:
            consumer._read_offset[TP_CLICK] = 50  # perform_seek during the loop's waits, same generation

    delivered, consumer = _drained("fp-sought", [[(100, 1), (101, 1), (102, 1)], [(50, 1), (51, 1)]], seek_at_101)
    assert delivered == [100, 50, 51]
    assert not consumer._gap[TP_CLICK] and consumer.gaps == 0
