"""Re-read a partition whose commits are blocked by messages nobody will acknowledge.

Faust commits a partition only up to its first unacknowledged offset (`Consumer._new_offset`). A
message that was delivered and then dropped without an ack leaves a hole there for good: the
committed offset stops, the group's lag never returns to 0, and everything after the hole is
processed again only after the next rebalance or restart. Two ways to get such a hole are known:

- `acked_only_when_done` (app/runtime/faust_fixes/batches.py) leaves a failed or cancelled batch unacknowledged on
  purpose, so that it is delivered again instead of being committed without its effects;
- a message delivered across a rebalance (fetched for the old assignment, handed to the stream after
  the new one sought back) moves Faust's read offset past messages the next fetch then drops as
  already delivered.

Measured once in CI (docs/RELIABILITY.md): after the reduced crash test every topic drained but one
partition of ecom.purchase, whose lag stayed at 92 for 300 s. `RepairingConsumer` checks every
`CHECK_INTERVAL_S` for partitions whose commit is blocked by such a hole, and when the commit is still
blocked at the same offset `STUCK_AFTER_S` later (`STUCK_IN_FLIGHT_AFTER_S` while a message below the
hole is still in memory) it seeks the partition back to its committed offset, between two fetch
rounds (`seek_between_fetches`), and logs it. Re-reading is safe: every agent is idempotent on
redelivery (the dedupe ring and the counted-offset ranges, app/runtime/counters.py).

A hole of a *single* offset right at the committed one is worse: Faust commits over it, taking it for
a non-data offset (a transaction marker), and the message is lost, not delayed (a clean-clone CI run
on 2026-12-03: one event of 12,000 never forwarded after the SIGKILL test, nothing dead-lettered).
`RepairingConsumer` remembers which offsets the fetch loop really returned (`FetchedOffsets`) and
refuses a commit past a fetched record nobody acknowledged (`_new_offset`); the check above then
reads it again. tests/integration/test_fastpath.py fails without it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from faust.types import TP
from mode import Service

from app.runtime.faust_fixes.shutdown import CommitGateConsumer
from schemas import topics

logger = logging.getLogger(__name__)

CHECK_INTERVAL_S = 5.0
STUCK_AFTER_S = 10.0  # a hole with nothing below it in flight: nothing will ever fill it
# A hole with a message below it still in memory is normally filled when that message's batch ends. A
# partition's messages are acknowledged in order, so a hole behind a live message only arises from a
# batch that is never going to end (an agent restarted past its take buffer); give it longer.
STUCK_IN_FLIGHT_AFTER_S = 120.0
FETCH_ROUND_WAIT_S = 60.0  # how long a repair waits for the fetch loop to finish its current batch


@dataclass(frozen=True)
class Hole:
    """Offsets [committed, first_acked) of one partition: delivered, not acknowledged, blocking commits."""

    committed: int
    first_acked: int  # with nothing acknowledged: one past the fetched run that starts the hole
    in_flight: bool  # a message below first_acked is still unacknowledged in memory (it may yet be acked)


class FetchedOffsets:
    """Offsets known to hold a record, per partition, as sorted disjoint runs [first, last].

    Faust's commit cannot tell a missing record from a non-data offset (a transaction marker, a
    compacted-away record) when it is a single offset at the head of a partition's acknowledged
    offsets, and commits over it. Remembering what the fetch loop really returned tells the two apart:
    a fetched offset holds a record. Runs below each commit are forgotten, so this stays as small as
    the uncommitted span (one run per partition in the normal case).
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


def stream_channels(app: Any) -> list[Any]:
    """Every channel the conductor delivers to, once each (a channel reading several partitions is listed
    under each of them in Faust's partition index)."""
    return list({id(channel): channel for chans in app.topics._tp_index.values() for channel in chans}.values())


def holes(committed: Mapping[Any, int | None], acked: Mapping[Any, Sequence[int]],
          in_flight: Iterable[tuple[Any, int]], fetched: FetchedOffsets | None = None,
          queued: Iterable[Any] = ()) -> dict[Any, Hole]:
    """Partitions whose next commit is blocked, as `RepairingConsumer._new_offset` sees them.

    `committed` is Faust's next offset to read per partition, `acked` its acknowledged offsets not yet
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
    for tp, start in committed.items():
        if not start:  # Faust does not block on an unknown or zero committed offset
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


class RepairingConsumer(CommitGateConsumer):
    """Faust's aiokafka consumer that seeks a partition back when a hole blocks its commits (docstring)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._holes_seen: dict[TP, tuple[int, float]] = {}  # partition -> (blocked at offset, since)
        self.repairs = 0  # partitions sought back so far, for tests and the logs
        self.fetch_rounds = 0  # calls of the fetch loop's `_wait_next_records`: a new round began
        self.skipped_unprocessed = 0  # messages a stream skipped (rebalance, stop) and `ack` kept uncommitted
        self.fetched = FetchedOffsets()  # offsets known to hold a record, from the fetch loop's batches
        self.gaps = 0  # jumps in a partition's fetched offsets (`_add_gap`), trusted or not
        self.rereads = 0  # partitions sought back by `getmany` after a jump in their fetched offsets
        self._jumps_seen: set[tuple[TP, int]] = set()  # (partition, first offset jumped over), above the commits

    def ack(self, message: Any) -> bool:
        """Record `message` as safe to commit only if a stream really took it for processing.

        Faust's pure-Python stream iterator (used where its Cython extension is not installed)
        acknowledges a message it *skips* - one that reaches it while flow control is suspended (a
        rebalance or a stop has begun) or that carries an earlier consumer generation - "otherwise the
        lag would increase" (faust/streams.py `_py_aiter`); the rebalance then commits while waiting
        for the streams to empty, so a skipped message at the head of a partition would be committed
        without ever being processed. (The Cython iterator does not acknowledge it.) A processed
        message is `tracked` by the stream before the agent sees it, a skipped one never is: it is
        marked acked here, so nothing counts it, and read again from the committed offset.
        """
        if not message.tracked and not message.acked:
            message.acked = True
            self.skipped_unprocessed += 1
            return False
        return super().ack(message)

    def _gaps_possible(self, topic: str) -> bool:
        """Whether offsets without a record are normal in `topic` (compaction, transaction markers)."""
        return topic in topics.COMPACTED or topic.endswith("-changelog") or self.in_transaction

    def _first_jump(self, tp: TP, first_missing: int) -> bool:
        """True (and remembered) the first time the fetch jumps over `first_missing` of a topic where every
        offset holds a record; False where gaps are normal or that jump came back after a re-read."""
        if self._gaps_possible(tp.topic) or (tp, first_missing) in self._jumps_seen:
            return False
        self._jumps_seen.add((tp, first_missing))
        return True

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        """Faust's fetch batches, except that a partition whose records jump past its read offset is
        read again from there instead (fault 17, docs/RELIABILITY.md).

        Faust drops fetched records in several places without moving aiokafka's position back (a
        batch cut short when the flow stops or the generation changes) and relies on a later seek to
        the committed offsets. When that seek comes first (measured after a restart's table
        recovery, in both consumer loops), the next fetch starts past records never delivered: the
        same jump in every partition, one fetch's worth. Delivering the record after the jump would
        apply events out of order and let the commit go over the missing ones, so the rest of that
        partition's batch is held back and the partition is sought back to the first missing offset.
        Where offsets without records are normal, or the same jump comes back after a re-read
        (retention deleted the records), the record is delivered as Faust would (see `_add_gap`)."""
        sought: dict[TP, int] = {}
        read_offset = self._read_offset
        try:
            async for tp, message in super().getmany(timeout):
                if tp in sought:
                    continue
                last = read_offset.get(tp)
                if last is not None and message.offset - last > 1 and self._first_jump(tp, last + 1):
                    # From `last`, not last + 1: after a seek Faust's read offset is the next offset to
                    # read, not the last one delivered, so `last` may be missing too (re-reading one
                    # delivered record is harmless: every agent is idempotent on redelivery).
                    sought[tp] = last
                    logger.warning("%s/%d: the fetch jumped from offset %d to %d; reading the partition again "
                                   "from %d", tp.topic, tp.partition, last, message.offset, last)
                    continue
                yield tp, message
        finally:
            for tp, offset in sought.items():
                self.rereads += 1
                await self.seek(tp, offset)
                read_offset[tp] = offset - 1 if offset > 0 else None  # the next record delivered is `offset`

    async def _wait_next_records(self, timeout: float) -> Any:
        self.fetch_rounds += 1
        records, active = await super()._wait_next_records(timeout)
        if records:
            for tp, messages in records.items():
                self.fetched.add(tp, [m.offset for m in messages])
        return records, active

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Faust's gap bookkeeping, only where a gap can be real (fault 17, docs/RELIABILITY.md).

        Faust records offsets the fetch jumped over as a gap and counts them as acknowledged, which is
        right for offsets that hold no record: compacted-away records, transaction markers. On a topic
        that is neither compacted nor written in transactions every offset holds a record, so there a
        jump means records about to be committed without ever being delivered (measured: a restarted
        fast-path worker jumped ~682 offsets in every partition and lost 2,208 events). Such a jump is
        left as a hole instead: commits stop below it and the blocked-partition check reads the
        partition again from its committed offset. Only if the same jump comes back after that (the
        records are gone: retention deleted them before they were read) is it recorded as a gap, so
        that the partition does not stay blocked for good."""
        self.gaps += 1
        if self._first_jump(tp, offset_from):
            logger.warning("%s/%d: the fetch jumped over offsets %d-%d of a topic where every offset holds a "
                           "record; left as a hole, to be read again", tp.topic, tp.partition, offset_from,
                           offset_to - 1)
            return
        if not self._gaps_possible(tp.topic):
            logger.error("%s/%d: offsets %d-%d jumped over again after reading them again: not in the log any "
                         "more (retention?); skipped", tp.topic, tp.partition, offset_from, offset_to - 1)
        await super()._add_gap(tp, offset_from, offset_to)

    def _new_offset(self, tp: TP) -> int | None:
        """Faust's next commit offset, except over a fetched record nobody acknowledged (module docstring)."""
        committed = self._committed_offset[tp]
        if (committed and self._acked[tp] and committed not in self._acked_index[tp]
                and self.fetched.holds(tp, committed)):
            return None
        offset = super()._new_offset(tp)
        if offset is not None:
            self.fetched.forget_below(tp, offset)
            if self._jumps_seen:  # a jump below the commit can no longer come back: keep the set bounded
                self._jumps_seen = {(t, o) for t, o in self._jumps_seen if t != tp or o >= offset}
        return offset

    def _queued(self) -> set[Any]:
        """Partitions with a message waiting in a stream queue (delivered, not yet taken by a stream)."""
        return {event.message.tp for channel in stream_channels(self.app) for event in list(channel.queue._queue)}

    def _in_flight(self) -> Iterable[tuple[TP, int]]:
        return ((m.tp, m.offset) for m in list(self._unacked_messages) if not m.acked)

    @Service.timer(CHECK_INTERVAL_S)
    async def _repair_blocked_partitions(self) -> None:  # pragma: no cover - run by the worker
        try:
            await self.repair_blocked_partitions()
        except Exception:  # a failed check must not crash the consumer; the next one tries again
            logger.exception("checking for blocked partitions failed")

    async def repair_blocked_partitions(self) -> None:
        """One check (module docstring): forget holes that moved, seek back the ones that stayed."""
        if self.app.rebalancing or self.commits_closed or self.should_stop:
            self._holes_seen.clear()
            return
        assigned = self.assignment()

        def blocked() -> dict[TP, Hole]:
            found = holes(self._committed_offset, self._acked, self._in_flight(), self.fetched, self._queued())
            # a partition Faust paused (table recovery, flow control) is not read on purpose
            return {tp: hole for tp, hole in found.items() if tp in assigned and tp not in self._paused_partitions}

        found = blocked()
        if any(hole.in_flight for hole in found.values()):
            gc.collect()  # a message of a crashed agent's take buffer stays "in flight" until collected
            found = blocked()
        now = time.monotonic()
        for tp in list(self._holes_seen):
            if tp not in found or found[tp].committed != self._holes_seen[tp][0]:
                del self._holes_seen[tp]
        for tp, hole in found.items():
            since = self._holes_seen.setdefault(tp, (hole.committed, now))[1]
            if now - since < (STUCK_IN_FLIGHT_AFTER_S if hole.in_flight else STUCK_AFTER_S):
                continue
            del self._holes_seen[tp]
            self.repairs += 1
            logger.warning("%s/%d: offsets %d-%d delivered and not acknowledged (%s; %d later offsets are), "
                           "commits blocked for %.0fs: reading the partition again from offset %d",
                           tp.topic, tp.partition, hole.committed, hole.first_acked - 1,
                           "some still in memory" if hole.in_flight else "none in flight",
                           len(self._acked[tp]), now - since, hole.committed)
            await self.seek_between_fetches(tp, hole.committed)

    async def _seek(self, partition: TP, offset: int) -> None:
        """aiokafka's seek, run on the consumer's own thread.

        Faust runs aiokafka in a thread with its own event loop, yet its `_seek` calls aiokafka's
        `seek` from the app's thread, which deletes the partition's fetched records and completes the
        fetch routine's future from the wrong thread. After a repair in the reduced SIGKILL test the
        consumer thread's `fetched_records`, iterating those records, raised KeyError; the fetcher
        crashed and the worker stopped (the same traceback as robinhood/aiokafka#19). Faust itself
        seeks through `seek_wait`/`seek_to_committed`, which already run on the thread; this makes
        `Consumer.seek` (the repair's) safe too.
        """
        await self._thread.call_thread(self._thread.seek, partition, offset)

    async def seek_between_fetches(self, tp: TP, offset: int) -> bool:
        """Seek `tp` to `offset` while the fetch loop holds none of its records; False if it could not.

        A plain `seek` races the fetch loop: the rest of a batch it fetched before the seek would
        still be delivered, and the first of those, far past the new read offset, makes Faust record
        the offsets in between as a gap (non-data offsets) and commit over them: a loss. So the
        partition is paused first (the loop skips a paused partition's records at once, the batch's
        rest included), the seek waits for the loop to start its next fetch round (the record it
        was handing over is then delivered), and the partition is resumed after the seek.
        """
        tp = TP(tp.topic, tp.partition)  # messages carry aiokafka's TopicPartition; Faust's sets hold its own TP
        if tp in self._paused_partitions:  # paused by Faust itself (recovery, flow control): not ours
            return False
        generation = self.app.consumer_generation_id
        self.pause_partitions([tp])
        try:
            round_before = self.fetch_rounds
            deadline = time.monotonic() + FETCH_ROUND_WAIT_S
            while self.fetch_rounds == round_before and time.monotonic() < deadline and not self.should_stop:
                await asyncio.sleep(0.05)
            if self.app.consumer_generation_id != generation or self.app.rebalancing:
                return False  # the rebalance seeks back to the committed offsets itself
            if self.fetch_rounds == round_before:
                logger.warning("%s/%d: fetch loop did not start a new round within %.0fs; not sought back",
                               tp.topic, tp.partition, FETCH_ROUND_WAIT_S)
                return False
            await self.seek(tp, offset)
            return True
        finally:
            resumed = self.app.consumer_generation_id == generation and tp in self.assignment()
            if resumed:
                self.resume_partitions([tp])
            logger.info("%s/%d: %s", tp.topic, tp.partition,
                        "resumed" if resumed else "left paused: the assignment changed meanwhile (the rebalance resumes it)")
