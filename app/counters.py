"""Pipeline counters kept in the `stats` table, one row per stage and partition.

Counting in a changelogged table (written once per batch) makes the accounting survive crashes:
consumed = accepted + duplicates + dead-lettered holds across restarts (DESIGN.md §2.1). A row also
holds marks ("@name" -> the highest source offset already counted), written in the same value as the
counts, so a message redelivered after a crash is processed again but never counted twice; marks are
not counters and are left out of `totals`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping

import orjson
from faust.types import EventT

from app.faust_app import StreamRec, in_partition_of


class BatchCounts:
    """Counts of one batch, per partition, with one event of that partition to write them under."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.counts: dict[int, Counter[str]] = defaultdict(Counter)
        self.marks: dict[int, dict[str, int]] = defaultdict(dict)
        self.anchor: dict[int, EventT] = {}

    def add(self, event: EventT, name: str, n: int = 1) -> None:
        partition = event.message.partition
        self.counts[partition][name] += n
        self.anchor[partition] = event

    def mark(self, event: EventT, name: str, offset: int) -> None:
        """Record that `event`'s partition has counted source `name` up to `offset` (kept as a max)."""
        marks = self.marks[event.message.partition]
        marks[name] = max(offset, marks.get(name, -1))
        self.anchor[event.message.partition] = event

    def flush(self, sr: StreamRec) -> None:
        for partition in set(self.counts) | set(self.marks):
            key = f"{self.stage}:{partition}".encode()
            current = orjson.loads(sr.stats.get(key) or b"{}")
            for name, n in self.counts.get(partition, {}).items():
                current[name] = current.get(name, 0) + n
            for name, offset in self.marks.get(partition, {}).items():
                current["@" + name] = max(offset, current.get("@" + name, -1))
            with in_partition_of(self.anchor[partition]):
                sr.stats[key] = orjson.dumps(current)


def counted_upto(sr: StreamRec, stage: str, partition: int) -> dict[str, int]:
    """The marks of one stage's row: source name -> highest offset whose counts are persisted."""
    row = orjson.loads(sr.stats.get(f"{stage}:{partition}".encode()) or b"{}")
    return {name[1:]: n for name, n in row.items() if name.startswith("@")}


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
