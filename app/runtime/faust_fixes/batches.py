"""Batches taken with `take_events`: table writes in the right partition, acks only for finished batches."""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from faust.streams import _current_event
from faust.types import EventT

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def in_partition_of(event: EventT) -> Iterator[None]:
    """Make `event` the current event, so table writes go to its partition.

    Faust picks a table write's changelog partition and RocksDB store from the current event. When we
    batch with `take_events`, the agent body runs outside Faust's per-message context and a batch mixes
    partitions, so each user's write is made in the context of one of that user's own events.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


@contextlib.contextmanager
def acked_only_when_done(batch: Sequence[EventT]) -> Iterator[None]:
    """Faults 9 and 14: a batch whose body raised or was cancelled is left unacknowledged, and the agent
    goes on (docs/RELIABILITY.md).

    `take_events` acks its batch in a `finally`; marking the messages acked here makes Faust's
    `consumer.ack` skip them, so the commit stops before them and they are delivered again (after a
    rebalance or restart, or by the blocked-partition repair). An exception is logged, not re-raised:
    a crashed agent's stream keeps acking what it pulls until Faust restarts the agent. Cancellation
    (a stop, a rebalance) still propagates.
    """
    try:
        yield
    except BaseException as exc:
        for event in batch:
            event.message.acked = True  # consumer.ack() ignores an acked message: no offset, no commit
        spans = offset_spans(event.message for event in batch)
        if not isinstance(exc, Exception):  # CancelledError, GeneratorExit, KeyboardInterrupt
            logger.info("batch of %d events cancelled, not acknowledged: %s", len(batch), spans)
            raise
        logger.error("batch of %d events failed, not acknowledged, to be delivered again: %s",
                     len(batch), spans, exc_info=exc)


def offset_spans(messages: Iterable[Any]) -> str:
    """'topic/partition first-last' per partition of `messages`, for logs."""
    spans: dict[tuple[str, int], list[int]] = {}
    for message in messages:
        span = spans.setdefault((message.topic, message.partition), [message.offset, message.offset])
        span[0], span[1] = min(span[0], message.offset), max(span[1], message.offset)
    return ", ".join(f"{topic}/{partition} {lo}-{hi}" for (topic, partition), (lo, hi) in sorted(spans.items()))
