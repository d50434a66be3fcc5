"""The one place the fixes are composed: the consumer every worker runs, and the App class for each choice."""

from __future__ import annotations

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TransportT

from app.runtime.faust_fixes.consumer import (
    CommitGate,
    FetchTracking,
    JumpsAreHoles,
    NoCommitOverFetchedRecord,
    RepairBlockedPartitions,
    ReReadJumps,
    SeekOnConsumerThread,
    SkippedNotAcked,
)
from app.runtime.faust_fixes.fastpath import FastDrain
from app.runtime.faust_fixes.highwater import FetchWaitFromApp, ProbedHighwaters
from app.runtime.faust_fixes.queues import DroppedSharesDone, SharesDroppedApp


class StreamRecConsumerThread(ProbedHighwaters, FetchWaitFromApp, faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread with the thread-side fixes."""


class StreamRecConsumer(ReReadJumps, JumpsAreHoles, NoCommitOverFetchedRecord, SkippedNotAcked,
                        RepairBlockedPartitions, SeekOnConsumerThread, CommitGate, FetchTracking,
                        DroppedSharesDone, faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with every consumer-side fix, on Faust's own drain loop (the default)."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return StreamRecConsumerThread(self, loop=self.loop, beacon=self.beacon)


class FastPathConsumer(FastDrain, StreamRecConsumer):
    """`StreamRecConsumer` on the fast path's drain loop (`STREAMREC_FAUST_FASTPATH=true`)."""


class StreamRecTransport(faust_aiokafka.Transport):
    Consumer = StreamRecConsumer


class FastPathTransport(faust_aiokafka.Transport):
    Consumer = FastPathConsumer


class StreamRecApp(SharesDroppedApp):
    """faust.App on `StreamRecConsumer` (same URLs, same settings), its channels recording dropped events."""

    fetch_max_wait_ms: int | None = None  # set from the settings by build_runtime; None: Faust's 1,500 ms

    def _new_transport(self) -> TransportT:
        return StreamRecTransport(self.conf.broker_consumer, self)


class FastPathApp(StreamRecApp):
    """faust.App on `FastPathConsumer`."""

    def _new_transport(self) -> TransportT:
        return FastPathTransport(self.conf.broker_consumer, self)


def app_class(fastpath: bool) -> type[StreamRecApp]:
    """The App class of a worker: the fast path's, or Faust's own drain loop (both with every fix)."""
    return FastPathApp if fastpath else StreamRecApp
