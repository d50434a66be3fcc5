"""`streamrec train`, `replay`, `recs`, `tail` and `topics` run as a user runs them: the installed
console script in a subprocess, with --bootstrap or STREAMREC_* variables, on the real broker, the
session worker and real files; their output is checked, not only their exit code."""

from __future__ import annotations

import ast
import asyncio
import collections
import json
import os
import subprocess
import sys
import time
import uuid
from itertools import islice
from pathlib import Path

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from app.runtime.broker import EmbeddedBroker
from app.runtime.kafka import topic_specs
from app.runtime.settings import Settings, default_dataset
from app.store.sqlite import SqliteStore
from app.tools.process import WorkerProcess
from app.tools.replay import read_events
from models.encoder import load_model_version
from schemas import topics
from schemas.events import Browse, Click, OrderItem, Purchase, UserEvent
from schemas.validation import encode_event
from tests.integration.conftest import Kafka, read_topic
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STREAMREC = str(Path(sys.executable).with_name("streamrec"))


def streamrec(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run the console script; the caller's STREAMREC_* settings are dropped so only `env` counts."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    return subprocess.run([STREAMREC, *args], env={**clean, "COLUMNS": "200", **(env or {})}, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def write_jsonl(path: Path, events: list) -> Path:
    path.write_bytes(b"".join(encode_event(e) + b"\n" for e in events))
    return path


def test_topics_creates_every_topic_on_a_fresh_broker(tmp_path: Path) -> None:
    expected = {spec.name for spec in topic_specs(Settings())}
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as fresh:
        for _ in range(2):  # creates them, then finds them
            run = streamrec("topics", "--bootstrap", fresh.bootstrap)
            assert run.returncode == 0, run.stderr
            listed = dict(line.split() for line in run.stdout.splitlines())
            assert listed == {name: "partitions=2" for name in expected}

        async def described() -> dict[str, int]:
            admin = AIOKafkaAdminClient(bootstrap_servers=fresh.bootstrap)
            await admin.start()
            try:
                return {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics(sorted(expected))}
            finally:
                await admin.close()

        assert asyncio.run(described()) == dict.fromkeys(expected, 2)


def test_replay_a_file_then_recs_shows_the_stored_list(tmp_path: Path, worker: WorkerProcess, kafka: Kafka) -> None:
    tag = uuid.uuid4().hex[:6]
    users = [f"cli-{tag}-{n}" for n in range(3)]
    start = int(time.time() * 1000) - 60_000
    events: list[UserEvent] = []
    for n, user in enumerate(users):
        events += [Browse(event_id=f"{user}-b{i}", user_id=user, ts=start + i * 1_000, page="product",
                          item_id=f"i{n * 10 + i}", category="c1") for i in range(3)]
        events.append(Click(event_id=f"{user}-c", user_id=user, ts=start + 5_000, item_id=f"i{n * 10}",
                            action="add_to_cart"))
    events.append(Purchase(event_id=f"{users[0]}-p", user_id=users[0], ts=start + 9_000, order_id=f"o-{tag}",
                           items=[OrderItem(item_id="i0", quantity=1)]))
    before = worker.stats().get("profile.accepted", 0)
    run = streamrec("replay", str(write_jsonl(tmp_path / "events.jsonl", events)), "--bootstrap", kafka.bootstrap)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"sent {len(events)} events in ")
    assert ast.literal_eval(run.stdout.rstrip().split(": ", 1)[1]) == {"browse": 9, "click": 3, "purchase": 1}
    wait_for(lambda: worker.stats().get("profile.accepted", 0) - before >= len(events))

    store_path = worker.data_dir / "streamrec.db"

    async def stored(user: str):
        store = await SqliteStore.open(store_path, 0)
        try:
            return await store.latest_recommendation(user)
        finally:
            await store.close()

    def final_list(user: str):
        """The stored list that reflects the user's newest event (no later one can come)."""
        state = worker.get(f"/users/{user}/state").json()
        rec, profile = state.get("recstate") or {}, state.get("profile") or {}
        if not rec or rec["source_ts"] != profile.get("clock_ms"):
            return None
        record = asyncio.run(stored(user))
        return record if record is not None and record.version == rec["version"] else None

    scenes = {}
    for user in users:
        latest = wait_for(lambda u=user: final_list(u))
        scenes[user] = latest.scene
        run = streamrec("recs", user, env={"STREAMREC_SQLITE_PATH": str(store_path)})
        assert run.returncode == 0, run.stderr
        lines = run.stdout.splitlines()
        top = next(n for n, line in enumerate(lines) if line.lstrip().startswith(("┏", "┌")))
        title, rows = " ".join(" ".join(lines[:top]).split()), lines[top:]  # rich wraps a long title
        assert title == f"user {user} · scene {latest.scene} · v{latest.version} · {latest.model_version}"
        shown = [row.split("│")[1:5] for row in rows if row.count("│") >= 5 and row.split("│")[1].strip().isdigit()]
        assert [(int(r[0]), r[1].strip(), r[3].strip()) for r in shown] == [
            (rank, item.item_id, item.reason) for rank, item in enumerate(latest.items[:10], 1)]
        assert [float(r[2]) for r in shown] == pytest.approx([i.score for i in latest.items[:10]], abs=5e-4)
    assert scenes[users[0]] == "post_purchase"  # the one with an order
    unknown = streamrec("recs", f"nobody-{tag}", env={"STREAMREC_SQLITE_PATH": str(store_path)})
    assert unknown.returncode == 1 and f"no recommendations for user 'nobody-{tag}'" in unknown.stderr


def test_tail_prints_messages_as_json_lines(worker: WorkerProcess, kafka: Kafka) -> None:
    kafka.send_events([Browse(event_id=f"tail-{uuid.uuid4().hex}", user_id="tail-user", ts=int(time.time() * 1000),
                              page="home")])
    kafka.recommendations("tail-user", lambda recs: bool(recs))
    on_broker = {(m.partition, m.offset): m for m in read_topic(kafka.bootstrap, topics.RECOMMENDATIONS)}
    limit = min(5, len(on_broker))
    run = streamrec("tail", topics.RECOMMENDATIONS, "--from-beginning", "--limit", str(limit),
                    "--bootstrap", kafka.bootstrap, timeout=60)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == limit
    for line in lines:
        printed = json.loads(line)
        message = on_broker[(printed["partition"], printed["offset"])]
        assert printed["key"] == message.key.decode() and printed["value"] == orjson.loads(message.value)

    # without --from-beginning it prints only what arrives after it started
    live = subprocess.Popen([STREAMREC, "tail", topics.CLICK, "--limit", "1", "--bootstrap", kafka.bootstrap],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")})
    sent: set[str] = set()
    deadline = time.monotonic() + 90
    try:
        while live.poll() is None and time.monotonic() < deadline:
            event = Click(event_id=f"tail-live-{uuid.uuid4().hex}", user_id="tail-live", ts=int(time.time() * 1000),
                          item_id="i1")
            sent.add(event.event_id)
            kafka.send_events([event])
            time.sleep(1.0)
        out, err = live.communicate(timeout=30)
    finally:
        live.kill()
    assert live.returncode == 0, err
    (line,) = out.splitlines()
    printed = json.loads(line)
    assert printed["value"]["event_id"] in sent and printed["key"] == "tail-live"


def test_train_writes_a_version_from_the_earliest_share(tmp_path: Path) -> None:
    """--train-fraction 0.5 on a file whose two halves view disjoint items: only the first half's
    items (each seen at least twice) get vectors."""
    t0 = int(time.time() * 1000) - 10 * 86_400_000
    events: list[UserEvent] = []
    for u in range(60):
        for half, prefix in enumerate(("early", "late")):
            base = t0 + half * 5 * 86_400_000 + u * 60_000
            events += [Browse(event_id=f"t{u}-{prefix}{i}", user_id=f"t{u}", ts=base + i * 1_000, page="product",
                              item_id=f"{prefix}{(u + i) % 30}", category=f"{prefix}-cat{(u + i) % 3}")
                       for i in range(5)]
    models = tmp_path / "models"
    env = {"STREAMREC_MODEL_DIR": str(models), "STREAMREC_VECTOR_DIM": "16"}
    run = streamrec("train", "--data", str(write_jsonl(tmp_path / "history.jsonl", events)), "--train-fraction", "0.5",
                    env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    (version,) = [p for p in models.iterdir() if not p.name.startswith(".")]
    assert run.stdout.strip() == f"model version {version.name} written to {version}"
    model = load_model_version(version, "cpu")
    assert model.version == version.name and model.dim == 16
    assert set(model.vectors.ids) == {f"early{i}" for i in range(30)}
    assert {model.vectors.categories[i] for i in model.vectors.ids} == {f"early-cat{c}" for c in range(3)}


@pytest.mark.skipif(not default_dataset().with_name("events_user_sample.csv.gz").exists(),
                    reason="the shared Taobao data set is not beside this checkout (a fresh clone)")
def test_replay_the_taobao_file(worker: WorkerProcess, kafka: Kafka) -> None:
    data = default_dataset().with_name("events_user_sample.csv.gz")
    expected = collections.Counter(type(e).__name__.lower() for e in islice(read_events(data), 300))
    before = worker.stats()
    run = streamrec("replay", str(data), "--events", "300", "--bootstrap", kafka.bootstrap)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("sent 300 events in ")
    assert ast.literal_eval(run.stdout.rstrip().split(": ", 1)[1]) == dict(expected)
    wait_for(lambda: worker.stats()["ingest.consumed"] - before.get("ingest.consumed", 0) >= 300, timeout_s=120)
    last_user = list(islice(read_events(data), 300))[-1].user_id
    kafka.recommendations(last_user, lambda recs: bool(recs))
