"""The stats rows' counted-offset ranges (app/runtime/counters.py): each source message counted exactly once,
whatever order redeliveries come back in."""

from __future__ import annotations

from types import SimpleNamespace

import orjson

from app.runtime import counters
from app.runtime.counters import BatchCounts, OffsetRanges, counted_offsets, totals


def test_in_order_offsets_stay_one_range() -> None:
    seen = OffsetRanges()
    for offset in range(100, 200):
        seen.add(offset)
    assert seen.ranges == [[100, 199]] and len(seen) == 100
    assert seen.contains(100) and seen.contains(199)
    assert not seen.contains(99) and not seen.contains(200)


def test_a_batch_redelivered_after_a_later_one_is_not_taken_as_counted() -> None:
    """The crash case a high mark got wrong: 0..99 left unacknowledged, 100..199 counted first."""
    seen = OffsetRanges()
    for offset in range(100, 200):
        seen.add(offset)
    assert not any(seen.contains(o) for o in range(100))  # a high mark of 199 said all of these were counted
    for offset in range(100):
        seen.add(offset)
    assert seen.ranges == [[0, 199]]


def test_update_merges_overlapping_and_adjacent_ranges() -> None:
    seen = OffsetRanges([(10, 19), (40, 49)])
    seen.update(OffsetRanges([(20, 25), (45, 60), (70, 70)]))
    assert seen.ranges == [[10, 25], [40, 60], [70, 70]]
    seen.add(5)
    assert seen.ranges[0] == [5, 5] and seen.contains(5) and not seen.contains(6)


def test_gaps_are_bounded_by_closing_the_oldest(monkeypatch) -> None:
    monkeypatch.setattr(counters, "MAX_RANGES", 3)
    seen = OffsetRanges()
    for offset in (0, 10, 20, 30):
        seen.add(offset)
    assert seen.ranges == [[0, 10], [20, 20], [30, 30]]  # the oldest gap (1..9) closed: taken as counted
    assert seen.contains(5) and not seen.contains(25)


def test_json_round_trip_and_rows_with_an_old_high_mark() -> None:
    seen = OffsetRanges([(3, 7), (9, 9)])
    assert OffsetRanges.from_json(orjson.loads(orjson.dumps(seen.to_json()))).ranges == [[3, 7], [9, 9]]
    assert OffsetRanges.from_json(41).ranges == [[0, 41]]  # a row written before ranges: all <= 41
    assert OffsetRanges.from_json(-1).ranges == [] and OffsetRanges.from_json(None).ranges == []


class _Event:
    """What BatchCounts reads of a Faust event (its message's partition and offset); weakly referable."""

    def __init__(self, partition: int, offset: int) -> None:
        self.message = SimpleNamespace(partition=partition, offset=offset)


def test_batch_counts_flush_accumulates_counts_and_marks_per_partition() -> None:
    runtime = SimpleNamespace(stats={})
    for batch in ([_Event(0, o) for o in range(10, 20)], [_Event(0, o) for o in range(10)] + [_Event(1, 5)]):
        counts = BatchCounts("ingest")
        for event in batch:
            if not counted_offsets(runtime, "ingest", event.message.partition).get("ecom.click", OffsetRanges()).contains(
                    event.message.offset):
                counts.add(event, "consumed")
                counts.mark(event, "ecom.click", event.message.offset)
        counts.flush(runtime)
    assert totals(runtime.stats.items()) == {"ingest.consumed": 21}
    assert counted_offsets(runtime, "ingest", 0)["ecom.click"].ranges == [[0, 19]]
    assert counted_offsets(runtime, "ingest", 1)["ecom.click"].ranges == [[5, 5]]


def test_a_message_twice_in_one_batch_is_counted_once() -> None:
    """After a rebalance a take buffer can hold a message and its redelivered copy in the same batch."""
    counts = BatchCounts("ingest")
    persisted = OffsetRanges([[0, 9]])
    first, copy, old = _Event(0, 10), _Event(0, 10), _Event(0, 5)
    assert counts.first_count(first, "ecom.click", 10, persisted)
    assert not counts.first_count(copy, "ecom.click", 10, persisted)  # the copy, same batch
    assert not counts.first_count(old, "ecom.click", 5, persisted)  # counted by a persisted batch
    assert counts.first_count(_Event(0, 10), "ecom.browse", 10, None)  # another source, same offset
    assert counts.first_count(_Event(1, 10), "ecom.click", 10, None)  # another partition's row
    assert counts.marks[0]["ecom.click"].ranges == [[10, 10]]


def test_a_batch_with_more_gaps_than_the_marks_keep_counts_every_message() -> None:
    """The profile agent walks a batch user by user, so a partition's offsets come out of order: far
    more than MAX_RANGES gaps at times. Bounding the marks closes gaps early; counting must not."""
    counts = BatchCounts("profile")
    order = [o for start in range(2) for o in range(start, 400, 2)]  # 0, 2, 4, ... then 1, 3, 5, ...
    assert all(counts.first_count(_Event(0, o), "events", o, OffsetRanges()) for o in order)
    assert not any(counts.first_count(_Event(0, o), "events", o, OffsetRanges()) for o in order)
    assert counts.marks[0]["events"].ranges == [[0, 399]]
