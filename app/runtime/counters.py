"""Pipeline counters kept in the `stats` table, one row per stage and partition.

Counting in a changelogged table (written once per batch) makes the accounting survive crashes:
consumed = accepted + duplicates + dead-lettered holds across restarts (DESIGN.md §2.1). A row also
holds, per source ("@name"), the source offsets already counted, as sorted inclusive ranges written
in the same value as the counts: a message redelivered after a crash is processed again but never
counted twice, and a batch that comes back *after* a later batch of its partition was counted (a
batch left unacknowledged by `acked_only_when_done`, redelivered after the next rebalance) is still
counted once. A single high mark counted those as already seen: 20 and 6 of 100,000 events short
in two full-scale crash runs (docs/RELIABILITY.md). Marks are not counters and are left out of `totals`.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping

import orjson
from faust.types import EventT

from app.runtime.faust_app import StreamRec
from app.runtime.faust_fixes.batches import in_partition_of

MAX_RANGES = 64  # gaps kept per source; past that the oldest gap is closed (counted as seen)


class OffsetRanges:
    """A set of offsets as sorted, disjoint, non-adjacent inclusive [lo, hi] ranges.

    Offsets arrive mostly in order, so `add` extends the last range in O(1); `contains` is a bisect.
    At most `MAX_RANGES` ranges are kept: the lowest gap is closed first, because the messages in it
    are the least likely to come back (they are furthest behind the committed offset).
    """

    __slots__ = ("ranges",)

    def __init__(self, ranges: Iterable[Iterable[int]] = ()) -> None:
        self.ranges: list[list[int]] = []
        for lo, hi in sorted(tuple(r) for r in ranges):
            self._append(lo, hi)

    @classmethod
    def from_json(cls, value: object) -> OffsetRanges:
        """Read a stored mark: a list of ranges, or (rows written before ranges) one high mark."""
        if isinstance(value, int):
            return cls([(0, value)] if value >= 0 else [])
        return cls(value or ())  # type: ignore[arg-type]

    def to_json(self) -> list[list[int]]:
        return [list(r) for r in self.ranges]

    def contains(self, offset: int) -> bool:
        ranges = self.ranges
        if not ranges or offset > ranges[-1][1]:
            return False
        i = bisect.bisect_right(ranges, offset, key=lambda r: r[0]) - 1
        return i >= 0 and ranges[i][1] >= offset

    def add(self, offset: int) -> None:
        if not self.ranges or offset >= self.ranges[-1][0]:
            self._append(offset, offset)  # in order: extends the last range or opens the next
        else:
            self.update(OffsetRanges([(offset, offset)]))

    def update(self, other: OffsetRanges) -> None:
        merged = OffsetRanges([*self.ranges, *other.ranges])
        self.ranges = merged.ranges
        self._bound()

    def _append(self, lo: int, hi: int) -> None:
        if self.ranges and lo <= self.ranges[-1][1] + 1:
            self.ranges[-1][1] = max(self.ranges[-1][1], hi)
        else:
            self.ranges.append([lo, hi])
        self._bound()

    def _bound(self) -> None:
        while len(self.ranges) > MAX_RANGES:
            first, second = self.ranges[0], self.ranges.pop(1)
            first[1] = second[1]

    def __len__(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.ranges)

    def __repr__(self) -> str:
        return f"OffsetRanges({self.ranges})"


class BatchCounts:
    """Counts of one batch, per partition, with one event of that partition to write them under."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.counts: dict[int, Counter[str]] = defaultdict(Counter)
        self.marks: dict[int, dict[str, OffsetRanges]] = defaultdict(dict)
        self.anchor: dict[int, EventT] = {}
        self._counted_now: set[tuple[int, str, int]] = set()  # (partition, source, offset) in this batch

    def add(self, event: EventT, name: str, n: int = 1) -> None:
        partition = event.message.partition
        self.counts[partition][name] += n
        self.anchor[partition] = event

    def first_count(self, event: EventT, name: str, offset: int, persisted: OffsetRanges | None) -> bool:
        """Whether source `name`'s message at `offset` is to be counted now; if so it is marked.

        Not when a persisted batch counted it (`persisted`: the row's marks, read at the batch's start),
        nor when this batch did already: after a rebalance a take buffer can hold a message and its
        redelivered copy side by side (measured: `ingest.consumed` 2 over in 1 of 8 reduced crash runs).
        """
        if persisted is not None and persisted.contains(offset):
            return False
        key = (event.message.partition, name, offset)
        if key in self._counted_now:  # a set, not the marks: those are bounded and may close a gap early
            return False
        self._counted_now.add(key)
        self.mark(event, name, offset)
        return True

    def mark(self, event: EventT, name: str, offset: int) -> None:
        """Record that `event`'s partition has counted source `name`'s message at `offset`."""
        marks = self.marks[event.message.partition]
        if name not in marks:
            marks[name] = OffsetRanges()
        marks[name].add(offset)
        self.anchor[event.message.partition] = event

    def flush(self, runtime: StreamRec) -> None:
        for partition in set(self.counts) | set(self.marks):
            key = f"{self.stage}:{partition}".encode()
            current = orjson.loads(runtime.stats.get(key) or b"{}")
            for name, n in self.counts.get(partition, {}).items():
                current[name] = current.get(name, 0) + n
            for name, offsets in self.marks.get(partition, {}).items():
                stored = OffsetRanges.from_json(current.get("@" + name))
                stored.update(offsets)
                current["@" + name] = stored.to_json()
            with in_partition_of(self.anchor[partition]):
                runtime.stats[key] = orjson.dumps(current)


def counted_offsets(runtime: StreamRec, stage: str, partition: int) -> dict[str, OffsetRanges]:
    """The marks of one stage's row: source name -> the offsets whose counts are persisted."""
    row = orjson.loads(runtime.stats.get(f"{stage}:{partition}".encode()) or b"{}")
    return {name[1:]: OffsetRanges.from_json(v) for name, v in row.items() if name.startswith("@")}


def totals(rows: Iterable[tuple[bytes, bytes]]) -> dict[str, int]:
    """Sum every stage's counters over partitions: {"ingest.consumed": n, "profile.accepted": n, ...}."""
    out: Counter[str] = Counter()
    for key, value in rows:
        stage = key.decode().split(":", 1)[0]
        counts: Mapping[str, int] = orjson.loads(value)
        for name, n in counts.items():
            if not name.startswith("@"):
                out[f"{stage}.{name}"] += n
    return dict(out)
