"""The fixes to Faust's aiokafka consumer, one mixin per fault; app/runtime/faust_fixes/apps.py composes them.

Each mixin overrides methods no other fix overrides, so the order of composition does not change what
runs (tests/unit/test_faust_fixes.py checks that). The fault numbers are those of docs/RELIABILITY.md.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode import Service

from app.runtime.faust_fixes.offsets import FetchedOffsets, Hole, holes
from schemas import topics

logger = logging.getLogger(__name__)

CHECK_INTERVAL_S = 5.0
STUCK_AFTER_S = 10.0  # a hole with nothing below it in flight: nothing will ever fill it
# A partition's messages are acknowledged in order, so a hole behind a message still in memory only
# stays if that message's batch never ends (an agent restarted past its take buffer): give it longer.
STUCK_IN_FLIGHT_AFTER_S = 120.0
FETCH_ROUND_WAIT_S = 60.0  # how long a repair waits for the fetch loop to finish its current batch


def stream_channels(app: Any) -> list[Any]:
    """Every channel the conductor delivers to, once each (a channel reading several partitions is listed
    under each of them in Faust's partition index)."""
    return list({id(channel): channel for chans in app.topics._tp_index.values() for channel in chans}.values())


class FetchTracking(faust_aiokafka.Consumer):
    """What the fetch loop returned and which jumps it made: the evidence faults 11, 13 and 17 act on."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.fetch_rounds = 0  # calls of the fetch loop's `_wait_next_records`: a new round began
        self.fetched = FetchedOffsets()  # offsets known to hold a record, from the fetch loop's batches
        self._jumps_seen: set[tuple[TP, int]] = set()  # (partition, first offset jumped over), above the commits

    async def _wait_next_records(self, timeout: float) -> Any:
        self.fetch_rounds += 1
        records, active = await super()._wait_next_records(timeout)
        if records:
            for tp, messages in records.items():
                self.fetched.add(tp, [m.offset for m in messages])
        return records, active

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


class CommitGate(faust_aiokafka.Consumer):
    """Fault 3: after a stop's last commit of finished batches, every later commit is refused (docs/RELIABILITY.md)."""

    commits_closed = False

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        if self.commits_closed:
            logger.debug("commit of %d partitions refused: stopping", len(offsets))
            return False
        return await super()._commit(offsets)


class SkippedNotAcked(faust_aiokafka.Consumer):
    """Fault 13: a message a stream skipped is never recorded as safe to commit (docs/RELIABILITY.md)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.skipped_unprocessed = 0  # messages a stream skipped (rebalance, stop) and `ack` kept uncommitted

    def ack(self, message: Any) -> bool:
        """Faust's pure-Python stream iterator acks a message it skips (flow suspended, earlier generation);
        the rebalance would then commit it unprocessed. A stream `tracks` every message it processes, so an
        untracked one is marked acked here (nothing counts it) and read again from the committed offset."""
        if not message.tracked and not message.acked:
            message.acked = True
            self.skipped_unprocessed += 1
            return False
        return super().ack(message)


class NoCommitOverFetchedRecord(FetchTracking):
    """Fault 13: no commit goes over a fetched record nobody acknowledged (docs/RELIABILITY.md)."""

    def _new_offset(self, tp: TP) -> int | None:
        """Faust's next commit offset, which takes a single missing offset at the head of the acks for a
        non-data offset, except where that offset was fetched: then it is a record, and the commit waits.
        Fault 19: with nothing committed yet Faust checks no head at all; the head is then the first
        record fetched, and the commit waits for it the same way."""
        head = self._committed_offset[tp] or self.fetched.first(tp)
        if (head is not None and self._acked[tp] and head not in self._acked_index[tp]
                and self.fetched.holds(tp, head)):
            return None
        offset = super()._new_offset(tp)
        if offset is not None:
            self.fetched.forget_below(tp, offset)
            if self._jumps_seen:  # a jump below the commit can no longer come back: keep the set bounded
                self._jumps_seen = {(t, o) for t, o in self._jumps_seen if t != tp or o >= offset}
        return offset


class RepairBlockedPartitions(CommitGate, FetchTracking):
    """Fault 11: a partition whose commits stay blocked by unacknowledged offsets is read again from its
    committed offset (docs/RELIABILITY.md)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._holes_seen: dict[TP, tuple[int, float]] = {}  # partition -> (blocked at offset, since)
        self.repairs = 0  # partitions sought back so far, for tests and the logs

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
        """One check: forget holes that moved; seek back those blocked at the same offset for
        `STUCK_AFTER_S` (`STUCK_IN_FLIGHT_AFTER_S` while a message below the hole is in memory)."""
        if self.app.rebalancing or self.commits_closed or self.should_stop:
            self._holes_seen.clear()
            return
        assigned = self.assignment()

        def blocked() -> dict[TP, Hole]:
            found = holes(self._committed_offset, self._acked, self._in_flight(), self.fetched, self._queued())
            # a partition Faust paused (table recovery, flow control) is not read on purpose; a table's
            # changelog is read by recovery, whose records no stream acknowledges
            return {tp: hole for tp, hole in found.items() if tp in assigned and tp not in self._paused_partitions
                    and self.app.topics.acks_enabled_for(tp.topic)}

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

    async def seek_between_fetches(self, tp: TP, offset: int) -> bool:
        """Seek `tp` to `offset` while the fetch loop holds none of its records; False if it could not.

        A plain seek races the fetch loop: the rest of a batch fetched before it would still be
        delivered, and its first record, far past the new read offset, would make Faust record the
        offsets between as a gap and commit over them. So the partition is paused (the loop skips its
        records), the seek waits for the loop's next fetch round, and the partition is resumed after.
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


class SeekOnConsumerThread(faust_aiokafka.Consumer):
    """Fault 15: `Consumer.seek` runs aiokafka's seek on the consumer thread, not the app's (docs/RELIABILITY.md)."""

    async def _seek(self, partition: TP, offset: int) -> None:
        """aiokafka's seek deletes fetched records and completes the fetch routine's future: only safe on
        the thread whose event loop runs aiokafka (Faust's own seeks already run there)."""
        await self._thread.call_thread(self._thread.seek, partition, offset)


class ReReadJumps(FetchTracking):
    """Fault 17: a fetch that jumps past the read offset is read again from there (docs/RELIABILITY.md)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.rereads = 0  # partitions sought back by `getmany` after a jump in their fetched offsets

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        """Faust's fetch batches, except that a partition whose records jump past its read offset is
        held back and sought back to the first missing offset, so the missing records come first and
        in order. Where offsets without records are normal, or the same jump comes back after a
        re-read (retention deleted the records), the record is delivered as Faust would."""
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


class JumpsAreHoles(FetchTracking):
    """Fault 17: a jump on a topic where every offset holds a record is a hole, not a gap (docs/RELIABILITY.md)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.gaps = 0  # jumps in a partition's fetched offsets (`_add_gap`), trusted or not

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Faust counts offsets a fetch jumped over as acknowledged, right only for offsets without a
        record. Elsewhere the first such jump is left as a hole (commits stop below it, the repair reads
        it again); only the same jump after a re-read (records gone: retention) becomes a gap, so that
        the partition does not stay blocked for good."""
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
