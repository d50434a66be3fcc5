"""A cheaper per-message path from Faust's fetcher to the agents (issue 6).

Faust's `Consumer._drain_messages` hands every fetched message to the conductor through
`Service.wait_first(callback(message), suspend_flow.wait())`: four `asyncio.ensure_future` tasks and
one `asyncio.wait` per message, so that a callback blocked on a full stream queue can be abandoned
when a rebalance suspends the flow. Profiling a bare agent (py-spy, DESIGN.md §5) shows this is most
of Faust's ~200 us per message on this machine.

`FastConsumer` keeps the same loop (read offsets, gap tracking, commit_every) but awaits the callback
directly when it cannot wait (flow running, app flow control open, producer buffer under its ebb
mark), and falls back to Faust's `wait_first` otherwise. Every wait (room in a stream queue, a
commit) comes before a message's offset bookkeeping, and a message whose consumer generation is no
longer the app's (a rebalance began and ended during such a wait) ends the batch: it is neither
delivered nor allowed to move the read offset or to add a gap. The loop used to compare the message
with the read offset *before* waiting: a stale record far past the new assignment's freshly sought
read offset then registered the offsets in between as a gap (Faust's bookkeeping for non-data
offsets, counted as acknowledged), and the next commit went over them while they were still being
processed, so a SIGKILL then lost them (docs/RELIABILITY.md, fault 16). A rebalance does not cancel this task
before it revokes partitions and clears the stream queues, so a directly awaited callback that
waited in `wait_until_producer_ebb` across one could deliver a message of the old assignment after
the new one had sought back to its committed offsets. Nothing else changes: the same conductor,
channels, streams, acks, tables and commits, so agents keep `stream.take_events()` and Faust tables
as the programming model.

`StreamRecApp` is `faust.App` with this consumer; `build_runtime` uses it only with
`STREAMREC_FAUST_FASTPATH=true`. Off by default: full-scale SIGKILL crash tests lost input events with
it until faults 16 and 17 were fixed (6 of 6 runs passed since), never with Faust's own loop; it
stays off until it has that record too (docs/RELIABILITY.md, "What is left").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TransportT
from mode import Service, ServiceT

from app.runtime.faust_fixes.highwater import ExactHighwaterConsumer

logger = logging.getLogger(__name__)

YIELD_EVERY = 1000  # messages between explicit yields to the event loop (Faust: 100)
DRAIN_POLL_S = 0.002  # how often a full stream queue is checked for room


class FastConsumer(ExactHighwaterConsumer):
    """Faust's aiokafka consumer with a direct await per message instead of four tasks (and exact
    high watermarks for table recovery, app/runtime/faust_fixes/highwater.py)."""

    async def _drain_messages(self, fetcher: ServiceT) -> None:  # pragma: no cover - run by the worker
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
                        # This fetch was for an earlier assignment: a rebalance began and ended during
                        # the waits above (or an earlier record's). All of its rest is stale; the new
                        # assignment reads again from its committed offsets. Neither deliver it nor let
                        # it touch the offsets: read offset or gap (see the module docstring).
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
                            # read offset back during the waits above (recovery's seek to the committed
                            # offsets): the rest of this partition's batch is from before the seek, and
                            # the sought position fetches it again, in order (fault 17).
                            stale.add(tp)
                            continue
                        await self._add_gap(tp, r_offset + 1, offset)
                    if suspended() or not can_deliver_now():
                        # The conductor's callback can wait here (app flow control suspended, or the
                        # producer buffer over its ebb mark); a rebalance must be able to abandon it, as
                        # Faust's loop does, or it delivers a message of the old assignment afterwards.
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

    Faust's conductor puts a message that finds its stream queue full through its own
    `ensure_future(put)` + `asyncio.wait`, so in steady state (fetcher faster than the agent) every
    message paid for a task and the two sides alternated one message at a time. Waiting here for
    half the queue to drain first makes the fetcher deliver in bursts and keeps that path cold.
    """
    while any(q.qsize() > q.maxsize // 2 for q in queues):
        await asyncio.sleep(poll_s)


class FastTransport(faust_aiokafka.Transport):
    Consumer = FastConsumer


class StreamRecApp(faust.App):
    """faust.App whose consumer transport is `FastTransport` (same URLs, same settings)."""

    def _new_transport(self) -> TransportT:
        return FastTransport(self.conf.broker_consumer, self)


class ExactHighwaterTransport(faust_aiokafka.Transport):
    Consumer = ExactHighwaterConsumer


class ExactHighwaterApp(faust.App):
    """faust.App with only the recovery fix of app/runtime/faust_fixes/highwater.py (fast path off): correct on Tansu too."""

    def _new_transport(self) -> TransportT:
        return ExactHighwaterTransport(self.conf.broker_consumer, self)


def app_class(enabled: bool) -> type[faust.App]:
    return StreamRecApp if enabled else ExactHighwaterApp


def describe(app: Any) -> str:
    return "fastpath" if isinstance(app, StreamRecApp) else "faust"
