"""The Faust application: one `StreamRec` runtime holding the app, its topics and its tables.

Nothing here is module-level state: `build_runtime(settings)` makes a fresh runtime, and the agents
in agents/ register themselves on it. Topics and tables are declared once, here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.streams import _current_event
from faust.types import EventT

from app import topics
from app.fastpath import app_class
from app.kafka import ssl_context
from app.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class StreamRec:
    """What an agent needs: settings, the app, topics by name, tables, and long-lived services."""

    settings: Settings
    app: faust.App
    topics: dict[str, faust.TopicT]
    inputs: faust.TopicT  # the three user-event topics, read by the ingest agent as one stream
    profiles: faust.Table
    recstate: faust.Table
    stats: faust.Table
    feedback: faust.Table  # per-user attribution state of the feedback agent (models/feedback.py)
    services: Any = None  # app.services.Services, attached by the worker at startup
    extras: dict[str, Any] = field(default_factory=dict)
    store_opened: asyncio.Event = field(default_factory=asyncio.Event)

    def set_store(self, store: Any) -> None:
        self.extras["store"] = store
        self.store_opened.set()

    async def store(self) -> Any:
        """The store (app.store), once the worker's startup task has opened it.

        Faust starts agents and app tasks side by side, so a restarted worker with a backlog can reach
        its first refresh before the store is open; waiting here beats failing that batch.
        """
        await self.store_opened.wait()
        return self.extras["store"]


def _credentials(settings: Settings) -> Any:
    context = ssl_context(settings)
    if settings.kafka_security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def build_runtime(settings: Settings) -> StreamRec:
    broker = ";".join(f"kafka://{host}" for host in settings.kafka_bootstrap.split(","))
    app = app_class(settings.faust_fastpath)(
        settings.app_id,
        broker=broker,
        broker_credentials=_credentials(settings),
        store="rocksdb://",
        datadir=str(settings.data_dir / "faust"),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=False,  # topics are created by app.kafka.ensure_topics, all alike
        producer_acks=-1,
        # dead letters carry inputs up to max_message_bytes whole, plus headers (agents/ingest.py)
        producer_max_request_size=settings.max_message_bytes + 1024 * 1024,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,  # our own aiohttp server (app.web) serves /healthz, /readyz, /metrics
        table_standby_replicas=0,
        # Rebalances wait for the batches in flight: a batch still running on a revoked partition reads
        # its table after the store dropped that partition and would write a reset row (app/shutdown.py).
        stream_wait_empty=True,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        # Tansu keeps a join open for the whole rebalance timeout before it answers a lone member;
        # a short timeout makes a single worker get its partitions in seconds, not ~30 s (DESIGN.md §5).
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_session_timeout=max(settings.rebalance_timeout_s, 10.0),
        broker_heartbeat_interval=1.0,
    )

    app.fetch_max_wait_ms = settings.fetch_max_wait_ms  # read by app.highwater.ExactHighwaterThread

    def topic(name: str) -> faust.TopicT:
        return app.topic(name, key_serializer="raw", value_serializer="raw", partitions=settings.partitions)

    declared = {name: topic(name) for name in topics.ALL}

    # bounded per table partition: memtables x 2 + the block cache (the compressed-block cache, used by the
    # python-rocksdb driver only, gets the same bound); Faust's store options
    rocksdb = {
        "write_buffer_size": settings.rocksdb_write_buffer_mb * 2**20, "max_write_buffer_number": 2,
        "block_cache_size": settings.rocksdb_block_cache_mb * 2**20,
        "block_cache_compressed_size": settings.rocksdb_block_cache_mb * 2**20,
    }

    def table(name: str) -> faust.Table:
        return app.Table(name, key_type=bytes, value_type=bytes, partitions=settings.partitions, options=rocksdb)

    inputs = app.topic(*topics.INPUT_TOPICS, key_serializer="raw", value_serializer="raw",
                       partitions=settings.partitions)
    return StreamRec(settings=settings, app=app, topics=declared, inputs=inputs, profiles=table("profiles"),
                     recstate=table("recstate"), stats=table("stats"),
                     feedback=table("feedback"))


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
    """Leave a `take_events` batch unacknowledged unless the body got through it; never crash the agent.

    `take_events` acks its batch in a `finally`, so a body that raised or was cancelled half-way (an
    agent crash, a stop, a rebalance) had its events committed without their effects: a batch lost.
    Marking the messages acked here makes Faust's `consumer.ack` skip them, so the committed offset
    stops before them (Faust commits only up to the first gap) and they are delivered again: after the
    next rebalance or restart, or when app/repair.py finds the partition's commits blocked; the dedupe
    ring and the ledger make that harmless.

    An exception is logged and *not* re-raised: the agent goes on with its next batch. Letting it
    crash the agent loses events. Faust restarts a crashed agent on the same stream, but the crashed
    `take_events` leaves the stream's background drainer running with acks switched back on and no
    buffer to fill, so every message it pulls until the new agent's `take_events` starts is
    acknowledged, and committed, without being processed (measured:
    tests/integration/test_fastpath.py, 143 messages of the other partition in one restart).
    Cancellation still propagates (a stop or a rebalance).
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
