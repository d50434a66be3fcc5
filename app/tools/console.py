"""Terminal output for people: recommendation lists and topic tails (rich)."""

from __future__ import annotations

import orjson
from rich.console import Console
from rich.table import Table

from app.cli_errors import UserError
from app.runtime.kafka import consumer, running
from app.runtime.settings import Settings
from schemas.events import Recommendation

console = Console()


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
        reader.subscribe([topic])
        seen = 0
        async for message in reader:
            headers = {k: v.decode(errors="replace") for k, v in (message.headers or ())}
            try:
                value = orjson.loads(message.value) if message.value else None
            except orjson.JSONDecodeError:
                value = repr(message.value)
            key = message.key.decode(errors="replace") if message.key else None
            line = {"partition": message.partition, "offset": message.offset, "key": key, "value": value}
            if headers:
                line["headers"] = headers
            console.print_json(orjson.dumps(line).decode())
            seen += 1
            if limit is not None and seen >= limit:
                break
