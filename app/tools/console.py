"""Terminal output for people: recommendation lists and topic tails (rich)."""

from __future__ import annotations

import logging
import time

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console
from rich.table import Table

from app.cli_errors import UserError
from app.runtime.kafka import consumer, running
from app.runtime.settings import Settings
from schemas.events import Recommendation

console = Console()
logger = logging.getLogger(__name__)


def recommendation_table(record: Recommendation, limit: int = 10) -> Table:
    table = Table(title=f"user {record.user_id} · scene {record.scene} · v{record.version} · "
                        f"{record.model_version}", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("item")
    table.add_column("score", justify="right")
    table.add_column("why")
    for rank, item in enumerate(record.items[:limit], 1):
        table.add_row(str(rank), item.item_id, f"{item.score:.3f}", item.reason)
    return table


def print_recommendation(record: Recommendation) -> None:
    console.print(recommendation_table(record))


async def tail_topic(settings: Settings, topic: str, from_beginning: bool, limit: int | None) -> None:
    """Print `topic`'s messages as JSON lines; an unknown topic is an error, not a silent wait."""
    reader = consumer(settings, auto_offset_reset="earliest" if from_beginning else "latest",
                      enable_auto_commit=False, group_id=None)
    async with running(reader):
        existing = await reader.topics()
        if topic not in existing:
            known = ", ".join(sorted(t for t in existing if not t.startswith("__"))) or "none"
            raise UserError(f"no topic {topic!r} on this broker (topics: {known}); `streamrec topics` creates ours")
        start: dict[TopicPartition, int] = {}
        if from_beginning:
            reader.subscribe([topic])
        else:
            parts = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or ())]
            reader.assign(parts)
            start = await _ends(reader, parts)
            for tp, end in start.items():
                reader.seek(tp, end)
        seen = 0
        async for message in reader:
            if message.offset < start.get(TopicPartition(message.topic, message.partition), 0):
                continue  # fetched while finding the end
            headers = {k: v.decode(errors="replace") for k, v in (message.headers or ())}
            try:
                value = orjson.loads(message.value) if message.value else None
            except orjson.JSONDecodeError:
                value = repr(message.value)
            key = message.key.decode(errors="replace") if message.key else None
            line = {"partition": message.partition, "offset": message.offset, "key": key, "value": value}
            if headers:
                line["headers"] = headers
            console.print_json(orjson.dumps(line).decode(), indent=None)  # one message per line (JSON lines)
            seen += 1
            if limit is not None and seen >= limit:
                break


async def _ends(reader: AIOKafkaConsumer, parts: list[TopicPartition], timeout_s: float = 10.0) -> dict[TopicPartition, int]:
    """Each partition's end as its fetch answer reports it (the highwater).

    Tansu answers ListOffsets(latest) with an offset inside the last batch (DESIGN.md §5: 1 after a
    batch of 10), so a tail that trusted it printed old messages as if they had just arrived."""
    deadline = time.monotonic() + timeout_s
    while any(reader.highwater(tp) is None for tp in parts) and time.monotonic() < deadline:
        await reader.getmany(*parts, timeout_ms=500, max_records=1)
    unknown = [tp.partition for tp in parts if reader.highwater(tp) is None]
    if unknown:
        logger.warning("no fetch answer for partitions %s within %.0fs: tailing them from the broker's latest offset",
                       unknown, timeout_s)
    return {tp: end for tp in parts if (end := reader.highwater(tp)) is not None}
