"""Fault 18: a rebalance that never ends, waiting for a message one stream dropped (docs/RELIABILITY.md).

Faust hands a message to every channel reading its topic (the profile and feedback agents both read
streamrec.events) and counts one reference per channel; a stream's ack releases its reference, and only
the last release makes the offset committable. A rebalance suspends the flow and clears every channel
queue, dropping the events in them without releasing their references, and then (`stream_wait_empty`)
waits until each message a stream took is acknowledged or garbage: it relies on a dropped message being
collected. But an agent keeps its last batch in its local variables until the next batch arrives, which
during the rebalance it never does. So a message that the feedback agent processed while the profile
agent's queue dropped it keeps one reference forever and stays alive: `wait_empty` waits for it, the
rebalance never ends, and the whole group stops (measured in tests/reliability/test_rebalance.py: three
workers stuck in `wait_empty` for 180 s on streamrec.events messages with refcount 1, held by the
feedback agent's last batch; at a join, and at a SIGKILL's rebalance). A delivery waiting in a full
queue's `put` when the flow is suspended does the same: mode cancels it, or it waits for the flow to
resume, which only happens after the rebalance (tests/unit/test_flow_queue.py, with Faust's conductor).

The fix counts, per message, the references its channels dropped (`dropped_shares`): the queue records
each event it clears and each delivery it cancels or drops, and the consumer (`DroppedSharesDone`)
marks a message done once every reference left is a dropped one: `wait_empty` stops waiting for it,
and its offset is never recorded as acknowledged, so the commit stops before it and it is read again
after the rebalance (the dedupe ring and the counted ranges absorb the second copy). Reference counts
are never changed, so no stream's ack can make a dropped message committable.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import EventT
from faust.types.tuples import ack_lock
from mode.utils.queues import ThrowableQueue

logger = logging.getLogger(__name__)

DroppedShares = weakref.WeakKeyDictionary  # message -> references its channels dropped unprocessed


class SharesDroppedQueue(ThrowableQueue):
    """mode's channel queue, recording in `dropped` every event it drops: cleared, or never delivered."""

    def __init__(self, *args: Any, dropped: DroppedShares, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dropped = dropped

    def _drop(self, value: Any) -> None:
        if isinstance(value, EventT):
            with ack_lock:
                self.dropped[value.message] = self.dropped.get(value.message, 0) + 1

    async def put(self, value: Any) -> None:
        if self._clear_on_resume and not self._flow_control.is_active():
            # Waiting would hold the event until the rebalance ends, which waits for it; the resume clears
            # the queue anyway, and a stream skips an earlier generation's event.
            self._drop(value)
            return
        try:
            await super().put(value)
        except asyncio.CancelledError:  # mode's clear() cancels the puts waiting for room
            self._drop(value)
            raise

    def clear(self) -> None:
        for value in list(self._queue):  # type: ignore[attr-defined]  # asyncio.Queue's deque
            self._drop(value)
        super().clear()


class SharesDroppedApp(faust.App):
    """faust.App whose stream channels record the references they drop (`dropped_shares`)."""

    @property
    def dropped_shares(self) -> DroppedShares:
        shares = self.__dict__.get("_dropped_shares")
        if shares is None:
            shares = self.__dict__["_dropped_shares"] = DroppedShares()
        return shares

    def FlowControlQueue(self, maxsize: int | None = None, *,
                         clear_on_resume: bool = False) -> ThrowableQueue:
        return SharesDroppedQueue(maxsize=maxsize, flow_control=self.flow_control, clear_on_resume=clear_on_resume,
                                  dropped=self.dropped_shares)


class DroppedSharesDone(faust_aiokafka.Consumer):
    """A message whose every remaining reference was dropped by its channel is done, never committable."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.dropped_done = 0  # messages given up by `wait_empty` because only dropped references were left

    def _clean_unacked_messages(self) -> None:
        dropped = getattr(self.app, "dropped_shares", None)
        done = []
        if dropped:
            with ack_lock:
                for message in list(dropped.keys()):
                    if (not message.acked and message in self._unacked_messages
                            and message.refcount <= dropped.get(message, 0)):
                        message.acked = True  # not in `_acked`: the commit stops before it
                        done.append(message)
        if done:
            self.dropped_done += len(done)
            logger.warning("rebalance: %d messages held only by channels that dropped them are done, not "
                           "committed, to be read again: %s", len(done),
                           ", ".join(f"{m.topic}/{m.partition}@{m.offset}" for m in done[:10]))
        super()._clean_unacked_messages()
