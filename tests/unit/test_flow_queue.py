"""Fault 18 (app/runtime/faust_fixes/queues.py): a rebalance waiting forever for a message one channel dropped.

Faust's own conductor handler delivers a message to two channels of one topic (as profile and feedback
read streamrec.events); the rebalance suspends the flow and clears the queues; then the consumer's
`wait_empty` bookkeeping (`_clean_unacked_messages`) decides whether to keep waiting. No broker is
contacted: the consumer object is built, never started.
"""

from __future__ import annotations

import asyncio
import gc

import faust
import pytest
from faust.types import TP, Message

from app.runtime.faust_fixes.apps import app_class
from app.runtime.faust_fixes.queues import SharesDroppedQueue

BROKER = "kafka://127.0.0.1:9"


def message(offset: int) -> Message:
    return Message(topic="t", partition=0, offset=offset, timestamp=0.0, timestamp_type=0, headers=[],
                   key=b"u1", value=b"{}", checksum=None)


async def delivered_then_cleared(app: faust.App, *, first_acks: bool) -> tuple[Message, object]:
    """A message delivered to two channels, taken by the first channel's stream, whose queue of the
    second channel the rebalance then clears. Returns the message and the first stream's event, which
    its agent still holds (as an agent's locals hold its last batch until the next one)."""
    first = app.topic("t", key_serializer="raw", value_serializer="raw").clone(is_iterator=True)
    second = app.topic("t", key_serializer="raw", value_serializer="raw").clone(is_iterator=True)
    app.flow_control.resume()
    handler = app.topics._build_handler(TP("t", 0), {first, second})
    pending = message(7)
    await handler(pending)
    event = first.queue.get_nowait()
    app.consumer.track_message(pending)  # what a stream does with a message it takes
    app.flow_control.suspend()  # App._on_partitions_revoked: suspend, clear, then wait_empty
    app.flow_control.clear()
    if first_acks:
        event.ack()
    gc.collect()
    return pending, event


def test_faust_app_waits_forever_for_a_message_only_a_cleared_channel_holds() -> None:
    """The fault as Faust ships: the message keeps the cleared channel's reference, the agent keeps the
    message alive, so `wait_empty` never sees it go and the rebalance never ends."""
    async def run() -> None:
        app = faust.App("plain", broker=BROKER)
        held, _event = await delivered_then_cleared(app, first_acks=True)
        app.consumer._clean_unacked_messages()
        assert held in app.consumer._unacked_messages and held.refcount == 1

    asyncio.run(run())


def test_message_left_only_with_dropped_references_is_done_and_not_committable() -> None:
    async def run() -> None:
        app = app_class(False)("fixed", broker=BROKER)
        held, _event = await delivered_then_cleared(app, first_acks=True)
        app.consumer._clean_unacked_messages()
        assert held not in app.consumer._unacked_messages  # wait_empty stops waiting for it
        assert held.offset not in app.consumer._acked_index[held.tp]  # and it is never committed
        assert app.consumer.dropped_done == 1

    asyncio.run(run())


def test_message_still_being_processed_is_still_waited_for() -> None:
    """Fault 7's reason for waiting: a batch in flight on another channel keeps the rebalance waiting."""
    async def run() -> None:
        app = app_class(False)("in-flight", broker=BROKER)
        held, event = await delivered_then_cleared(app, first_acks=False)
        app.consumer._clean_unacked_messages()
        assert held in app.consumer._unacked_messages
        event.ack()  # the batch ends
        app.consumer._clean_unacked_messages()
        assert held not in app.consumer._unacked_messages
        assert held.offset not in app.consumer._acked_index[held.tp]

    asyncio.run(run())


def test_suspended_and_cancelled_puts_count_as_dropped() -> None:
    async def run() -> None:
        app = faust.App("puts", broker=BROKER)
        app.flow_control.resume()
        dropped: dict = {}
        queue = SharesDroppedQueue(maxsize=1, flow_control=app.flow_control, clear_on_resume=True, dropped=dropped)
        channel = app.topic("t", key_serializer="raw", value_serializer="raw")
        first, second, third = [await channel.decode(message(n)) for n in (1, 2, 3)]
        await queue.put(first)
        waiting_for_room = asyncio.ensure_future(queue.put(second))
        await asyncio.sleep(0.05)
        assert not waiting_for_room.done()

        app.flow_control.suspend()
        app.flow_control.clear()  # drops `first` from the queue, cancels the put of `second`
        with pytest.raises(asyncio.CancelledError):
            await waiting_for_room
        await asyncio.wait_for(queue.put(third), timeout=1.0)  # suspended: dropped at once, not waiting
        assert queue.empty()
        assert {m.offset: n for m, n in dropped.items()} == {1: 1, 2: 1, 3: 1}

        app.flow_control.resume()
        await queue.put(first)
        assert queue.get_nowait() is first

    asyncio.run(run())
