"""The store contract (app/store/base.py), run against every implementation."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections.abc import Iterable

import orjson

from app.store.base import ItemMeta, ProfileSnapshot, Store
from schemas.events import EncodedRecommendation, RecItem, Recommendation
from tests.contract.conftest import Clock, StoreFactory


def uid(prefix: str = "u") -> str:
    """Unique per test: the Cassandra keyspace is shared by the whole run."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def now_ms() -> int:
    return int(time.time() * 1000)


def rec(user_id: str, version: int, generated_at: int, *, items: tuple[str, ...] = ("i1", "i2"),
        scene: str = "browsing") -> Recommendation:
    return Recommendation(
        rec_id=f"{user_id}:{version}:{generated_at}",
        user_id=user_id,
        version=version,
        generated_at=generated_at,
        source_ts=generated_at - 40,
        scene=scene,  # type: ignore[arg-type]
        model_version="m-1",
        items=[RecItem(item_id=item, score=1.0 / (rank + 1), reason=f"popular in category {rank}")
               for rank, item in enumerate(items)],
    )


def encoded(recs: Iterable[Recommendation]) -> list[EncodedRecommendation]:
    """Lists as the refresh agent hands them to the store: each with the bytes it published."""
    return [EncodedRecommendation.of(r) for r in recs]


def profile(user_id: str, updated_at: int, scene: str = "browsing") -> ProfileSnapshot:
    return ProfileSnapshot(
        user_id=user_id, scene=scene, interests={"c7": 0.75, "c9": 0.25}, updated_at=updated_at,
        payload=orjson.dumps({"user_id": user_id, "recent": ["i1", "i2"], "updated_at": updated_at}),
    )


def test_profiles_read_your_writes_and_upsert(store_factory: StoreFactory) -> None:
    async def body() -> None:
        async with await store_factory() as store:
            a, b = uid(), uid()
            assert await store.get_profile(a) is None
            first = profile(a, 1_000)
            await store.put_profiles([first, profile(b, 1_000, scene="shopping")])
            assert await store.get_profile(a) == first
            assert (await store.get_profile(b)).scene == "shopping"
            assert (await store.get_profile(a)).payload_json()["recent"] == ["i1", "i2"]
            newer = profile(a, 2_000, scene="post_purchase")
            await store.put_profiles([newer])
            assert await store.get_profile(a) == newer
            await store.put_profiles([])  # an empty batch is a no-op

    asyncio.run(body())


def test_items_read_your_writes_and_upsert(store_factory: StoreFactory) -> None:
    async def body() -> None:
        async with await store_factory() as store:
            item = ItemMeta(item_id=uid("i"), category="c3", price=19.5, available=True, updated_at=5)
            assert await store.get_item(item.item_id) is None
            await store.put_items([item])
            assert await store.get_item(item.item_id) == item
            retired = ItemMeta(item_id=item.item_id, category="c3", price=17.0, available=False, updated_at=9)
            await store.put_items([retired])
            assert await store.get_item(item.item_id) == retired

    asyncio.run(body())


def test_history_is_newest_first_with_limit_and_since(store_factory: StoreFactory) -> None:
    async def body() -> None:
        async with await store_factory() as store:
            user, other = uid(), uid()
            base = now_ms() - 10 * 3600 * 1000  # spans several hours: several Cassandra buckets
            lists = [rec(user, v, base + v * 1800 * 1000) for v in range(1, 13)]
            shuffled = lists[:]
            random.Random(7).shuffle(shuffled)
            for start in range(0, len(shuffled), 5):  # several batches, out of order
                await store.put_recommendations(encoded(shuffled[start:start + 5]))
            await store.put_recommendations(encoded([rec(other, 1, base)]))

            newest_first = list(reversed(lists))
            assert await store.history(user, limit=100) == newest_first
            assert await store.history(user, limit=3) == newest_first[:3]
            assert await store.history(user, limit=0) == []
            cutoff = lists[8].generated_at
            assert await store.history(user, limit=100, since_ms=cutoff) == newest_first[:4]
            assert await store.history(user, limit=2, since_ms=cutoff) == newest_first[:2]
            assert await store.latest_recommendation(user) == lists[-1]
            assert await store.history(other) == [rec(other, 1, base)]
            assert await store.latest_recommendation(uid()) is None
            assert await store.history(uid()) == []

    asyncio.run(body())


def test_rewriting_the_same_list_version_is_a_no_op(store_factory: StoreFactory) -> None:
    async def body() -> None:
        async with await store_factory() as store:
            user = uid()
            t = now_ms()
            v1, v2 = rec(user, 1, t - 5_000), rec(user, 2, t - 1_000)
            await store.put_recommendations(encoded([v1, v2, v2]))  # duplicate inside one batch
            await store.put_recommendations(encoded([v2]))  # redelivered batch
            await store.put_recommendations(encoded([v1, v2]))
            assert await store.history(user) == [v2, v1]
            # A stale copy of version 2 (older generated_at, e.g. replayed after a crash) changes nothing.
            stale = rec(user, 2, t - 2_000, items=("stale",))
            await store.put_recommendations(encoded([stale]))
            assert await store.history(user) == [v2, v1]
            assert await store.latest_recommendation(user) == v2
            # A newer copy of the same version replaces it, still as one entry.
            fresher = rec(user, 2, t, items=("fresh",))
            await store.put_recommendations(encoded([fresher]))
            assert await store.history(user) == [fresher, v1]
            assert await store.latest_recommendation(user) == fresher

    asyncio.run(body())


def test_history_expires_after_ttl(store_factory: StoreFactory, clock: Clock) -> None:
    """Time moves on the stores' clock (virtual, except on a real cluster): no race with a busy machine."""

    async def body() -> None:
        async with await store_factory(history_ttl_s=10) as store:
            user = uid()
            t = clock.ms()
            dying = rec(user, 1, t - 8_400)  # expires at t + 1.6 s
            living = rec(user, 2, t)  # expires at t + 10 s
            dead = rec(user, 0, t - 11_000)  # expired 1 s before it was written: never readable
            await store.put_recommendations(encoded([dead, dying, living]))
            assert await store.history(user) == [living, dying]
            assert await store.latest_recommendation(user) == living
            if clock.virtual:  # a real cluster counts TTLs in whole seconds of its own clock
                await clock.advance(1.5)
                assert await store.history(user) == [living, dying], "expired before its ttl"
                await clock.advance(1.5)
            else:
                await clock.advance(3.0)
            # t + 3 s: dying is past its expiry by more than a TTL's whole second
            assert await store.history(user) == [living]
            assert await store.history(user, since_ms=0) == [living]
            assert await store.latest_recommendation(user) == living
            await clock.advance(8.0)  # t + 11 s: past living's expiry too
            assert await store.history(user, since_ms=0) == []
            assert await store.latest_recommendation(user) is None

    asyncio.run(body())


def test_concurrent_writers_lose_nothing(store_factory: StoreFactory, clock: Clock) -> None:
    users = [uid() for _ in range(20)]
    versions = 15
    base = clock.ms() - 3600 * 1000
    ticks = itertools.count()
    profile_writes: list[tuple[int, int, int]] = []  # (began, finished, version), in event-loop ticks

    async def writer(store: Store, worker: int) -> None:
        # Each handle writes every user's odd or even versions, in small batches, interleaved.
        for v in range(worker + 1, versions + 1, 2):
            await store.put_recommendations(encoded([rec(u, v, base + v * 1000) for u in users]))
            began = next(ticks)
            await store.put_profiles([profile(u, base + v * 1000) for u in users])
            profile_writes.append((began, next(ticks), v))
            await asyncio.sleep(0)

    async def body() -> None:
        stores = [await store_factory() for _ in range(2)]
        try:
            # two handles, each driven by two writers: every batch is also written twice, as on redelivery
            await asyncio.gather(*(writer(store, n % 2) for n, store in enumerate(stores * 2)))
            # profiles are upserts, last write wins: a write is a candidate for the final value unless
            # another began after it had finished
            last = {v for _, finished, v in profile_writes if not any(b > finished for b, _, _ in profile_writes)}
            assert last and 1 not in last, profile_writes
            for reader in stores:
                for u in users:
                    every = [rec(u, v, base + v * 1000) for v in range(versions, 0, -1)]
                    assert await reader.history(u, limit=100) == every
                    assert await reader.history(u, limit=3) == every[:3]
                    assert await reader.latest_recommendation(u) == every[0]
                    got = await reader.get_profile(u)
                    assert got in [profile(u, base + v * 1000) for v in sorted(last)], (got, sorted(last))
        finally:
            for store in stores:
                await store.close()

    asyncio.run(body())


def test_forget_user_leaves_nothing_and_spares_others(store_factory: StoreFactory) -> None:
    async def body() -> None:
        async with await store_factory() as store:
            gone, kept = uid(), uid()
            base = now_ms() - 5 * 3600 * 1000
            for user in (gone, kept):
                await store.put_profiles([profile(user, base)])
                await store.put_recommendations(encoded([rec(user, v, base + v * 3600 * 1000) for v in range(1, 5)]))
            await store.forget_user(gone)
            assert await store.get_profile(gone) is None
            assert await store.history(gone, limit=100) == []
            assert await store.latest_recommendation(gone) is None
            assert await store.get_profile(kept) == profile(kept, base)
            assert len(await store.history(kept, limit=100)) == 4
            await store.forget_user(gone)  # forgetting twice is fine
            # The user may come back later and is stored afresh.
            back = rec(gone, 1, now_ms() + 1)  # after the forget, even at millisecond resolution
            await store.put_recommendations(encoded([back]))
            assert await store.history(gone) == [back]

    asyncio.run(body())
