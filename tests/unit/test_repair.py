"""app/repair.py `holes`: which partitions have commits blocked by unacknowledged offsets."""

from __future__ import annotations

from app.faust_app import offset_spans
from app.repair import Hole, holes


def test_a_partition_acked_from_its_committed_offset_is_not_blocked() -> None:
    assert holes({"a": 10}, {"a": [10, 11, 12]}, []) == {}


def test_acked_offsets_past_a_gap_block_the_partition() -> None:
    assert holes({"a": 10}, {"a": [14, 15]}, []) == {"a": Hole(committed=10, first_acked=14, in_flight=False)}


def test_a_gap_of_one_offset_does_not_block_as_faust_commits_over_it() -> None:
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
