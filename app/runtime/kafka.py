"""Kafka plumbing shared by the worker, the CLI and the tests: security options and topic creation.

Every topic is created explicitly with the configured partition count before anything produces to it:
on the embedded broker a producer-created topic got a different partition count than the tables'
changelogs and Faust raised PartitionsMismatch (DESIGN.md §5).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from app.runtime.settings import Settings
from schemas import topics

Client = TypeVar("Client", AIOKafkaProducer, AIOKafkaConsumer)

logger = logging.getLogger(__name__)

# Faust names a table's changelog "<app_id>-<table>-changelog".
TABLES = ("profiles", "recstate", "stats", "feedback")


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if "SSL" not in settings.kafka_security_protocol:
        return None
    ctx = ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)
    if settings.kafka_ssl_certfile:
        ctx.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile or None)
    return ctx


def client_options(settings: Settings) -> dict[str, Any]:
    """aiokafka keyword arguments for the configured security protocol (secrets are never logged)."""
    options: dict[str, Any] = {"bootstrap_servers": settings.kafka_bootstrap,
                               "security_protocol": settings.kafka_security_protocol}
    if settings.kafka_security_protocol.startswith("SASL"):
        options.update(sasl_mechanism=settings.kafka_sasl_mechanism,
                       sasl_plain_username=settings.kafka_sasl_username,
                       sasl_plain_password=settings.kafka_sasl_password.get_secret_value())
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    return options


@contextlib.asynccontextmanager
async def running(client: Client) -> AsyncIterator[Client]:
    """Start an aiokafka client and always stop it, also when the start fails (an unreachable broker)."""
    try:
        await client.start()
        yield client
    finally:
        await client.stop()


def producer(settings: Settings, **extra: Any) -> AIOKafkaProducer:
    """A producer with acks=all: the frontend-facing and replay paths must not lose accepted events."""
    return AIOKafkaProducer(**client_options(settings), acks="all", linger_ms=5, **extra)


def consumer(settings: Settings, *topic_names: str, **extra: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(*topic_names, **client_options(settings), **extra)


def topic_specs(settings: Settings) -> list[NewTopic]:
    compact = {"cleanup.policy": "compact"}
    specs = []
    names = list(topics.ALL) + [f"{settings.app_id}-{table}-changelog" for table in TABLES]
    for name in names:
        configs = compact if name in topics.COMPACTED or name.endswith("-changelog") else {}
        specs.append(NewTopic(name, settings.partitions, settings.replication_factor, topic_configs=configs))
    return specs


async def ensure_topics(settings: Settings) -> dict[str, int]:
    """Create every topic that does not exist yet; return name -> partition count as the broker has it."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in topic_specs(settings) if spec.name not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
            logger.info("created topics: %s", ", ".join(spec.name for spec in missing))
        described = await admin.describe_topics([spec.name for spec in topic_specs(settings)])
        return {d["topic"]: len(d["partitions"]) for d in described}
    finally:
        await admin.close()
