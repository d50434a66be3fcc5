"""docs/CONSUMING.md's example consumer, run as a downstream app would, against the session's worker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

from app.tools.process import WorkerProcess
from schemas.events import Browse, Click
from tests.integration.conftest import Kafka

ROOT = Path(__file__).resolve().parents[2]


def test_example_consumer_keeps_each_users_latest_list(worker: WorkerProcess, kafka: Kafka) -> None:
    user = f"consumer-{uuid.uuid4().hex[:8]}"
    now = int(time.time() * 1000)
    kafka.send_events([Browse(event_id=f"{user}-1", user_id=user, ts=now, page="product", item_id="i1")])
    first = kafka.recommendations(user, lambda recs: len(recs) >= 1)
    kafka.send_events([Click(event_id=f"{user}-2", user_id=user, ts=now + 1_000, item_id="i2")])
    lists = kafka.recommendations(user, lambda recs: len(recs) >= 2)
    newest = max(lists, key=lambda r: r.version)
    assert newest.version > first[0].version

    run = subprocess.run([sys.executable, "examples/consumer.py", "--bootstrap", kafka.bootstrap, "--idle-exit", "3",
                          "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    latest = json.loads(run.stdout)
    assert latest[user]["version"] >= newest.version and latest[user]["rec_id"]
    assert latest[user]["items"] and all(item["reason"] for item in latest[user]["items"])
    readable = subprocess.run([sys.executable, "examples/consumer.py", "--bootstrap", kafka.bootstrap,
                               "--idle-exit", "3"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    assert any(line.startswith(f"{user} v") for line in readable.stdout.splitlines())
