"""Catalog: item upserts and retirements from ecom.catalog go to Milvus (vector, availability) and the store.

An item without a vector is placed at its category's centroid, so new items are recallable at once.
"""

from __future__ import annotations

import asyncio
import time

from agents.ingest import deadletter_headers, deadletter_value
from app.runtime.faust_app import StreamRec
from app.runtime.faust_fixes.batches import acked_only_when_done
from app.store import ItemMeta
from schemas import topics
from schemas.events import CatalogItem
from schemas.validation import Rejection, decode_event


def register(sr: StreamRec) -> None:
    deadletter = sr.topics[topics.DEADLETTER]

    @sr.app.agent(sr.topics[topics.CATALOG], name="streamrec.agents.catalog")
    async def catalog(stream):
        services = sr.services
        async for batch in stream.take_events(500, 0.5):
            with acked_only_when_done(batch):
                now_ms = int(time.time() * 1000)
                items: list[CatalogItem] = []
                sent = []
                for event in batch:
                    message = event.message
                    result = decode_event(message.value, message.topic, services.limits, now_ms)
                    if isinstance(result, Rejection):
                        headers = deadletter_headers(result.reason, result.detail, message.topic,
                                                     message.partition, message.offset)
                        value = deadletter_value(message.value, headers, sr.settings.max_message_bytes)
                        sent.append(await deadletter.send(key=message.topic.encode(), value=value, headers=headers))
                    else:
                        items.append(result)
                if items:
                    services.apply_catalog(items)  # on the loop: recall is shared with the refresh agent
                    await (await sr.store()).put_items(
                        [ItemMeta(item_id=i.item_id, category=i.category, price=i.price, available=i.available,
                                  updated_at=i.ts or now_ms) for i in items])
                await asyncio.gather(*sent)
