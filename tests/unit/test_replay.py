"""Readers (Taobao CSV, JSON lines), the time split and the paced replayer."""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from collections import Counter
from itertools import pairwise
from pathlib import Path

import msgspec
import orjson
import pytest

from app.runtime.settings import default_dataset
from app.tools.replay import (
    BadLine,
    ReplayStats,
    read_events,
    read_jsonl,
    read_taobao_csv,
    replay,
    split_by_time,
)
from schemas import topics
from schemas.events import Browse, CatalogItem, Click, OrderItem, Purchase
from schemas.validation import Limits, Reason, decode_event

T0 = 1_511_658_000  # 2017-11-26 01:00:00 UTC, in seconds as Taobao has it
CSV = (
    "user_id,item_id,category_id,behavior_type,timestamp\n"
    f"1,100,7,pv,{T0}\n"
    f"2,200,8,cart,{T0 + 10}\n"
    f"1,101,7,fav,{T0 + 60}\n"
    "garbage line\n"
    f"1,101,7,buy,{T0 + 60 + 30 * 60}\n"  # exactly 30 min later: same session
    f"1,102,9,pv,{T0 + 60 + 60 * 60 + 1}\n"  # 30 min + 1 s after the previous: new session
    f"2,201,8,teleport,{T0 + 5000}\n"
    f"2,201,8,pv,not-a-time\n"
    f"2,202,8,pv,{T0 + 5000}\n"
)


def write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["events.csv", "events.csv.gz"])
def test_taobao_mapping(tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="app.tools.replay"):
        events = list(read_taobao_csv(write(tmp_path / name, CSV)))
    assert [type(e) for e in events] == [Browse, Click, Click, Purchase, Browse, Browse]
    pv, cart, fav, buy, *_ = events
    assert (pv.page, pv.item_id, pv.category, pv.user_id, pv.ts) == ("product", "100", "7", "1", T0 * 1000)
    assert (cart.action, cart.item_id, cart.category) == ("add_to_cart", "200", "8")
    assert fav.action == "wishlist"
    assert buy.items == [OrderItem(item_id="101", quantity=1, price=None, category="7")]
    assert buy.order_id
    # Sessions: a gap of exactly 30 min stays in the session, anything longer starts a new one.
    assert [e.session_id for e in events] == ["1-0", "2-0", "1-0", "1-0", "1-1", "2-1"]
    assert "3 malformed Taobao rows skipped in all" in caplog.text


def test_taobao_event_ids_are_deterministic_and_unique(tmp_path: Path) -> None:
    plain = list(read_taobao_csv(write(tmp_path / "a.csv", CSV)))
    again = list(read_taobao_csv(write(tmp_path / "a.csv.gz", CSV)))
    assert [e.event_id for e in plain] == [e.event_id for e in again]
    assert len({e.event_id for e in plain}) == len(plain)
    # Two identical rows at different lines still get different ids.
    dup = list(read_taobao_csv(write(tmp_path / "dup.csv", f"1,100,7,pv,{T0}\n1,100,7,pv,{T0}\n")))
    assert len(dup) == 2
    assert dup[0].event_id != dup[1].event_id


def test_taobao_events_pass_validation(tmp_path: Path) -> None:
    for event in read_taobao_csv(write(tmp_path / "a.csv", CSV)):
        topic = topics.TOPIC_BY_TYPE[type(event).__struct_config__.tag]
        assert decode_event(msgspec.json.encode(event), topic, Limits(), int(time.time() * 1000)) == event


def jsonl_lines() -> list[bytes]:
    return [
        orjson.dumps({"type": "browse", "event_id": "b1", "user_id": "u1", "ts": 3_000_000_000_000 // 2,
                      "page": "home"}),
        orjson.dumps({"type": "catalog", "item_id": "i9", "category": "c", "price": 1.0, "available": True}),
        b"{not json",
        orjson.dumps({"type": "click", "event_id": "c1", "user_id": "u2", "ts": 1_400_000_000_000,
                      "item_id": "i9"}),
        b"",
        orjson.dumps({"type": "refund", "event_id": "r1"}),
        orjson.dumps({"type": "purchase", "event_id": "p1", "user_id": "u1", "ts": 1_400_000_000_000,
                      "order_id": "o1", "items": [{"item_id": "i9"}]}),
    ]


@pytest.mark.parametrize("name", ["events.jsonl", "events.jsonl.gz"])
def test_read_jsonl_yields_events_and_bad_lines_in_file_order(tmp_path: Path, name: str) -> None:
    text = b"\n".join(jsonl_lines()).decode()
    out = list(read_jsonl(write(tmp_path / name, text)))
    assert [type(x) for x in out] == [Browse, CatalogItem, BadLine, Click, BadLine, Purchase]
    bad = [x for x in out if isinstance(x, BadLine)]
    assert [(b.line_no, b.raw, b.rejection.reason) for b in bad] == [
        (3, b"{not json", Reason.INVALID_JSON),
        (6, jsonl_lines()[5], Reason.UNKNOWN_TYPE),
    ]


def test_read_events_sorts_json_lines_stably_and_keeps_catalog_in_place(tmp_path: Path) -> None:
    path = write(tmp_path / "mixed.data", b"\n".join(jsonl_lines()).decode())  # sniffed by content
    events = list(read_events(path))
    # click c1 and purchase p1 share a ts and keep file order; the catalog record (no ts) stays right
    # after the browse it followed.
    assert [e.item_id if isinstance(e, CatalogItem) else e.event_id for e in events] == ["c1", "p1", "b1", "i9"]


def test_read_events_dispatches_csv(tmp_path: Path) -> None:
    events = list(read_events(write(tmp_path / "x.csv.gz", CSV)))
    assert len(events) == 6
    assert all(a.ts <= b.ts for a, b in pairwise(events))


def mk(ts: int, n: int = 0) -> Browse:
    return Browse(event_id=f"e{ts}-{n}", user_id=f"u{n % 3}", ts=ts, page="home")


def test_split_by_time_boundary() -> None:
    events = [mk(1), mk(2), mk(3), mk(3, 1), mk(3, 2), mk(4), mk(5), mk(6), mk(7), mk(8)]
    train, test = split_by_time(events, 0.3)
    # 30% of 10 -> the boundary is the 4th smallest ts (3): every event at ts 3 goes to test.
    assert [e.ts for e in train] == [1, 2]
    assert [e.ts for e in test] == [3, 3, 3, 4, 5, 6, 7, 8]
    assert max(e.ts for e in train) < min(e.ts for e in test)
    assert split_by_time(events, 1.0) == (events, [])
    assert split_by_time(events, 0.0) == ([], events)
    assert split_by_time([], 0.5) == ([], [])
    with pytest.raises(ValueError):
        split_by_time(events, 1.5)


class FakeTime:
    """The replayer's clock and sleep in virtual time: sleeping moves the clock, nothing else does
    (unless a send is given a cost), so the schedule is exact on any machine however busy."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)

    def replay(self, events: list[Browse], send: Collect, **options: float) -> ReplayStats:
        return asyncio.run(replay(events, send, progress=False, clock=self.clock, sleep=self.sleep, **options))


class Collect:
    """A fake producer: records every (topic, key, value) and the virtual time it was sent at."""

    def __init__(self, fake: FakeTime, cost_s: float = 0.0) -> None:
        self.fake, self.cost_s = fake, cost_s
        self.calls: list[tuple[str, bytes, bytes]] = []
        self.times: list[float] = []

    async def __call__(self, topic: str, key: bytes, value: bytes) -> None:
        self.calls.append((topic, key, value))
        self.times.append(self.fake.now)
        self.fake.now += self.cost_s


def test_replay_at_a_rate_paces_and_preserves_order() -> None:
    events = [mk(1_500_000_000_000 + k, k) for k in range(1000)]
    fake = FakeTime()
    start = fake.now
    send = Collect(fake)
    stats = fake.replay(events, send, rate=2000)
    assert stats.sent == 1000
    assert stats.by_type == {"browse": 1000}
    assert [msgspec.json.decode(v, type=Browse) for _, _, v in send.calls] == events
    assert {t for t, _, _ in send.calls} == {topics.BROWSE}
    assert [k for _, k, _ in send.calls] == [e.user_id.encode() for e in events]
    # Each event goes out on schedule (k / rate), never late and at most the 5 ms sleep granularity early:
    # paced throughout, not a burst at either end.
    offsets = [t - start for t in send.times]
    early = [due - sent for due, sent in ((k / 2000, offsets[k]) for k in range(1000))]
    assert all(-1e-9 <= e < 0.005 + 1e-9 for e in early), (min(early), max(early))
    assert offsets[499] == pytest.approx(0.25, abs=0.005)
    # It sleeps per small batch (>= 5 ms ahead), not per event.
    assert all(s >= 0.005 for s in fake.sleeps) and 90 <= len(fake.sleeps) <= 100
    assert 0.4995 - 0.005 < stats.elapsed_s <= 0.4995 + 1e-9
    assert stats.events_per_s == pytest.approx(1000 / stats.elapsed_s)


def test_replay_with_speedup_follows_event_time_gaps() -> None:
    base = 1_500_000_000_000
    events = [mk(base, 0), mk(base + 10_000, 1), mk(base + 20_000, 2), mk(base + 20_001, 3)]  # 10 s apart
    fake = FakeTime()
    start = fake.now
    send = Collect(fake)
    fake.replay(events, send, speedup=100)  # -> 0.1 s apart; 1 ms of event time is 10 us: no sleep
    assert [t - start for t in send.times] == pytest.approx([0.0, 0.1, 0.2, 0.2])
    assert fake.sleeps == pytest.approx([0.1, 0.1])


def test_replay_behind_schedule_sends_at_once_without_sleeping() -> None:
    events = [mk(1_500_000_000_000 + k, k) for k in range(50)]
    fake = FakeTime()
    start = fake.now
    send = Collect(fake, cost_s=0.02)  # a send takes 20 ms, the rate wants one every 10 ms
    stats = fake.replay(events, send, rate=100)
    assert fake.sleeps == []
    assert [t - start for t in send.times] == pytest.approx([k * 0.02 for k in range(50)])
    assert stats.elapsed_s == pytest.approx(1.0)


def test_replay_topics_keys_limit_and_counts() -> None:
    ts = 1_500_000_000_000
    events = [
        CatalogItem(item_id="i1", category="c", price=2.0, available=True),
        Click(event_id="c", user_id="u1", ts=ts, item_id="i1"),
        Purchase(event_id="p", user_id="u2", ts=ts, order_id="o", items=[OrderItem(item_id="i1")]),
        mk(ts + 1),
        mk(ts + 2),
    ]
    send = Collect(FakeTime())  # replay itself on its default, real clock and sleep
    stats = asyncio.run(replay(iter(events), send, limit=4, progress=False))
    assert [(t, k) for t, k, _ in send.calls] == [
        (topics.CATALOG, b"i1"), (topics.CLICK, b"u1"), (topics.PURCHASE, b"u2"), (topics.BROWSE, b"u0"),
    ]
    assert orjson.loads(send.calls[0][2])["type"] == "catalog"
    assert stats.by_type == {"catalog": 1, "click": 1, "purchase": 1, "browse": 1}
    assert isinstance(stats, ReplayStats)
    with pytest.raises(ValueError):
        asyncio.run(replay(events, send, rate=10, speedup=2, progress=False))


def test_replay_unpaced_never_waits() -> None:
    events = [mk(1_500_000_000_000 + k, k) for k in range(20_000)]
    fake = FakeTime()
    send = Collect(fake)
    stats = fake.replay(events, send)
    assert stats.sent == 20_000 and len(send.calls) == 20_000
    assert fake.sleeps == [0] * 20  # only a yield to other tasks every 1000 events
    assert stats.elapsed_s == 0.0


@pytest.mark.dataset
def test_real_taobao_file_maps_every_row() -> None:
    path = default_dataset()
    if not path.exists():
        pytest.skip(f"Taobao data set not found at {path} (a fresh clone without ../shared/datasets)")
    kinds = Counter(
        (type(e).__name__, getattr(e, "action", None)) for e in read_events(path)
    )
    # Row counts from the data set's README: pv 85,771, cart 5,292, fav 2,959, buy 2,144.
    assert kinds == {("Browse", None): 85_771, ("Click", "add_to_cart"): 5_292, ("Click", "wishlist"): 2_959,
                     ("Purchase", None): 2_144}
