"""Pure bookkeeping over a consumer's offsets: which records were fetched, which partitions are blocked."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Hole:
    """Offsets [committed, first_acked) of one partition: delivered, not acknowledged, blocking commits."""

    committed: int
    first_acked: int  # with nothing acknowledged: one past the fetched run that starts the hole
    in_flight: bool  # a message below first_acked is still unacknowledged in memory (it may yet be acked)


class FetchedOffsets:
    """Offsets known to hold a record, per partition, as sorted disjoint runs [first, last].

    Faust cannot tell a missing record from a non-data offset (a transaction marker, a compacted-away
    record); a fetched offset holds a record (fault 13, docs/RELIABILITY.md). Runs below each commit
    are forgotten, so this stays as small as the uncommitted span.
    """

    def __init__(self) -> None:
        self._runs: dict[Any, list[list[int]]] = {}

    def add(self, tp: Any, offsets: Iterable[int]) -> None:
        """Record a fetched batch: its offsets are folded into runs first, so a batch costs one merge."""
        batch: list[list[int]] = []
        for offset in offsets:
            if batch and offset == batch[-1][1] + 1:
                batch[-1][1] = offset
            else:
                batch.append([offset, offset])
        runs = self._runs.setdefault(tp, [])
        for first, last in batch:
            if runs and runs[-1][0] <= first <= runs[-1][1] + 1:  # the usual case: the next records
                runs[-1][1] = max(runs[-1][1], last)
                continue
            runs.append([first, last])  # after a seek: merged in order with the runs already there
            runs.sort()
            merged = [runs[0]]
            for lo, hi in runs[1:]:
                if lo <= merged[-1][1] + 1:
                    merged[-1][1] = max(merged[-1][1], hi)
                else:
                    merged.append([lo, hi])
            runs[:] = merged

    def runs(self, tp: Any) -> list[list[int]]:
        return self._runs.get(tp, [])

    def first(self, tp: Any) -> int | None:
        """The lowest fetched offset not yet committed over: with nothing committed, the partition's head."""
        runs = self._runs.get(tp)
        return runs[0][0] if runs else None

    def partitions(self) -> list[Any]:
        return [tp for tp, runs in self._runs.items() if runs]

    def holds(self, tp: Any, offset: int) -> bool:
        return any(first <= offset <= last for first, last in self.runs(tp))

    def run_end(self, tp: Any, offset: int) -> int:
        """The last fetched offset of the run holding `offset` (which must be fetched)."""
        return next(last for first, last in self.runs(tp) if first <= offset <= last)

    def forget_below(self, tp: Any, offset: int) -> None:
        runs = self._runs.get(tp)
        if runs:
            runs[:] = [[max(first, offset), last] for first, last in runs if last >= offset]


def lowest_per_partition(offsets: Iterable[tuple[Any, int]]) -> dict[Any, int]:
    """The lowest offset per partition of (partition, offset) pairs."""
    lowest: dict[Any, int] = {}
    for tp, offset in offsets:
        if offset < lowest.get(tp, offset + 1):
            lowest[tp] = offset
    return lowest


def holes(committed: Mapping[Any, int | None], acked: Mapping[Any, Sequence[int]],
          in_flight: Iterable[tuple[Any, int]], fetched: FetchedOffsets | None = None,
          queued: Iterable[Any] = ()) -> dict[Any, Hole]:
    """Partitions whose next commit is blocked, as `NoCommitOverFetchedRecord._new_offset` sees them.

    `committed` is Faust's next offset to read per partition (None or 0: nothing committed yet, and the
    head is then the first record fetched, fault 19), `acked` its acknowledged offsets not yet
    committed, `in_flight` the (partition, offset) of messages delivered and not acknowledged yet,
    `fetched` the offsets the fetch loop returned, `queued` the partitions with a message waiting in a
    stream queue. A partition is blocked when its first acknowledged offset is
    - more than one past the committed one, or
    - one past it while the committed offset held a fetched record: Faust alone would commit over a
      single missing offset, taking it for a non-data offset; or when
    - nothing is acknowledged, the record at the committed offset was fetched, and no message of the
      partition waits in a queue: it went to a stream that is gone (an agent that crashed) and the
      read offset has moved past it, so without a seek it never comes again.
    """
    lowest_in_flight = lowest_per_partition(in_flight)
    waiting = set(queued)
    known = fetched if fetched is not None else FetchedOffsets()
    found: dict[Any, Hole] = {}
    for tp in {**dict.fromkeys(committed), **dict.fromkeys(known.partitions())}:
        start = committed.get(tp) or known.first(tp)
        if start is None:
            continue
        start_fetched = known.holds(tp, start)
        offsets = acked.get(tp)
        if offsets:
            first = min(offsets)
            if not (first - start > 1 or (first - start == 1 and start_fetched)):
                continue
        elif start_fetched and tp not in waiting:
            first = known.run_end(tp, start) + 1
        else:
            continue
        found[tp] = Hole(committed=start, first_acked=first, in_flight=lowest_in_flight.get(tp, first) < first)
    return found
