"""Catalog: item upserts and retirements from ecom.catalog go to Milvus (vector, availability) and the store.

An item without a vector is placed at its category's centroid, so new items are recallable at once.
"""

from __future__ import annotations

import asyncio
import time

from app.runtime.deadletter import dead_letter
from app.runtime.faust_app import StreamRec
from app.runtime.faust_fixes.batches import acked_only_when_done
from app.store import ItemMeta
from schemas import topics
from schemas.events import CatalogItem
from schemas.validation import Rejection, decode_event


def register(runtime: StreamRec) -> None:
    deadletter = runtime.topics[topics.DEADLETTER]
    max_bytes = runtime.settings.max_message_bytes

    @runtime.app.agent(runtime.topics[topics.CATALOG], name="streamrec.agents.catalog")
    async def catalog(stream):
        services = runtime.loaded_services()
        async for batch in stream.take_events(500, 0.5):
            with acked_only_when_done(batch):
                now_ms = int(time.time() * 1000)
                items: list[CatalogItem] = []
                sent = []
                for event in batch:
                    message = event.message
                    result = decode_event(message.value, message.topic, services.limits, now_ms)
                    if isinstance(result, Rejection):
                        sent.append(await dead_letter(deadletter, message, result, max_bytes))
                    else:
                        items.append(result)
                if items:
                    services.apply_catalog(items)  # on the loop: recall is shared with the refresh agent
                    await (await runtime.store()).put_items(
                        [ItemMeta(item_id=i.item_id, category=i.category, price=i.price, available=i.available,
                                  updated_at=i.ts or now_ms) for i in items])
                await asyncio.gather(*sent)
