"""The feedback stage fed from the profile and refresh agents' batches (app/runtime/feedback.py, issue 18).

A plain dict stands in for the `feedback` table, and small objects for Faust's events: the stage only
reads a message's Kafka timestamp and makes the event current for the table write.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from prometheus_client import REGISTRY

from agents import catalog, feedback, ingest, profile, refresh
from app.runtime.faust_app import build_runtime
from app.runtime.feedback import FeedbackStage
from app.runtime.settings import Settings
from models.feedback import FeedbackParams, UserFeedback
from schemas import topics
from schemas.events import Browse, Click, OrderItem, Purchase, RecItem, Recommendation

MIN = 60_000
T0 = 10 * MIN


@dataclass
class Message:
    timestamp: float = field(default_factory=time.time)
    partition: int = 0


@dataclass
class Event:
    """What the stage reads of a Faust event (weak-referenceable, as `in_partition_of` needs)."""

    message: Message = field(default_factory=Message)


class CountingTable(dict[bytes, bytes]):
    """Counts reads and writes per key: the stage must do one of each per user per call."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: dict[bytes, int] = {}
        self.writes: dict[bytes, int] = {}

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:  # type: ignore[override]
        self.reads[key] = self.reads.get(key, 0) + 1
        return super().get(key, default)

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.writes[key] = self.writes.get(key, 0) + 1
        super().__setitem__(key, value)


def rec(rec_id: str, user: str, source_ts: int, items: list[str], scene: str = "browsing") -> Recommendation:
    return Recommendation(rec_id=rec_id, user_id=user, version=1, generated_at=source_ts + 250,
                          source_ts=source_ts, scene=scene, model_version="m1",  # type: ignore[arg-type]
                          items=[RecItem(item_id=i, score=1.0, reason="r") for i in items])


def delivered(*records: object) -> list[tuple]:
    return [(record, Event()) for record in records]


@pytest.fixture()
def stage() -> Iterator[FeedbackStage]:
    yield FeedbackStage(CountingTable(), FeedbackParams(window_ms=MIN, grace_ms=10_000, k=3, ab_split=1.0),
                        category_of=lambda item: item[:1], catalog_size=lambda: 10, accuracy=lambda: 0.75)


def lists_counted(scene: str) -> float:
    return REGISTRY.get_sample_value("streamrec_recommendations_total", {"scene": scene}) or 0.0


def test_lists_then_events_attribute_score_and_close_one_window(stage: FeedbackStage) -> None:
    before = lists_counted("browsing")
    new = stage.on_lists([(rec("r1", "u1", T0 + 1_000, ["a1", "a2", "b1"]), Event()),
                          (rec("r2", "u2", T0 + 2_000, ["b1", "c1"]), Event())])
    assert [r.rec_id for r in new] == ["r1", "r2"]
    assert lists_counted("browsing") == before and not stage.fresh  # counted once Kafka has them
    stage.published(new)
    stage.on_events("u1", delivered(Click(event_id="e1", user_id="u1", ts=T0 + 3_000, item_id="a2", rec_id="r1"),
                                    Purchase(event_id="e2", user_id="u1", ts=T0 + 4_000, order_id="o1",
                                             items=[OrderItem(item_id="a2")])))
    stage.on_events("u2", delivered(Browse(event_id="e3", user_id="u2", ts=T0 + 5_000, page="home")))
    assert lists_counted("browsing") - before == 2
    assert [ms for _, ms in stage.fresh] == [250.0, 250.0]
    assert stage.close(idle_ms=0) == []  # the watermark is inside the window
    stage.on_events("u2", delivered(Browse(event_id="e4", user_id="u2", ts=T0 + MIN + 10_000, page="home")))
    (window,) = stage.close(idle_ms=0)
    assert (window.lists, window.impressions, window.clicks, window.conversions, window.scored) == (2, 5, 1, 1, 1)
    assert window.hit_rate == 1.0 and window.scene_model_accuracy == 0.75 and window.coverage == 0.4
    assert list(stage.recent) == [window]
    # the rows are the table's JSON form of UserFeedback, as the feedback agent wrote them before
    row = UserFeedback.from_dict(orjson.loads(stage.table[b"u1"]))
    assert [ref.rec_id for ref in row.lists] == ["r1"] and row.lists[0].clicked and row.lists[0].converted
    assert row.event_ids == ["e1", "e2"]


def test_one_read_and_one_write_per_user_per_call(stage: FeedbackStage) -> None:
    table = stage.table
    assert isinstance(table, CountingTable)
    stage.on_lists([(rec("r1", "u1", T0, ["a1"]), Event()), (rec("r2", "u2", T0, ["a1"]), Event()),
                    (rec("r3", "u1", T0 + 1, ["b1"]), Event())])
    assert table.reads == table.writes == {b"u1": 1, b"u2": 1}
    stage.on_events("u1", delivered(*(Browse(event_id=f"e{n}", user_id="u1", ts=T0 + n, page="home")
                                      for n in range(5))))
    assert table.reads == table.writes == {b"u1": 2, b"u2": 1}
    stage.on_events("u1", [])  # nothing accepted in a batch: the row is neither read nor written
    assert table.reads == table.writes == {b"u1": 2, b"u2": 1}


def test_a_redelivered_list_or_event_counts_once(stage: FeedbackStage) -> None:
    before = lists_counted("shopping")
    first = rec("r1", "u1", T0, ["a1"], scene="shopping")
    stage.published(stage.on_lists([(first, Event())]))
    assert stage.on_lists([(first, Event())]) == []
    click = Click(event_id="e1", user_id="u1", ts=T0 + 1_000, item_id="a1", rec_id="r1")
    stage.on_events("u1", delivered(click))
    stage.on_events("u1", delivered(click))
    assert lists_counted("shopping") - before == 1 and len(stage.fresh) == 1
    (window,) = stage.windows.close(force=True)
    assert (window.lists, window.clicks, window.scored) == (1, 1, 1)


def test_forget_drops_the_row_and_restart_starts_a_new_one(stage: FeedbackStage) -> None:
    stage.on_lists([(rec("r1", "u1", T0, ["a1"]), Event())])
    stage.forget("u1", Event())
    assert b"u1" not in stage.table
    stage.forget("u1", Event())  # a second request finds nothing: not an error
    stage.on_lists([(rec("r2", "u1", T0, ["a1"]), Event())])
    stage.on_events("u1", delivered(Browse(event_id="e1", user_id="u1", ts=T0 + 1, page="home")), restart=True)
    row = UserFeedback.from_dict(orjson.loads(stage.table[b"u1"]))
    assert row.lists == [] and row.event_ids == ["e1"]  # the list before the erasure is not kept


def test_a_quiet_stream_closes_its_windows_by_idle_wall_time(stage: FeedbackStage) -> None:
    stage.on_lists([(rec("r1", "u1", T0 + 1_000, ["a1"]), Event())])
    assert stage.close() == []  # just arrived: not idle
    stage.last_arrival -= 75.0  # 75 s without an event or a list passes the window's end + grace
    (window,) = stage.close()
    assert window.window_start == T0 and window.lists == 1


def test_the_worker_reads_neither_topic_twice_nor_its_own_lists(tmp_path: Path) -> None:
    """The feedback stage subscribes to nothing: streamrec.events has one reader, reco.recommendations none."""
    runtime = build_runtime(Settings(kafka_bootstrap="127.0.0.1:1", data_dir=tmp_path))
    for module in (ingest, profile, refresh, catalog, feedback):
        module.register(runtime)
    readers: dict[str, list[str]] = {}
    for agent in runtime.app.agents.values():
        for topic in agent.channel.topics:
            readers.setdefault(topic, []).append(agent.name)
    assert readers[topics.EVENTS] == ["streamrec.agents.profile"]
    assert topics.RECOMMENDATIONS not in readers
    assert "streamrec.agents.feedback" not in {agent.name for agent in runtime.app.agents.values()}
    assert runtime.feedback_stage.table is runtime.feedback
    assert runtime.extras["feedback"] is runtime.feedback_stage.windows
    assert runtime.extras["feedback_recent"] is runtime.feedback_stage.recent
    assert runtime.extras["freshness_recent"] is runtime.feedback_stage.fresh
