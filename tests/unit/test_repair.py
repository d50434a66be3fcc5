"""The consumer fixes of faults 11, 13, 15 and 17 (app/runtime/faust_fixes/consumer.py) and `holes`, which finds
partitions whose commits are blocked by unacknowledged offsets."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP
from faust.types.tuples import ConsumerMessage
from mode.threads import QueueServiceThread

from app.runtime.faust_app import build_runtime
from app.runtime.faust_fixes.apps import StreamRecConsumer
from app.runtime.faust_fixes.batches import acked_only_when_done, offset_spans
from app.runtime.faust_fixes.consumer import FetchTracking
from app.runtime.faust_fixes.offsets import FetchedOffsets, Hole, holes
from app.runtime.settings import Settings


def test_a_partition_acked_from_its_committed_offset_is_not_blocked() -> None:
    assert holes({"a": 10}, {"a": [10, 11, 12]}, []) == {}


def test_acked_offsets_past_a_gap_block_the_partition() -> None:
    assert holes({"a": 10}, {"a": [14, 15]}, []) == {"a": Hole(committed=10, first_acked=14, in_flight=False)}


def test_a_gap_of_one_offset_not_known_to_hold_a_record_does_not_block() -> None:
    assert holes({"a": 10}, {"a": [11, 12]}, []) == {}


def test_nothing_acked_or_no_committed_offset_is_not_blocked() -> None:
    assert holes({"a": 10, "b": None, "c": 0}, {"a": [], "b": [50], "c": [50]}, []) == {}


def test_a_message_below_the_hole_still_in_memory_is_reported() -> None:
    found = holes({"a": 10, "b": 10}, {"a": [14], "b": [14]}, [("a", 12), ("a", 30), ("b", 20)])
    assert found == {"a": Hole(10, 14, in_flight=True), "b": Hole(10, 14, in_flight=False)}


def test_partitions_are_judged_separately() -> None:
    found = holes({"a": 5, "b": 7}, {"a": [5, 6], "b": [9, 10]}, [])
    assert found == {"b": Hole(7, 9, in_flight=False)}


class _Message:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset


def test_offset_spans_name_each_partition_with_its_lowest_and_highest_offset() -> None:
    messages = [_Message("t", 1, 7), _Message("t", 0, 3), _Message("t", 1, 4), _Message("u", 0, 9)]
    assert offset_spans(messages) == "t/0 3-3, t/1 4-7, u/0 9-9"


def test_a_gap_of_one_offset_blocks_when_that_offset_was_fetched() -> None:
    fetched = FetchedOffsets()
    fetched.add("a", range(10, 13))
    assert holes({"a": 10}, {"a": [11, 12]}, [], fetched) == {"a": Hole(10, 11, in_flight=False)}
    assert holes({"a": 10}, {"a": [11, 12]}, [], FetchedOffsets()) == {}  # never fetched: a non-data offset


def test_a_fetched_record_with_nothing_acknowledged_blocks_unless_it_waits_in_a_queue() -> None:
    fetched = FetchedOffsets()
    fetched.add("a", range(229, 240))
    assert holes({"a": 229}, {"a": []}, [], fetched) == {"a": Hole(229, 240, in_flight=False)}
    assert holes({"a": 229}, {"a": []}, [], fetched, queued=["a"]) == {}  # a stream will still take it
    assert holes({"a": 229}, {"a": []}, [("a", 229)], fetched) == {"a": Hole(229, 240, in_flight=True)}
    assert holes({"a": 240}, {"a": []}, [], fetched) == {}  # all of it committed: the normal idle state


def test_fetched_offsets_keep_disjoint_runs_and_forget_what_is_committed() -> None:
    fetched = FetchedOffsets()
    fetched.add("a", [5, 6, 7, 8])
    fetched.add("a", [20, 21])  # a seek forward
    fetched.add("a", [3, 4, 5, 6])  # a seek back: merges with the first run
    assert fetched.runs("a") == [[3, 8], [20, 21]]
    assert fetched.holds("a", 4) and not fetched.holds("a", 9) and fetched.holds("a", 21)
    assert fetched.run_end("a", 4) == 8
    fetched.forget_below("a", 7)
    assert fetched.runs("a") == [[7, 8], [20, 21]]
    fetched.forget_below("a", 22)
    assert fetched.runs("a") == [] and not fetched.holds("b", 7)


def test_fetched_offsets_fold_a_batch_with_a_jump_into_runs() -> None:
    fetched = FetchedOffsets()
    fetched.add("a", [10, 11, 12, 15, 16])  # a non-data offset or two inside one fetched batch
    fetched.add("a", [17, 18])
    fetched.add("a", [13, 14])  # read again after a seek: fills the gap
    assert fetched.runs("a") == [[10, 18]]


def _consumer_message(offset: int) -> ConsumerMessage:
    return ConsumerMessage("t", 0, offset, 0.0, 0, None, None, b"x", None)


def test_the_consumer_does_not_commit_over_a_fetched_record_that_nobody_acknowledged() -> None:
    """The real consumer class of every worker (no broker needed to compute a commit offset)."""
    consumer = build_runtime(Settings(kafka_bootstrap="127.0.0.1:9", app_id="repair-unit")).app.consumer
    assert isinstance(consumer, StreamRecConsumer)
    consumer.app.topics.acks_enabled_for = lambda topic: True
    tp = TP("t", 0)
    consumer._committed_offset[tp] = 10
    for offset in (11, 12):
        message = _consumer_message(offset)
        message.tracked = True  # taken by a stream
        assert consumer.ack(message)
    assert FaustConsumer._new_offset(consumer, tp) == 13  # Faust alone: 10 committed over
    consumer._acked[tp], consumer._acked_index[tp] = [11, 12], {11, 12}
    consumer.fetched.add(tp, [10, 11, 12])
    assert consumer._new_offset(tp) is None  # 10 was a record: wait for it
    done = _consumer_message(10)
    done.tracked = True
    consumer.ack(done)
    assert consumer._new_offset(tp) == 13
    assert consumer.fetched.runs(tp) == []  # forgotten once committed


def test_with_nothing_committed_the_first_fetched_record_is_the_head_commits_wait_for() -> None:
    """Fault 19: a partition of a new group has no committed offset, and Faust then commits the first run of
    acknowledged offsets whatever lies below it (records a rebalance dropped, or a failed batch)."""
    consumer = build_runtime(Settings(kafka_bootstrap="127.0.0.1:9", app_id="repair-unit")).app.consumer
    consumer.app.topics.acks_enabled_for = lambda topic: True
    tp = TP("t", 0)
    consumer.fetched.add(tp, range(7))
    for offset in (3, 4, 5, 6):
        message = _consumer_message(offset)
        message.tracked = True
        assert consumer.ack(message)  # nothing committed: Faust records every ack
    assert consumer._committed_offset[tp] is None
    assert FaustConsumer._new_offset(consumer, tp) == 7  # Faust alone: 0-2 committed over
    consumer._acked[tp], consumer._acked_index[tp] = [3, 4, 5, 6], {3, 4, 5, 6}
    assert consumer._new_offset(tp) is None  # 0 is the head: wait for it
    for offset in (0, 1, 2):
        done = _consumer_message(offset)
        done.tracked = True
        consumer.ack(done)
    assert consumer._new_offset(tp) == 7


def test_with_nothing_committed_a_hole_starts_at_the_first_fetched_record() -> None:
    fetched = FetchedOffsets()
    fetched.add("a", range(10))
    fetched.add("b", range(4, 8))
    fetched.add("c", range(20, 25))
    found = holes({"a": None, "b": 0}, {"a": [5, 6], "b": [4, 5]}, [], fetched)
    # "c" is in no committed map at all (nothing of it acknowledged): its fetched records are the hole
    assert found == {"a": Hole(0, 5, in_flight=False), "c": Hole(20, 25, in_flight=False)}


class _SeekRecordingThread(QueueServiceThread):
    """A real mode service thread (what Faust runs aiokafka in) that records where `seek` ran."""

    def __init__(self) -> None:
        super().__init__()
        self.seeks: list[tuple[threading.Thread, TP, int]] = []

    def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((threading.current_thread(), tp, offset))


def test_a_repair_seeks_on_the_consumer_thread_not_on_the_apps() -> None:
    """aiokafka's seek touches fetcher state owned by the consumer thread's loop (fault 15, `SeekOnConsumerThread`)."""
    consumer = build_runtime(Settings(kafka_bootstrap="127.0.0.1:9", app_id="repair-seek")).app.consumer
    tp = TP("t", 1)

    async def go() -> _SeekRecordingThread:
        thread = _SeekRecordingThread()
        await thread.start()
        try:
            consumer._thread = thread
            await consumer.seek(tp, 7)  # Faust's seek, through our _seek
        finally:
            await thread.stop()
        return thread

    [(ran_on, sought, offset)] = asyncio.run(go()).seeks
    assert ran_on is not threading.main_thread() and (sought, offset) == (tp, 7)
    assert consumer._read_offset[tp] == 7  # the fetch loop delivers offsets from 7 on again


def test_a_message_a_stream_skipped_is_not_recorded_as_safe_to_commit() -> None:
    consumer = build_runtime(Settings(kafka_bootstrap="127.0.0.1:9", app_id="repair-skip")).app.consumer
    consumer.app.topics.acks_enabled_for = lambda topic: True
    skipped = _consumer_message(3)  # never tracked: a stream skipped it (rebalance, stop)
    assert not consumer.ack(skipped) and skipped.acked
    assert consumer._acked[TP("t", 0)] == [] and consumer.skipped_unprocessed == 1


class _Event:
    def __init__(self, offset: int) -> None:
        self.message = _consumer_message(offset)


def test_a_failed_batch_is_left_unacknowledged_and_the_agent_goes_on() -> None:
    batch = [_Event(1), _Event(2)]
    with acked_only_when_done(batch):
        raise ValueError("a bug on some input")  # swallowed: re-raising would crash the agent
    assert all(event.message.acked for event in batch)  # so take_events' ack cannot record them


def test_a_cancelled_batch_is_left_unacknowledged_and_the_cancellation_goes_on() -> None:
    batch = [_Event(1)]
    with pytest.raises(asyncio.CancelledError), acked_only_when_done(batch):
        raise asyncio.CancelledError
    assert batch[0].message.acked


def test_a_jump_on_a_topic_without_gaps_is_left_as_a_hole_until_it_comes_back(caplog: pytest.LogCaptureFixture) -> None:
    """Fault 17: on ecom.click every offset holds a record, so a jump is records about to be lost.

    The first jump is not recorded as a gap (Faust would count it as acknowledged and commit over it):
    the hole blocks the commits and the repair reads the partition again. The same jump again means
    the records are gone (retention): then it is a gap, or the partition would stay blocked for good."""
    consumer = build_runtime(Settings(kafka_bootstrap="127.0.0.1:9", app_id="repair-gap")).app.consumer
    click, lists = TP("ecom.click", 0), TP("reco.recommendations", 0)
    consumer._committed_offset[click] = 11
    consumer._acked[click] = [15, 16]  # delivered and acknowledged after the jump
    with caplog.at_level(logging.WARNING, logger="app.runtime.faust_fixes.consumer"):
        asyncio.run(consumer._add_gap(click, 11, 15))  # as the fetch loop calls it: read offset 10, next record 15
        assert not consumer._gap[click] and consumer._new_offset(click) is None  # commits stop below the hole
        assert holes(consumer._committed_offset, consumer._acked, ()) == {click: Hole(11, 15, False)}
        asyncio.run(consumer._add_gap(click, 11, 15))  # read again from 11, and the log still jumps
        assert consumer._gap[click]
        asyncio.run(consumer._add_gap(lists, 3, 9))  # compacted: offsets without a record are normal
    assert consumer._gap[lists] and consumer.gaps == 3
    assert "ecom.click/0: the fetch jumped over offsets 11-14" in caplog.text
    assert "ecom.click/0: offsets 11-14 jumped over again" in caplog.text


def test_a_fetch_that_jumps_past_the_read_offset_is_read_again_from_there(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault 17: a restarted worker's first fetch started one fetch's worth past records never delivered.

    `ReReadJumps.getmany` holds back the rest of that partition's batch and seeks back, so the
    missing records come first and in order; other partitions flow on. If the same jump comes back
    (the records are gone), it is let through."""
    consumer = build_runtime(Settings(kafka_bootstrap="127.0.0.1:9", app_id="repair-jump")).app.consumer
    click, purchase = TP("ecom.click", 0), TP("ecom.purchase", 0)
    fetches = [[(click, 11), (click, 12), (click, 30), (purchase, 5), (click, 31)], [(click, 30)]]
    sought: list[tuple[TP, int]] = []

    async def fetched(self: object, timeout: float):
        for tp, offset in fetches.pop(0):
            yield tp, _consumer_message(offset)

    async def seek(tp: TP, offset: int) -> None:
        sought.append((tp, offset))

    monkeypatch.setattr(FetchTracking, "getmany", fetched, raising=False)  # the fetch below ReReadJumps
    consumer.seek = seek

    async def drain() -> list[tuple[TP, int]]:
        got = []
        async for tp, message in consumer.getmany(1.0):
            got.append((tp, message.offset))
            consumer._read_offset[tp] = message.offset  # as both drain loops do after delivering
        return got

    consumer._read_offset[click] = 10
    assert asyncio.run(drain()) == [(click, 11), (click, 12), (purchase, 5)]
    assert sought == [(click, 12)] and consumer._read_offset[click] == 11 and consumer.rereads == 1
    consumer._read_offset[click] = 12  # re-read 12; the log still jumps to 30: retention deleted the rest
    assert asyncio.run(drain()) == [(click, 30)] and sought == [(click, 12)]


def test_jumps_below_a_commit_are_forgotten() -> None:
    """The remembered jumps stay as few as the uncommitted span, like the fetched-offset runs."""
    consumer = build_runtime(Settings(kafka_bootstrap="127.0.0.1:9", app_id="repair-forget")).app.consumer
    consumer.app.topics.acks_enabled_for = lambda topic: True
    click, browse = TP("ecom.click", 0), TP("ecom.browse", 0)
    assert consumer._first_jump(click, 12) and consumer._first_jump(click, 40) and consumer._first_jump(browse, 12)
    consumer._committed_offset[click] = 11
    consumer._acked[click] = list(range(11, 20))  # the re-read delivered 11..19
    consumer._acked_index[click] = set(range(11, 20))
    assert consumer._new_offset(click) == 20
    assert consumer._jumps_seen == {(click, 40), (browse, 12)}
