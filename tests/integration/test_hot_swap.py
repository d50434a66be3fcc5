"""A model version trained while events flow is picked up by the running worker: lists switch to it
without a restart and without a gap, stamped with its model_version (`watch_models` / `Services`).

An own broker and worker with an own model folder: the session's folder must keep one version.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import threading
import time
from collections import defaultdict
from pathlib import Path

import msgspec
import pytest
from aiokafka import AIOKafkaProducer

from app.tools.simulator import simulate
from app.tools.training import train_model
from models.recommender import FALLBACK_NOTE
from models.vectors import ItemVectors
from schemas import topics
from schemas.events import Browse, CatalogItem, Recommendation
from schemas.validation import encode_event
from tests.integration.conftest import private_pipeline, read_topic
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

USERS = [f"swap-{n}" for n in range(8)]
MAX_GAP_MS = 20_000  # a user sends an event every ~1 s: a longer silence would be a hole in the lists
_decode_rec = msgspec.json.Decoder(Recommendation).decode


class Traffic(threading.Thread):
    """Each user views an item about once a second (event time = send time) until stopped."""

    def __init__(self, bootstrap: str, item_vectors: ItemVectors) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.items = bootstrap, list(item_vectors.ids)
        self.categories = item_vectors.categories
        self.sent: dict[str, list[int]] = defaultdict(list)  # user -> ts of each event sent
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._go())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    async def _go(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            n = 0
            while not self.halt.is_set():
                for u, user in enumerate(USERS):
                    ts = max(int(time.time() * 1000), (self.sent[user] or [0])[-1] + 1)
                    item = self.items[(7 * n + 31 * u) % len(self.items)]
                    event = Browse(event_id=f"{user}-{n}", user_id=user, ts=ts, page="product", item_id=item,
                                   category=self.categories[item], dwell_ms=20_000)
                    await producer.send_and_wait(topics.BROWSE, encode_event(event), key=user.encode())
                    self.sent[user].append(ts)
                n += 1
                await asyncio.sleep(1.0)
        finally:
            await producer.stop()


def lists_by_user(bootstrap: str) -> dict[str, list[Recommendation]]:
    """Each user's lists in publish order (one key, one partition, offset order)."""
    out: dict[str, list[Recommendation]] = defaultdict(list)
    for message in read_topic(bootstrap, topics.RECOMMENDATIONS):
        record = _decode_rec(message.value)
        out[record.user_id].append(record)
    return out


def test_a_new_model_version_serves_without_restart_or_gap(tmp_path: Path, model_dir: Path,
                                                            item_vectors: ItemVectors) -> None:
    models = tmp_path / "models"
    (first,) = [p for p in model_dir.iterdir() if (p / "meta.json").exists()]
    shutil.copytree(first, models / first.name)
    with private_pipeline(tmp_path, {"STREAMREC_MODEL_DIR": str(models), "STREAMREC_VECTOR_DIM": "32"}) as (
            kafka, worker):
        assert worker.get("/readyz").json()["model_version"] == first.name
        assert worker.proc is not None
        pid = worker.proc.pid
        traffic = Traffic(kafka.bootstrap, item_vectors)
        traffic.start()
        try:
            wait_for(lambda: len(got := lists_by_user(kafka.bootstrap)) == len(USERS)
                     and all(len(user_lists) >= 2 for user_lists in got.values()), timeout_s=90)
            history = [e for e in simulate(n_users=200, n_items=600, n_categories=12, n_events=8_000, seed=11,
                                           start_ts_ms=int(time.time() * 1000) - 86_400_000)
                       if not isinstance(e, CatalogItem)]
            second = train_model(history, models, dim=32, seed=1).name  # while the traffic flows
            assert second != first.name

            def on_second(lists: dict[str, list[Recommendation]]) -> bool:
                return len(lists) == len(USERS) and all(
                    sum(r.model_version == second for r in user_lists) >= 2 for user_lists in lists.values())

            wait_for(lambda: on_second(lists_by_user(kafka.bootstrap)), timeout_s=120)
        finally:
            traffic.halt.set()
            traffic.join(timeout=30)
        assert traffic.error is None, traffic.error
        last_sent = {user: stamps[-1] for user, stamps in traffic.sent.items()}
        lists = wait_for(lambda: (got := lists_by_user(kafka.bootstrap)) and all(
            got[u] and got[u][-1].source_ts == last_sent[u] for u in USERS) and got, timeout_s=90)

        assert worker.proc.pid == pid and worker.proc.poll() is None  # the same process throughout
        assert worker.get("/readyz").json()["model_version"] == second
        stats = worker.stats()
        assert stats.get("refresh.fallback", 0) == 0
        for user in USERS:
            own = lists[user]
            versions = [r.version for r in own]
            assert versions == sorted(set(versions)), (user, versions)  # strictly increasing
            served = [r.model_version for r in own]
            switch = served.index(second)
            assert set(served[:switch]) == {first.name} and set(served[switch:]) == {second}, (user, served)
            gaps = [b.generated_at - a.generated_at for a, b in itertools.pairwise(own)]
            assert max(gaps) <= MAX_GAP_MS, (user, gaps)
            assert own[switch].generated_at - own[switch - 1].generated_at <= MAX_GAP_MS
            for record in own:
                assert len(record.items) >= 10 and not any(FALLBACK_NOTE in i.reason for i in record.items)
        problems = worker.log_problems()
        assert "Traceback" not in worker.log_path.read_text(errors="replace"), problems
