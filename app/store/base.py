"""The narrow store interface and its records (issue 4).

What must outlive the stream and be read by others (the serving API, attribution, "don't show again")
goes through this interface: user profile snapshots, recommendation history and item metadata. The
worker calls each write once per commit/batch, so every write takes a list.

Semantics every implementation keeps (and the contract suite in tests/contract/ checks):

- read-your-writes: a read after an awaited write sees it;
- history is newest first (by list version, which is strictly increasing per user);
- a history entry expires ``history_ttl_s`` after its ``generated_at`` (0 = never);
- (user_id, version) identifies a list: re-writing it is a no-op, and a copy with an older
  ``generated_at`` never replaces a newer one;
- profiles and items are upserts: the last write wins;
- ``forget_user`` removes every profile and history row of the user.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, Self

import msgspec
import orjson

from schemas.events import EncodedRecommendation, Recommendation

_REC_DECODER = msgspec.json.Decoder(Recommendation)


class ProfileSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A user's profile as others read it: scene, top interests and the full profile as opaque JSON.

    ``payload`` is the JSON object of the worker's profile table value, the very bytes written there
    (it carries the dedupe ledger, ``_ledger``, too: readers skip keys they do not know).
    """

    user_id: str
    scene: str
    interests: dict[str, float]
    updated_at: int
    payload: bytes = b"{}"

    def payload_json(self) -> Any:
        """The full profile, decoded."""
        return orjson.loads(self.payload)


class ItemMeta(msgspec.Struct, frozen=True, kw_only=True):
    """Catalog facts the serving side needs without asking the catalog service."""

    item_id: str
    category: str
    price: float
    available: bool
    updated_at: int


def decode_recommendation(raw: bytes) -> Recommendation:
    """A stored list: its wire JSON (``EncodedRecommendation.raw``), so it reads back equal to what was published."""
    return _REC_DECODER.decode(raw)


def newest_copies(recs: Iterable[EncodedRecommendation]) -> list[EncodedRecommendation]:
    """One copy per (user_id, version): the one with the newest generated_at (first seen on a tie).

    A batch may hold the same list twice (at-least-once redelivery); writing both would only make the
    store do the tie-break twice.
    """
    chosen: dict[tuple[str, int], EncodedRecommendation] = {}
    for rec in recs:
        key = (rec.record.user_id, rec.record.version)
        old = chosen.get(key)
        if old is None or rec.record.generated_at > old.record.generated_at:
            chosen[key] = rec
    return list(chosen.values())


def expires_at_ms(generated_at: int, ttl_s: int) -> int | None:
    """When a history entry stops being readable; None when history never expires (ttl 0)."""
    return None if ttl_s <= 0 else generated_at + ttl_s * 1000


class Store(ABC):
    """Async store used by the worker and the serving side. Implementations must never block the loop."""

    @abstractmethod
    async def put_profiles(self, profiles: list[ProfileSnapshot]) -> None:
        """Upsert snapshots (last write wins), in one batch."""

    @abstractmethod
    async def get_profile(self, user_id: str) -> ProfileSnapshot | None: ...

    @abstractmethod
    async def put_recommendations(self, recs: list[EncodedRecommendation]) -> None:
        """Append published lists to each user's history, stored as their wire bytes (``raw``, not
        encoded again); idempotent per (user_id, version)."""

    @abstractmethod
    async def latest_recommendation(self, user_id: str) -> Recommendation | None:
        """The unexpired list with the highest version, or None."""

    @abstractmethod
    async def history(self, user_id: str, limit: int = 20, since_ms: int | None = None) -> list[Recommendation]:
        """Unexpired lists newest first, at most ``limit``, only those generated at or after ``since_ms``."""

    @abstractmethod
    async def put_items(self, items: list[ItemMeta]) -> None:
        """Upsert item metadata (last write wins), in one batch."""

    @abstractmethod
    async def get_item(self, item_id: str) -> ItemMeta | None: ...

    @abstractmethod
    async def forget_user(self, user_id: str) -> None:
        """Remove the user's profile and whole history (privacy request)."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and threads; the store is unusable afterwards."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
