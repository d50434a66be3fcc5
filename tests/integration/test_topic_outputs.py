"""reco.metrics and reco.lag read by a downstream consumer (docs/CONSUMING.md), checked against the
lists the worker published and against its own counters (/stats, /metrics).

An own broker and worker: every list and every event on the broker is this test's, so the feedback
windows can be recomputed exactly. All events carry event times in one past one-minute window W; a
last event two minutes later moves the watermark past W's end + grace, which closes W at once.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from app.serving.lag import CONSUMED
from app.tools.process import WorkerProcess
from models.feedback import ab_arm
from models.vectors import ItemVectors
from schemas import topics
from schemas.events import Browse, Click, OrderItem, Purchase, Recommendation
from schemas.validation import encode_event
from tests.integration.conftest import Kafka, private_pipeline, read_topic
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

WINDOW_MS, K, PARTITIONS = 60_000, 10, 2
_decode_rec = msgspec.json.Decoder(Recommendation).decode


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[tuple[Kafka, WorkerProcess]]:
    with private_pipeline(tmp_path_factory.mktemp("outputs"),
                          {"STREAMREC_MODEL_DIR": str(model_dir), "STREAMREC_VECTOR_DIM": "32"}) as running:
        yield running


def produce(kafka: Kafka, events: list, sent: dict[tuple[str, int], int]) -> None:
    """Produce events keyed by user; count what landed in each (topic, partition) for the lag check."""

    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
        await producer.start()
        try:
            for event in events:
                topic = topics.TOPIC_BY_TYPE[type(event).__name__.lower()]
                meta = await producer.send_and_wait(topic, encode_event(event), key=event.user_id.encode())
                sent[(topic, meta.partition)] = sent.get((topic, meta.partition), 0) + 1
        finally:
            await producer.stop()

    asyncio.run(go())


def all_lists(kafka: Kafka, n: int) -> list[Recommendation]:
    messages = kafka.read_until(topics.RECOMMENDATIONS, lambda ms: len(ms) >= n)
    return [_decode_rec(m.value) for m in messages]


def prometheus(worker: WorkerProcess) -> dict[str, list]:
    text = httpx.get(f"{worker.url}/metrics", timeout=10).text
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def lists_counted(worker: WorkerProcess) -> dict[str, float]:
    """streamrec_recommendations_total per scene: lists the feedback stage has taken in."""
    return {s.labels["scene"]: s.value for s in prometheus(worker).get("streamrec_recommendations", [])
            if s.name == "streamrec_recommendations_total"}


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def test_feedback_windows_and_scene_switches_match_the_published_lists(
        pipeline: tuple[Kafka, WorkerProcess], item_vectors: ItemVectors) -> None:
    kafka, worker = pipeline
    now = int(time.time() * 1000)
    w = (now - 600_000) - (now - 600_000) % WINDOW_MS
    users = [f"fb-{n}" for n in range(8)]
    items = list(item_vectors.ids)
    sent: dict[tuple[str, int], int] = {}

    # phase 1: one viewed item each, so each user gets exactly one list before interacting with it
    first_events = [Browse(event_id=f"{u}-b", user_id=u, ts=w + 1_000, page="product", item_id=items[n],
                           category=item_vectors.categories[items[n]]) for n, u in enumerate(users)]
    produce(kafka, first_events, sent)
    lists = all_lists(kafka, len(users))
    first = {r.user_id: r for r in lists}
    assert set(first) == set(users)
    wait_for(lambda: sum(lists_counted(worker).values()) == len(lists))  # the feedback stage holds them

    # phase 2: four users click an item of that list (rank 1..4), two buy its first item, two do nothing
    interactions: dict[str, tuple[str, int]] = {}  # user -> (kind, rank of the touched item in its list)
    second_events = []
    for n, user in enumerate(users[:4]):
        rank = n + 1
        item = first[user].items[rank - 1].item_id
        second_events.append(Click(event_id=f"{user}-c", user_id=user, ts=w + 20_000, item_id=item,
                                   rec_id=first[user].rec_id))
        interactions[user] = ("click", rank)
    for user in users[4:6]:
        item = first[user].items[0].item_id
        second_events.append(Purchase(event_id=f"{user}-p", user_id=user, ts=w + 22_000, order_id=f"o-{user}",
                                      items=[OrderItem(item_id=item)], rec_id=first[user].rec_id))
        interactions[user] = ("purchase", 1)
    produce(kafka, second_events, sent)
    lists = all_lists(kafka, len(users) + len(second_events))
    wait_for(lambda: sum(lists_counted(worker).values()) == len(lists))
    in_window = lists

    # phase 3: an event two minutes later closes W (watermark past W's end + grace)
    produce(kafka, [Browse(event_id="fb-closer-b", user_id="fb-closer", ts=w + 130_000, page="home")], sent)
    lists = all_lists(kafka, len(in_window) + 1)

    # expected window figures, recomputed from the published lists and our interactions
    expected: dict[tuple, dict] = defaultdict(lambda: {"lists": 0, "impressions": 0, "items": set(), "fresh": [],
                                                      "switches": 0, "clicks": 0, "conversions": 0,
                                                      "scored": 0, "hits": 0, "ndcg": 0.0})
    previous_scene: dict[str, str] = {}
    for record in sorted(in_window, key=lambda r: (r.user_id, r.version)):
        assert w <= record.source_ts < w + WINDOW_MS
        group = expected[(record.scene, record.model_version, ab_arm(record.user_id))]
        group["lists"] += 1
        group["impressions"] += len(record.items)
        group["items"].update(i.item_id for i in record.items)
        group["fresh"].append(float(record.generated_at - record.source_ts))
        if record.user_id in previous_scene and previous_scene[record.user_id] != record.scene:
            group["switches"] += 1
        previous_scene[record.user_id] = record.scene
    for user, (kind, rank) in interactions.items():
        group = expected[(first[user].scene, first[user].model_version, ab_arm(user))]
        group["clicks" if kind == "click" else "conversions"] += 1
        group["scored"] += 1
        group["hits"] += rank <= K
        group["ndcg"] += 1 / math.log2(rank + 1)
    assert sum(g["switches"] for g in expected.values()) == 2  # the two buyers: browsing -> post_purchase

    def closed() -> list[dict]:
        return [orjson.loads(m.value) for m in read_topic(kafka.bootstrap, topics.METRICS) if m.key == b"feedback"]

    records = wait_for(lambda: (got := [r for r in closed() if r["window_start"] == w])
                       and sum(r["lists"] for r in got) >= len(in_window) and got, timeout_s=90)
    by_group = {(r["scene"], r["model_version"], r["arm"]): r for r in records}
    assert set(by_group) == set(expected)
    for key, want in expected.items():
        got = by_group[key]
        assert got["window_end"] == w + WINDOW_MS and got["k"] == K and got["late_dropped_total"] == 0
        assert (got["lists"], got["impressions"], got["distinct_items"], got["scene_switches"]) == (
            want["lists"], want["impressions"], len(want["items"]), want["switches"]), key
        assert (got["clicks"], got["conversions"], got["scored"]) == (want["clicks"], want["conversions"],
                                                                      want["scored"]), key
        assert got["ctr"] == pytest.approx(want["clicks"] / want["lists"])
        assert got["conversion_rate"] == pytest.approx(want["conversions"] / want["lists"])
        if want["scored"]:
            assert got["hit_rate"] == pytest.approx(want["hits"] / want["scored"])
            assert got["ndcg"] == pytest.approx(want["ndcg"] / want["scored"])
        else:
            assert got["hit_rate"] is None and got["ndcg"] is None
        assert got["coverage"] == pytest.approx(len(want["items"]) / len(item_vectors.ids))
        assert got["freshness_p50_ms"] == nearest_rank(want["fresh"], 50)
        assert got["freshness_p99_ms"] == nearest_rank(want["fresh"], 99)

    # the worker's own counters say the same
    stats = worker.stats()
    n_events = len(first_events) + len(second_events) + 1
    assert stats["ingest.consumed"] == stats["profile.accepted"] == n_events
    assert stats["refresh.published"] == len(lists)
    per_scene: dict[str, int] = defaultdict(int)
    for record in lists:
        per_scene[record.scene] += 1
    wait_for(lambda: lists_counted(worker) == per_scene)
    families = prometheus(worker)
    ctr = {(s.labels["scene"], s.labels["model_version"]): s.value for s in families["streamrec_ctr"]}
    conversion = {(s.labels["scene"], s.labels["model_version"]): s.value for s in families["streamrec_conversion_rate"]}
    for scene, model_version in {(k[0], k[1]) for k in expected}:
        groups = [g for k, g in expected.items() if k[:2] == (scene, model_version)]
        total = sum(g["lists"] for g in groups)
        assert ctr[(scene, model_version)] == pytest.approx(sum(g["clicks"] for g in groups) / total)
        assert conversion[(scene, model_version)] == pytest.approx(sum(g["conversions"] for g in groups) / total)
    events_total = {(s.labels["topic"], s.labels["result"]): s.value for s in families["streamrec_events"]
                    if s.name == "streamrec_events_total"}
    assert events_total[("ecom.input", "consumed")] == n_events
    assert events_total[(topics.REFRESH, "published")] == len(lists)

    # every scene switch is an event on reco.metrics, and each user's chain ends in the scene it is in
    switches = [orjson.loads(m.value) for m in read_topic(kafka.bootstrap, topics.METRICS)
                if m.key == b"scene_switch"]
    by_user: dict[str, list[dict]] = defaultdict(list)
    for switch in switches:
        assert switch["metric"] == "scene_switch"
        by_user[switch["user_id"]].append(switch)
    assert set(by_user) == {users[4], users[5]}, switches
    for user, chain in by_user.items():
        assert [(s["from_scene"], s["to_scene"]) for s in chain] == [("browsing", "post_purchase")]
        assert chain[0]["ts"] == w + 22_000
        latest = max((r for r in lists if r.user_id == user), key=lambda r: r.version)
        assert latest.scene == "post_purchase"
        assert worker.get(f"/users/{user}/state").json()["profile"]["scene"] == "post_purchase"


def test_lag_samples_cover_every_partition_and_match_prometheus(pipeline: tuple[Kafka, WorkerProcess]) -> None:
    """Per group/topic/partition: once the worker has drained, the newest reco.lag sample has
    committed == highwater == one past the partition's last offset, and equals the /metrics gauges."""
    kafka, worker = pipeline
    sent: dict[tuple[str, int], int] = {}
    produce(kafka, [Browse(event_id=f"lag-{n}", user_id=f"lag-user-{n}", ts=int(time.time() * 1000),
                           page="home") for n in range(12)], sent)
    assert len({p for _, p in sent}) == PARTITIONS  # both partitions of ecom.browse got events

    expected_keys = {f"streamrec/{t}/{p}" for t in CONSUMED for p in range(PARTITIONS)}

    def newest() -> dict[str, dict]:
        latest: dict[str, dict] = {}
        for message in read_topic(kafka.bootstrap, topics.LAG):
            record = orjson.loads(message.value)
            key = message.key.decode()
            assert key == f"{record['group']}/{record['topic']}/{record['partition']}"
            if key not in latest or record["sampled_at"] >= latest[key]["sampled_at"]:
                latest[key] = record
        return latest

    def ends() -> dict[tuple[str, int], int]:
        """Each consumed partition's end: one past its last offset (what a drained group has committed)."""
        out = {(t, p): 0 for t in CONSUMED for p in range(PARTITIONS)}
        for topic in CONSUMED:
            for message in read_topic(kafka.bootstrap, topic):
                out[(topic, message.partition)] = message.offset + 1
        return out

    def drained() -> tuple[dict[str, dict], dict] | None:
        latest, end = newest(), ends()
        if set(latest) != expected_keys:
            return None
        done = all(r["lag"] == 0 and r["highwater"] == end[(r["topic"], r["partition"])] for r in latest.values())
        return (latest, end) if done else None

    latest, end = wait_for(drained, timeout_s=90)
    for record in latest.values():  # a partition that never held a message has no commit yet
        assert record["committed"] == record["highwater"] or (record["committed"], record["highwater"]) == (None, 0)
        assert record["age_s"] == 0.0 and record["oldest_ts"] is None
    assert all(end[(t, p)] > 0 for t in (topics.BROWSE, topics.EVENTS, topics.REFRESH)
               for p in range(PARTITIONS))  # the samples above were of partitions with traffic
    assert topics.RECOMMENDATIONS not in {r["topic"] for r in latest.values()}  # published, not read back

    def gauges_agree() -> bool:
        families = prometheus(worker)
        lag = {(s.labels["topic"], int(s.labels["partition"])): s.value
               for s in families["kafka_consumergroup_lag"] if s.labels["group"] == "streamrec"}
        committed = {(s.labels["topic"], int(s.labels["partition"])): s.value
                     for s in families["kafka_consumergroup_current_offset"] if s.labels["group"] == "streamrec"}
        highwater = {(s.labels["topic"], int(s.labels["partition"])): s.value
                     for s in families["kafka_topic_partition_current_offset"]}
        current = newest()
        return all(lag.get((r["topic"], r["partition"])) == r["lag"]
                   and committed.get((r["topic"], r["partition"])) == r["committed"]
                   and highwater.get((r["topic"], r["partition"])) == r["highwater"] for r in current.values()) \
            and set(current) == expected_keys

    wait_for(gauges_agree, timeout_s=30)
