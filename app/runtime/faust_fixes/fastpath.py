"""The fast path (issue 6, `STREAMREC_FAUST_FASTPATH`, off by default): a cheaper per-message route from
Faust's fetcher to the agents.

Faust's `Consumer._drain_messages` hands each message to the conductor through
`Service.wait_first(callback(message), suspend_flow.wait())`: four tasks and one `asyncio.wait` per
message, most of Faust's per-message cost (docs/BENCHMARKS.md). `FastDrain` keeps the same loop but
awaits the callback directly when it cannot wait. Conductor, streams, acks, tables and commits stay
Faust's own. Why it is still off: docs/RELIABILITY.md, "What is left".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING
from mode import Service, ServiceT

from app.runtime.faust_fixes.consumer import FetchTracking

logger = logging.getLogger(__name__)

YIELD_EVERY = 1000  # messages between explicit yields to the event loop (Faust: 100)
DRAIN_POLL_S = 0.002  # how often a full stream queue is checked for room


class FastDrain(FetchTracking):
    """Issue 6: Faust's drain loop with one direct await per message; its offset checks come after every
    wait, for faults 16 and 17 (docs/RELIABILITY.md)."""

    async def _drain_messages(self, fetcher: ServiceT) -> None:  # pragma: no cover - run by the worker
        """Every wait (room in a stream queue, a commit) comes before a message's offset bookkeeping: a
        rebalance or a seek during it makes the rest of the fetch stale, and a stale record must neither
        be delivered nor move the read offset nor add a gap. The callback is awaited through Faust's
        `wait_first` whenever it could wait, so that a rebalance can abandon it as in Faust's loop."""
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        suspended = self.suspend_flow.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        tp_index = self.app.topics._tp_index  # Conductor: partition -> the channels that read it

        def queues_of(tp: Any) -> list[Any]:
            return [channel.queue for channel in tp_index.get(tp, ())]

        flow_active = self.app.flow_control.is_active
        producer_buffer = self.app.producer.buffer
        app = self.app

        def generation() -> int:
            return app.consumer_generation_id

        def can_deliver_now() -> bool:
            """The conductor's callback will not wait: flow control open, producer buffer under its ebb
            mark (the two awaits of `Conductor.on_message` before its non-blocking put)."""
            return flow_active() and producer_buffer.size <= producer_buffer.max_messages

        since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = cast(AsyncIterator, getmany(timeout=1.0))
                stale: set[Any] = set()  # partitions whose records in this batch a seek made stale
                await asyncio.sleep(0)
                if self.should_stop:
                    break
                async for tp, message in ait:
                    since_yield += 1
                    if since_yield >= YIELD_EVERY:
                        await asyncio.sleep(0)
                        since_yield = 0
                    queues = queues_of(tp)
                    if queues and any(q.full() for q in queues):
                        await drained(queues)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if message.generation_id != generation():
                        # A rebalance began and ended during the waits above: the rest of this fetch is
                        # stale, and the new assignment reads again from its committed offsets (fault 16).
                        logger.info("%s/%d: fetch of consumer generation %d ends at offset %d (now %d)",
                                    tp.topic, tp.partition, message.generation_id, message.offset, generation())
                        break
                    offset = message.offset
                    r_offset = get_read_offset(tp)  # read after the waits: a rebalance's seek resets it
                    if r_offset is not None and offset < r_offset:
                        continue  # already delivered (Faust logs these at dev level and drops them)
                    if tp in stale:
                        continue
                    if r_offset and offset - r_offset > 1 and acks_enabled_for(message.topic):
                        if not self._gaps_possible(message.topic):
                            # `getmany` found this record next to the read offset, so a seek moved the
                            # read offset back during the waits above: the rest of this partition's batch
                            # is from before the seek, and the sought position fetches it again (fault 17).
                            stale.add(tp)
                            continue
                        await self._add_gap(tp, r_offset + 1, offset)
                    if suspended() or not can_deliver_now():
                        # The callback can wait here: a rebalance must be able to abandon it, as in
                        # Faust's loop, or it delivers a message of the old assignment afterwards.
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                    else:
                        await callback(message)
                    set_read_offset(tp, offset)
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                logger.info("broker stopped consumer, shutting down")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)


async def drained(queues: list[Any], poll_s: float = DRAIN_POLL_S) -> None:
    """Wait until every stream queue is at most half full.

    The conductor puts a message that finds its queue full through its own task, so with the fetcher
    faster than the agent every message paid for one and the two sides alternated one message at a
    time; waiting for half the queue to drain makes the fetcher deliver in bursts instead.
    """
    while any(q.qsize() > q.maxsize // 2 for q in queues):
        await asyncio.sleep(poll_s)
