"""The scheduled retrain in the running system (issue 21, item 4): `streamrec trainer` reads the input
topics of a real broker, trains a version on the recent valid events, and a running worker swaps to it
without a restart; old versions are pruned, never one an experiment names."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.tools.simulator import simulate
from models.vectors import ItemVectors
from schemas import topics
from schemas.events import Browse, CatalogItem
from tests.integration.conftest import private_pipeline
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000


def trainer(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "app.cli", "trainer", "--once"], capture_output=True, text=True,
                          check=False, env={**os.environ, **env}, timeout=300)
    assert done.returncode == 0, (done.stdout, done.stderr)
    return done


def versions(model_dir: Path) -> list[str]:
    return sorted(m.parent.name for m in model_dir.glob("*/meta.json"))


def test_the_trainer_writes_a_version_from_the_topics_and_the_worker_swaps_to_it(tmp_path: Path) -> None:
    models = tmp_path / "models"
    env = {"STREAMREC_MODEL_DIR": str(models), "STREAMREC_VECTOR_DIM": "16"}
    with private_pipeline(tmp_path, env) as (kafka, worker):
        assert worker.get("/readyz").json()["model_version"] == "popularity-only"
        now = int(time.time() * 1000)
        recent = [e for e in simulate(n_users=80, n_items=120, n_categories=6, n_events=3000, seed=5,
                                      start_ts_ms=now - 20 * HOUR_MS) if not isinstance(e, CatalogItem)]
        # three days older than the rest, items of their own: outside a 24 h window
        old = [Browse(event_id=f"old-{i}", user_id=f"old-u{i % 5}", ts=now - 72 * HOUR_MS + i * 1000, page="product",
                      item_id=f"old-item{i % 10}", category="old") for i in range(200)]
        kafka.send_events(old + recent)
        kafka.send([(topics.CLICK, b"u-bad", b'{"not": "a click"}')])  # dead-lettered by ingest, ignored here
        trainer_env = {**env, "STREAMREC_KAFKA_BOOTSTRAP": kafka.bootstrap, "STREAMREC_RETRAIN_HISTORY_S": "86400",
                       "STREAMREC_RETRAIN_MIN_EVENTS": "500"}
        done = trainer(trainer_env)
        (first,) = versions(models)
        assert f"{len(recent)} events kept (1 invalid, 200 before the window)" in done.stderr, done.stderr
        vectors = ItemVectors.load(models / first / "vectors")
        trained_items = set(vectors.ids)
        seen_twice = {i for i in {e.item_id for e in recent if isinstance(e, Browse) and e.item_id}
                      if sum(1 for e in recent if getattr(e, "item_id", None) == i) >= 2}
        assert trained_items and not any(item.startswith("old-") for item in trained_items)
        assert len(trained_items & seen_twice) >= 0.9 * len(seen_twice)

        # the running worker swaps to it, and the next list is served by it
        wait_for(lambda: worker.get("/readyz").json()["model_version"] == first, timeout_s=60)
        kafka.send_events([Browse(event_id="after-swap", user_id="swap-user", ts=int(time.time() * 1000),
                                  page="product", item_id=next(iter(seen_twice)), category=None)])
        assert kafka.recommendations("swap-user", lambda recs: bool(recs))[-1].model_version == first

        # too few events for the threshold: no version, exit 0 (the schedule goes on)
        trainer({**trainer_env, "STREAMREC_RETRAIN_MIN_EVENTS": "1000000"})
        assert versions(models) == [first]

        # a second round with keep=1 writes a new version and removes the first
        trainer({**trainer_env, "STREAMREC_RETRAIN_KEEP": "1"})
        (second,) = versions(models)
        assert second != first
        wait_for(lambda: worker.get("/readyz").json()["model_version"] == second, timeout_s=60)

