"""Fault 20 (docs/RELIABILITY.md): stream records drained at the end of a rebalance, before Faust's
`flow_control.resume()` clears the stream queues, are dropped unprocessed; on a partition with nothing
committed no seek and no read offset brings them back, so later records are applied before them.

Faust's table recovery ends with: stream partitions resumed, `perform_seek`, then `flow_control.resume()`
(which clears every stream queue) and `on_rebalance_end`. The consumer's flow is already running (recovery
read the changelogs), so the drain loop hands over whatever aiokafka prefetched for the stream partitions
in between. These tests run the real consumer (`_wait_next_records`, Faust's `getmany`, `ReReadJumps`,
the fast path's drain loop) over a scripted aiokafka thread that serves records like aiokafka does: only
for the partitions asked for, from a position that moves on as it hands them out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from aiokafka.structs import ConsumerRecord
from faust.types import TP

from app.runtime.faust_app import build_runtime
from app.runtime.faust_fixes.apps import FastPathConsumer, StreamRecConsumer
from app.runtime.settings import Settings

EVENTS = TP("streamrec.events", 0)
PER_FETCH = 100


class ScriptedThread:
    """aiokafka's fetcher as the consumer thread shows it: records of the asked partitions from their
    positions on (a partition never sought back keeps its position), `PER_FETCH` per fetch."""

    def __init__(self, end: int) -> None:
        self.position = {EVENTS: 0}  # nothing committed: aiokafka starts at the earliest offset
        self.end = end
        self.asked: list[set[TP]] = []

    async def getmany(self, active_partitions: Iterable[TP], timeout: float) -> dict[TP, list[Any]]:
        asked = set(active_partitions)
        self.asked.append(asked)
        records = {}
        for tp in asked & set(self.position):
            first = self.position[tp]
            last = min(first + PER_FETCH, self.end)
            records[tp] = [ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, b"k", b"v", None, 1, 1, ())
                           for offset in range(first, last)]
            self.position[tp] = last
        await asyncio.sleep(0)
        return records

    def highwater(self, tp: TP) -> int:
        return self.end


def _end_of_rebalance(consumer: StreamRecConsumer, rounds: int = 4) -> list[int]:
    """Run the drain loop for `rounds` fetch rounds: the first while the rebalance is ending (stream
    partition resumed, flow running), then Faust's `perform_seek` with nothing committed (read offset
    None, no seek), `flow_control.resume()` (the stream queue cleared) and `on_rebalance_end`.
    Returns the offsets left in the stream queue, in order: what the agent gets."""
    app = consumer.app
    thread = ScriptedThread(end=PER_FETCH * rounds)
    consumer._thread = thread
    app.topics.acks_enabled_for = lambda topic: True
    queue = app.FlowControlQueue(maxsize=10 * PER_FETCH * rounds, clear_on_resume=True)  # a channel's queue

    class Fetcher:
        _stopped = asyncio.Event()

    fetcher = Fetcher()
    real_getmany = consumer.getmany
    done = 0

    async def getmany(timeout: float):  # one fetch round of the real chain
        nonlocal done
        if done == 1:  # recovery's last steps, between two rounds
            consumer._read_offset.update({EVENTS: None})  # perform_seek: nothing committed -> None, no seek
            app.flow_control.resume()  # clears every stream queue
            app.on_rebalance_end()
        done += 1
        if done == rounds:
            fetcher._stopped.set()
        async for item in real_getmany(timeout):
            yield item

    async def callback(message: Any) -> None:  # the conductor: hand it to the agent's queue
        queue.put_nowait(message)

    async def drain() -> None:
        app.on_rebalance_start()
        app.flow_control.resume()  # recovery resumed the flow to read the changelogs
        consumer.resume_flow()
        consumer._set_active_tps({EVENTS})  # recovery resumed the stream partition before perform_seek
        consumer.getmany = getmany
        consumer.callback = callback
        await asyncio.wait_for(consumer._drain_messages(fetcher), timeout=10)

    asyncio.run(drain())
    return [message.offset for message in queue._queue]


def test_records_drained_before_the_rebalance_ends_are_not_lost_to_the_queue_clear() -> None:
    """The full-scale fast-path failure of 2026-12-08: without the fix the first fetch (0-99) is handed
    over and cleared, the read offset is None, the next fetch starts at 100 with no jump to see, and
    0-99 come only after a restart (or the blocked-partition repair), after later records. Faust's own
    loop has the same window (the fix is in both consumers) but hands over far fewer records in it,
    one `wait_first` per message."""
    consumer = build_runtime(Settings(kafka_bootstrap="127.0.0.1:9", app_id="fault20-fast",
                                      faust_fastpath=True)).app.consumer
    assert isinstance(consumer, FastPathConsumer)
    offsets = _end_of_rebalance(consumer)
    assert offsets == list(range(len(offsets))) and offsets, offsets[:3]
    assert consumer.rereads == 0  # no jump: nothing was taken from aiokafka before the rebalance ended


def test_changelog_partitions_are_still_fetched_while_the_rebalance_lasts() -> None:
    """Recovery reads the changelogs through the same fetch while `app.rebalancing`: only stream
    partitions wait."""
    app = build_runtime(Settings(kafka_bootstrap="127.0.0.1:9", app_id="fault20-changelog")).app
    consumer = app.consumer
    changelog = TP(min(app.tables.changelog_topics), 0)
    thread = ScriptedThread(end=10)
    consumer._thread = thread

    async def fetch() -> None:
        app.on_rebalance_start()
        await consumer._getmany(active_partitions={changelog, EVENTS}, timeout=1.0)
        await consumer._getmany(active_partitions={EVENTS}, timeout=0.01)
        app.on_rebalance_end()
        await consumer._getmany(active_partitions={changelog, EVENTS}, timeout=1.0)

    asyncio.run(fetch())
    assert thread.asked == [{changelog}, {changelog, EVENTS}]
