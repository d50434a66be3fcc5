"""The Faust application: one `StreamRec` runtime holding the app, its topics and its tables.

Nothing here is module-level state: `build_runtime(settings)` makes a fresh runtime, and the agents
in agents/ register themselves on it. Topics and tables are declared once, here.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import faust

from app.runtime.faust_fixes import app_class
from app.runtime.feedback import FeedbackStage, stage_for
from app.runtime.kafka import ssl_context
from app.runtime.settings import Settings
from schemas import topics

if TYPE_CHECKING:  # both import this module's neighbours; the runtime only holds them
    from aiohttp import web

    from app.runtime.services import Services
    from app.store import Store

logger = logging.getLogger(__name__)


@dataclass
class StreamRec:
    """The runtime every agent is registered on: settings, the app, topics by name, tables, and the
    long-lived services and store the worker attaches at startup."""

    settings: Settings
    app: faust.App
    topics: dict[str, faust.TopicT]
    inputs: faust.TopicT  # the three user-event topics, read by the ingest agent as one stream
    profiles: faust.Table  # app.runtime.records.ProfileRow per user
    recstate: faust.Table  # app.runtime.records.RecState per user
    stats: faust.Table  # pipeline counters (app/runtime/counters.py)
    feedback: faust.Table  # per-user attribution state of the feedback stage (models/feedback.py)
    services: Services | None = None  # attached by the worker before Faust starts any agent
    # What agents and samplers leave for the dashboard (feedback windows, freshness, lag samples),
    # by the names their writers give; nothing on the hot path reads it.
    extras: dict[str, Any] = field(default_factory=dict)
    http: web.AppRunner | None = None  # the worker's HTTP server, once started
    _store: Store | None = None
    _store_opened: asyncio.Event = field(default_factory=asyncio.Event)
    # Fed by the profile and refresh agents; its windows are published by agents/feedback.py's timer.
    feedback_stage: FeedbackStage = field(init=False)

    def __post_init__(self) -> None:
        self.feedback_stage = stage_for(self)

    def loaded_services(self) -> Services:
        """The services, for an agent: the worker attaches them before any agent runs."""
        if self.services is None:
            raise RuntimeError("the worker attaches services before it starts the agents")
        return self.services

    def set_store(self, store: Store) -> None:
        self._store = store
        self._store_opened.set()

    @property
    def opened_store(self) -> Store | None:
        """The store if it is open yet, for HTTP handlers that answer "not ready" rather than wait."""
        return self._store

    async def store(self) -> Store:
        """The store, once the worker's startup task has opened it.

        Faust starts agents and app tasks side by side, so a restarted worker with a backlog can reach
        its first refresh before the store is open; waiting here beats failing that batch.
        """
        await self._store_opened.wait()
        assert self._store is not None  # set before the event
        return self._store


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
        topic_allow_declare=False,  # topics are created by app.runtime.kafka.ensure_topics, all alike
        producer_acks=-1,
        # dead letters carry inputs up to max_message_bytes whole, plus headers (agents/ingest.py)
        producer_max_request_size=settings.max_message_bytes + 1024 * 1024,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,  # our own aiohttp server (app.serving.web) serves /healthz, /readyz, /metrics
        table_standby_replicas=0,
        # Rebalances wait for the batches in flight: a batch still running on a revoked partition reads
        # its table after the store dropped that partition and would write a reset row (app/runtime/faust_fixes/shutdown.py).
        stream_wait_empty=True,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        # Tansu keeps a join open for the whole rebalance timeout before it answers a lone member;
        # a short timeout makes a single worker get its partitions in seconds, not ~30 s (DESIGN.md §5).
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_session_timeout=max(settings.rebalance_timeout_s, 10.0),
        broker_heartbeat_interval=1.0,
    )

    app.fetch_max_wait_ms = settings.fetch_max_wait_ms  # StreamRecApp's; its consumer thread's fetches wait this long

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
