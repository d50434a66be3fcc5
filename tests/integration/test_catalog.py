"""ecom.catalog reaches a running worker: upserts and retirements, over Kafka and over POST /events.

An own broker and worker (real milvus-lite): the last test stops the worker to search its Milvus
collection, which milvus-lite does not share with a second process while the worker holds it.
Every item is in the model's largest category, so the retired and the new items share one centroid.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.runtime.settings import Settings
from app.store.sqlite import SqliteStore
from app.store.vectors import MilvusRecall
from app.tools.process import WorkerProcess
from models.encoder import build_inputs, load_model_version
from models.profile import UserProfile
from models.vectors import ItemVectors
from schemas import topics
from schemas.events import Browse, CatalogItem, Click
from schemas.validation import encode_event
from tests.integration.conftest import Kafka, private_pipeline
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[tuple[Kafka, WorkerProcess]]:
    with private_pipeline(tmp_path_factory.mktemp("catalog"),
                          {"STREAMREC_MODEL_DIR": str(model_dir), "STREAMREC_VECTOR_DIM": "32"}) as running:
        yield running


def now_ms() -> int:
    return int(time.time() * 1000)


def stored_item(worker: WorkerProcess, item_id: str):
    """The item's metadata as the worker's catalog agent stored it (None until it has)."""

    async def read():
        store = await SqliteStore.open(worker.data_dir / "streamrec.db", 0)
        try:
            return await store.get_item(item_id)
        finally:
            await store.close()

    return asyncio.run(read())


def send_catalog(kafka: Kafka, items: list[CatalogItem]) -> None:
    kafka.send([(topics.CATALOG, item.item_id.encode(), encode_event(item)) for item in items])


def post_catalog(worker: WorkerProcess, item: CatalogItem) -> None:
    body = [{"type": "catalog", "item_id": item.item_id, "category": item.category, "price": item.price,
             "available": item.available, "ts": item.ts}]
    answer = httpx.post(f"{worker.url}/events", json=body, timeout=30).json()
    assert answer["accepted"] == 1 and answer["results"][0]["topic"] == topics.CATALOG, answer


def largest_category(item_vectors: ItemVectors) -> tuple[str, list[str]]:
    by_cat: dict[str, list[str]] = {}
    for item in item_vectors.ids:
        by_cat.setdefault(item_vectors.categories[item], []).append(item)
    return max(sorted(by_cat.items()), key=lambda kv: len(kv[1]))


def test_a_retired_item_leaves_every_later_list(shop: tuple[Kafka, WorkerProcess], item_vectors: ItemVectors) -> None:
    kafka, worker = shop
    category, items = largest_category(item_vectors)
    tag = uuid.uuid4().hex[:8]
    by_kafka, by_http = f"new-k-{tag}", f"new-h-{tag}"
    start = now_ms() - 120_000
    send_catalog(kafka, [CatalogItem(item_id=by_kafka, category=category, price=9.5, available=True, ts=start)])
    post_catalog(worker, CatalogItem(item_id=by_http, category=category, price=4.0, available=True, ts=start))
    wait_for(lambda: (a := stored_item(worker, by_kafka)) and a.available and (b := stored_item(worker, by_http))
             and b.available)

    # users who view both new items: a viewed item is a strong candidate ("you viewed this item")
    users = [f"cat-viewer-{tag}-{n}" for n in range(2)]
    events = []
    for n, user in enumerate(users):
        events += [Browse(event_id=f"{user}-b{i}", user_id=user, ts=start + i * 10_000, page="product",
                          item_id=item, category=category, dwell_ms=30_000)
                   for i, item in enumerate([items[n], by_kafka, items[n + 2], by_http])]
    kafka.send_events(events)
    for user in users:
        lists = kafka.recommendations(user, lambda recs: any(r.source_ts >= start + 30_000 for r in recs))
        listed = {i.item_id for i in lists[-1].items}
        assert {by_kafka, by_http} <= listed, (user, lists[-1].items)

    retired_at = now_ms()
    send_catalog(kafka, [CatalogItem(item_id=by_kafka, category=category, price=9.5, available=False,
                                     ts=retired_at)])
    post_catalog(worker, CatalogItem(item_id=by_http, category=category, price=4.0, available=False, ts=retired_at))
    wait_for(lambda: not stored_item(worker, by_kafka).available and not stored_item(worker, by_http).available)
    applied_at = now_ms()

    # the users keep browsing (the retired items again, too): no list made after the retirement lists them
    more = []
    for n, user in enumerate(users):
        more += [Click(event_id=f"{user}-c{i}", user_id=user, ts=start + 60_000 + i * 5_000,
                       item_id=item, category=category) for i, item in enumerate([by_kafka, items[n + 4], by_http])]
    kafka.send_events(more)
    for user in users:
        lists = kafka.recommendations(user, lambda recs: any(r.source_ts >= start + 70_000 for r in recs))
        later = [r for r in lists if r.generated_at > applied_at]
        assert later and later[-1].source_ts >= start + 70_000
        for record in later:
            assert len(record.items) >= 10
            assert not {by_kafka, by_http} & {i.item_id for i in record.items}, (user, record)


def user_vector(model_dir: Path, state: dict) -> np.ndarray:
    """The worker's recall query for this profile: the user encoder on the profile it holds."""
    (version,) = [p for p in model_dir.iterdir() if (p / "meta.json").exists()]
    model = load_model_version(version, "cpu", 1_000_000)
    profile = UserProfile.from_dict(state)
    seq, weights, scene = build_inputs([profile.history(model.max_len)], [profile.scene], model.vectors,
                                       model.max_len)
    return model.encoder.encode(seq, weights, scene)[0]


def test_new_items_enter_recall(shop: tuple[Kafka, WorkerProcess], item_vectors: ItemVectors,
                                model_dir: Path) -> None:
    """A new item with its own vector is recalled for the user it suits (an ann candidate, so its
    reason names a viewed item); one with only a category sits at the category's centroid in the
    worker's Milvus collection, where a search finds it and never the retired items beside it.
    Stops the worker (milvus-lite admits one process per file): keep it the last test here."""
    kafka, worker = shop
    category, items = largest_category(item_vectors)
    tag = uuid.uuid4().hex[:8]
    user, by_vector, by_category, retired = f"cat-fan-{tag}", f"new-v-{tag}", f"new-c-{tag}", f"new-x-{tag}"
    start = now_ms() - 300_000
    kafka.send_events([Browse(event_id=f"{user}-b{i}", user_id=user, ts=start + i * 20_000, page="product",
                              item_id=item, category=category, dwell_ms=30_000) for i, item in enumerate(items[:8])])
    first = kafka.recommendations(user, lambda recs: any(r.source_ts >= start + 140_000 for r in recs))
    assert by_vector not in {i.item_id for r in first for i in r.items}
    state = worker.get(f"/users/{user}/state").json()["profile"]
    query = user_vector(model_dir, state)

    send_catalog(kafka, [CatalogItem(item_id=by_vector, category=category, price=5.0, available=True, ts=start,
                                     vector=[float(x) for x in query / np.linalg.norm(query)]),
                         CatalogItem(item_id=by_category, category=category, price=6.0, available=True, ts=start),
                         CatalogItem(item_id=retired, category=category, price=7.0, available=True, ts=start),
                         CatalogItem(item_id=retired, category=category, price=7.0, available=False, ts=start + 1)])
    wait_for(lambda: stored_item(worker, by_vector) and stored_item(worker, by_category)
             and (gone := stored_item(worker, retired)) and not gone.available)
    kafka.send_events([Browse(event_id=f"{user}-b8", user_id=user, ts=start + 200_000, page="product",
                              item_id=items[8], category=category, dwell_ms=30_000)])
    lists = kafka.recommendations(user, lambda recs: any(r.source_ts >= start + 200_000 for r in recs))
    found = [i for i in lists[-1].items if i.item_id == by_vector]
    assert found, lists[-1].items
    assert re.fullmatch(r"similar to item \S+ you viewed", found[0].reason), found[0].reason

    ready = worker.get("/readyz").json()
    worker.stop()
    settings = Settings(data_dir=worker.data_dir)
    suffix = re.sub(r"[^0-9A-Za-z_]", "_", ready["model_version"])
    recall = MilvusRecall(str(settings.milvus_lite_path), f"{settings.milvus_collection}_{suffix}", 32)
    try:
        centroid = item_vectors.centroids[category]
        hits = recall.search(np.asarray([centroid], np.float32), 10)[0]
        assert hits[0].item_id == by_category and hits[0].category == category, hits[:3]
        assert hits[0].score == pytest.approx(float(centroid @ centroid), abs=1e-4)
        assert retired not in {h.item_id for h in hits}  # the same vector, but retired
        own = recall.search(np.asarray([query / np.linalg.norm(query)], np.float32), 1)[0]
        assert own[0].item_id == by_vector
    finally:
        recall.close()
