"""Pipeline counters kept in the `stats` table, one row per stage and partition.

Counting in a changelogged table (written once per batch) makes the accounting survive crashes:
consumed = accepted + duplicates + dead-lettered holds across restarts (DESIGN.md §2.1).
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
        self.anchor: dict[int, EventT] = {}

    def add(self, event: EventT, name: str, n: int = 1) -> None:
        partition = event.message.partition
        self.counts[partition][name] += n
        self.anchor[partition] = event

    def flush(self, sr: StreamRec) -> None:
        for partition, counts in self.counts.items():
            key = f"{self.stage}:{partition}".encode()
            current = Counter(orjson.loads(sr.stats.get(key) or b"{}"))
            current.update(counts)
            with in_partition_of(self.anchor[partition]):
                sr.stats[key] = orjson.dumps(dict(current))


def totals(rows: Iterable[tuple[bytes, bytes]]) -> dict[str, int]:
    """Sum every stage's counters over partitions: {"ingest.consumed": n, "profile.accepted": n, ...}."""
    out: Counter[str] = Counter()
    for key, value in rows:
        stage = key.decode().split(":", 1)[0]
        counts: Mapping[str, int] = orjson.loads(value)
        for name, n in counts.items():
            out[f"{stage}.{name}"] += n
    return dict(out)
