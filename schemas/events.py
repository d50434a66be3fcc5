"""Typed, frozen records of DESIGN.md §1: the input events and what StreamRec publishes.

msgspec Structs are immutable (frozen=True), validated on decode and cheap to build, which matters
on the hot path of a stream processor. Field names are the wire names.
"""

from __future__ import annotations

from typing import Literal

import msgspec

ClickAction = Literal["open", "add_to_cart", "wishlist"]
Page = Literal["home", "category", "search", "product", "cart", "review", "order"]
Scene = Literal["browsing", "shopping", "post_purchase"]
EventType = Literal["click", "browse", "purchase", "catalog"]

_ENCODER = msgspec.json.Encoder()


class Click(msgspec.Struct, frozen=True, kw_only=True, tag="click", tag_field="type"):
    event_id: str
    user_id: str
    ts: int
    item_id: str
    action: ClickAction = "open"
    session_id: str | None = None
    category: str | None = None
    position: int | None = None
    rec_id: str | None = None


class Browse(msgspec.Struct, frozen=True, kw_only=True, tag="browse", tag_field="type"):
    event_id: str
    user_id: str
    ts: int
    page: Page
    session_id: str | None = None
    item_id: str | None = None
    category: str | None = None
    query: str | None = None
    dwell_ms: int | None = None


class OrderItem(msgspec.Struct, frozen=True, kw_only=True):
    item_id: str
    quantity: int = 1
    price: float | None = None
    category: str | None = None


class Purchase(msgspec.Struct, frozen=True, kw_only=True, tag="purchase", tag_field="type"):
    event_id: str
    user_id: str
    ts: int
    order_id: str
    items: list[OrderItem]
    session_id: str | None = None
    rec_id: str | None = None


class CatalogItem(msgspec.Struct, frozen=True, kw_only=True, tag="catalog", tag_field="type"):
    item_id: str
    category: str
    price: float
    available: bool
    vector: list[float] | None = None
    ts: int | None = None


class Forget(msgspec.Struct, frozen=True, kw_only=True, tag="forget", tag_field="type"):
    """A privacy request on the internal events topic: erase everything StreamRec holds on a user."""

    user_id: str
    ts: int


UserEvent = Click | Browse | Purchase
"""The events that carry a user and change a profile."""

AnyEvent = Click | Browse | Purchase | CatalogItem


class RecItem(msgspec.Struct, frozen=True, kw_only=True):
    item_id: str
    score: float
    reason: str


class Recommendation(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A published list. `experiment` and `arm` are set only for a user in a running online experiment
    (models/experiments.py); they are left off the wire otherwise, so other lists keep their old bytes."""

    rec_id: str
    user_id: str
    version: int
    generated_at: int
    source_ts: int
    scene: Scene
    model_version: str
    items: list[RecItem]
    experiment: str | None = None
    arm: str | None = None


class EncodedRecommendation(msgspec.Struct, frozen=True):
    """A published list with its wire JSON, encoded once: the same bytes go to Kafka and to the store."""

    record: Recommendation
    raw: bytes

    @classmethod
    def of(cls, record: Recommendation) -> EncodedRecommendation:
        return cls(record, _ENCODER.encode(record))


def event_items(event: UserEvent) -> list[tuple[str, str | None]]:
    """(item_id, category) pairs an event touches, in order; a browse without an item touches none."""
    if isinstance(event, Purchase):
        return [(line.item_id, line.category) for line in event.items]
    if event.item_id is None:
        return []
    return [(event.item_id, event.category)]
