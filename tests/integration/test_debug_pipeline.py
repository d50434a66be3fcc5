"""`GET /debug/pipeline` on a real worker: what an operator (or a stuck test) reads to see why lag stalls."""

from __future__ import annotations

import time

import pytest

from schemas.events import Click
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def test_pipeline_state_shows_committed_offsets_queues_agents_and_tasks(worker, kafka) -> None:
    def committed_clicks() -> int:
        state = worker.get("/debug/pipeline").json()
        return sum(p["committed"] or 0 for name, p in state["partitions"].items() if name.startswith("ecom.click/"))

    before = committed_clicks()
    user = "it-debug-pipeline"
    now = int(time.time() * 1000)
    kafka.send_events([Click(event_id=f"{user}-{i}", user_id=user, ts=now + i, item_id=f"item-{i}", category="c1")
                       for i in range(5)])
    kafka.recommendations(user, lambda recs: bool(recs))
    wait_for(lambda: committed_clicks() > before)  # the snapshot follows the commits
    state = worker.get("/debug/pipeline").json()
    assert state["rebalancing"] is False and state["flow_active"] is True
    assert state["fetch_rounds"] > 0 and state["repairs"] == 0
    click = [p for name, p in state["partitions"].items() if name.startswith("ecom.click/")]
    assert len(click) == 2 and not any(p["paused"] for p in click)
    ingest_queue = next(c for c in state["channels"] if "ecom.click" in c["topics"])
    assert ingest_queue["topics"] == ["ecom.browse", "ecom.click", "ecom.purchase"]
    assert 0 <= ingest_queue["queued"] <= ingest_queue["maxsize"]
    assert {"ingest", "profile", "refresh"} <= set(state["agents"])
    assert all(actor["task"] == "running" for actors in state["agents"].values() for actor in actors)
    assert any("_fetcher" in chain for chain in state["tasks"])  # the fetch loop, suspended where it waits
