"""The serving API against the session's real worker: lists from the store, 404/400, a batch with a rejection."""

from __future__ import annotations

import time
import uuid

import httpx

from app.tools.process import WorkerProcess
from tests.integration.conftest import Kafka
from tests.waiting import wait_for


def test_recommendations_404_and_malformed_ids(worker: WorkerProcess) -> None:
    missing = httpx.get(f"{worker.url}/users/nobody-{uuid.uuid4().hex}/recommendations")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found" and "no recommendations" in missing.json()["detail"]
    for bad in ("%20padded", "a%09b", "x" * 300):
        response = httpx.get(f"{worker.url}/users/{bad}/recommendations")
        assert response.status_code == 400, bad
        assert response.json()["error"] == "invalid_user_id"


def test_post_events_batch_with_a_rejected_event(worker: WorkerProcess, kafka: Kafka) -> None:
    user = f"api-{uuid.uuid4().hex[:8]}"
    now = int(time.time() * 1000)
    good = {"type": "click", "event_id": f"{user}-1", "user_id": user, "ts": now, "item_id": "i7",
            "action": "add_to_cart"}
    batch = [good,
             {"type": "browse", "event_id": f"{user}-2", "user_id": user, "ts": now + 1, "page": "nowhere"},
             {"type": "purchase", "event_id": f"{user}-3", "user_id": user, "ts": now + 2, "order_id": "o1",
              "items": [{"item_id": "i7", "quantity": 1}]},
             {"type": "click", "user_id": user, "ts": now}]
    response = httpx.post(f"{worker.url}/events", json=batch, timeout=30)
    assert response.status_code == 200
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (2, 2)
    statuses = [(r["index"], r["status"], r.get("reason")) for r in body["results"]]
    assert statuses == [(0, "accepted", None), (1, "rejected", "invalid_value"), (2, "accepted", None),
                        (3, "rejected", "missing_field")]
    # the accepted ones went through the stream: the user gets a list, readable from the API
    rec = wait_for(lambda: (r := httpx.get(f"{worker.url}/users/{user}/recommendations")).status_code == 200
                   and r.json(), timeout_s=90)
    assert rec["user_id"] == user and rec["items"]
    # posting the same batch again is deduplicated downstream by event_id
    before = worker.stats().get("profile.duplicates", 0)
    assert httpx.post(f"{worker.url}/events", json=batch[:1], timeout=30).json()["accepted"] == 1
    wait_for(lambda: worker.stats().get("profile.duplicates", 0) >= before + 1, timeout_s=60)
    messages = kafka.read_until("ecom.click", lambda ms: any(m.key == user.encode() for m in ms), key=user.encode())
    assert len(messages) == 2  # the click, twice on the topic; counted once by the profile


def test_post_events_bad_bodies(worker: WorkerProcess) -> None:
    assert httpx.post(f"{worker.url}/events", content=b"{not json").status_code == 400
    assert httpx.post(f"{worker.url}/events", json={"events": []}).json()["error"] == "invalid_body"
    too_big = httpx.post(f"{worker.url}/events", content=b"[" + b" " * 1_100_000 + b"]")
    assert too_big.status_code == 413


def test_openapi_and_health(worker: WorkerProcess) -> None:
    spec = httpx.get(f"{worker.url}/openapi.json").json()
    assert spec["openapi"].startswith("3.") and {"/users/{user_id}/recommendations", "/events"} <= set(spec["paths"])
    assert httpx.get(f"{worker.url}/healthz").status_code == 200
    assert httpx.get(f"{worker.url}/readyz").json()["ready"] is True
    # the lag sampler runs every few seconds: wait for its first sample
    def scraped_with_lag() -> str | None:
        text = httpx.get(f"{worker.url}/metrics").text
        return text if 'kafka_consumergroup_lag{group="streamrec"' in text else None

    metrics = str(wait_for(scraped_with_lag, timeout_s=60))
    assert "# TYPE streamrec_events_total counter" in metrics
    assert "# TYPE streamrec_processing_seconds histogram" in metrics


def test_streamrec_serve_alone_reads_the_same_store(worker: WorkerProcess, kafka: Kafka) -> None:
    """`streamrec serve` (no agents) on the worker's store and broker answers like the worker."""
    import subprocess
    import sys
    from pathlib import Path

    from app.runtime.broker import free_port

    user = f"serve-{uuid.uuid4().hex[:8]}"
    now = int(time.time() * 1000)
    assert httpx.post(f"{worker.url}/events", json=[{"type": "browse", "event_id": f"{user}-1", "user_id": user,
                                                     "ts": now, "page": "product", "item_id": "i3"}]).json()["accepted"] == 1
    wait_for(lambda: httpx.get(f"{worker.url}/users/{user}/recommendations").status_code == 200, timeout_s=90)
    port = free_port()
    env = {**worker.env, "STREAMREC_WEB_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--bootstrap", kafka.bootstrap], env=env,
                            cwd=Path(__file__).resolve().parents[2], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout_s=60)
        from_worker = httpx.get(f"{worker.url}/users/{user}/recommendations").json()
        served = httpx.get(f"{url}/users/{user}/recommendations").json()
        assert served["user_id"] == user and served["items"]
        assert served["version"] >= from_worker["version"]  # same store (a newer list may land in between)
        assert httpx.get(f"{url}/users/nobody-{user}/recommendations").status_code == 404
        assert httpx.get(f"{url}/openapi.json").json()["info"]["title"] == "StreamRec serving API"
        reply = httpx.post(f"{url}/events", json=[{"type": "click", "user_id": user}]).json()
        assert reply["rejected"] == 1 and reply["results"][0]["reason"] == "missing_field"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
