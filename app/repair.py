"""Re-read a partition whose commits are blocked by messages nobody will acknowledge.

Faust commits a partition only up to its first unacknowledged offset (`Consumer._new_offset`). A
message that was delivered and then dropped without an ack leaves a hole there for good: the
committed offset stops, the group's lag never returns to 0, and everything after the hole is
processed again only after the next rebalance or restart. Two ways to get such a hole are known:

- `acked_only_when_done` (app/faust_app.py) leaves a failed or cancelled batch unacknowledged on
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
redelivery (the dedupe ring and the counted-offset ranges, app/counters.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from faust.types import TP
from mode import Service

from app.shutdown import CommitGateConsumer

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
    first_acked: int
    in_flight: bool  # a message below first_acked is still unacknowledged in memory (it may yet be acked)


def holes(committed: Mapping[Any, int | None], acked: Mapping[Any, Sequence[int]],
          in_flight: Iterable[tuple[Any, int]]) -> dict[Any, Hole]:
    """Partitions whose next commit is blocked, as Faust's `_new_offset` sees them.

    `committed` is Faust's next offset to read per partition, `acked` its acknowledged offsets not yet
    committed, `in_flight` the (partition, offset) of messages delivered and not acknowledged yet. A
    partition is blocked when its first acknowledged offset is more than one past the committed one
    (Faust commits over a single missing offset, taking it for a non-data offset).
    """
    lowest_in_flight: dict[Any, int] = {}
    for tp, offset in in_flight:
        if offset < lowest_in_flight.get(tp, offset + 1):
            lowest_in_flight[tp] = offset
    found: dict[Any, Hole] = {}
    for tp, offsets in acked.items():
        start = committed.get(tp)
        if not offsets or not start:  # Faust does not block on an unknown or zero committed offset
            continue
        first = min(offsets)
        if first - start > 1:
            found[tp] = Hole(committed=start, first_acked=first, in_flight=lowest_in_flight.get(tp, first) < first)
    return found


class RepairingConsumer(CommitGateConsumer):
    """Faust's aiokafka consumer that seeks a partition back when a hole blocks its commits (docstring)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._holes_seen: dict[TP, tuple[int, float]] = {}  # partition -> (blocked at offset, since)
        self.repairs = 0  # partitions sought back so far, for tests and the logs
        self.fetch_rounds = 0  # calls of the fetch loop's `_wait_next_records`: a new round began

    async def _wait_next_records(self, timeout: float) -> Any:
        self.fetch_rounds += 1
        return await super()._wait_next_records(timeout)

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
            found = holes(self._committed_offset, self._acked, self._in_flight())
            return {tp: hole for tp, hole in found.items() if tp in assigned}

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
            if self.app.consumer_generation_id == generation and tp in self.assignment():
                self.resume_partitions([tp])
