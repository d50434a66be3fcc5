"""Read recorded event files and replay them onto Kafka in event-time order, paced or at full speed.

Replaying real data through the real pipeline is how quality and speed are measured (DESIGN.md §6).

- Taobao UserBehavior CSV (plain or .gz) is mapped as DESIGN.md §6 says: pv -> browse(page=product),
  cart -> click(add_to_cart), fav -> click(wishlist), buy -> purchase (one item, quantity 1, no price);
  sessions per user by a 30-minute inactivity gap; seconds -> milliseconds. Event ids are
  ``tb-<hash of the raw line>-<line number>``: deterministic, so replays of one file dedupe alike.
  Malformed rows are skipped with a counted warning (logged on the first and every 10,000th).
- JSON lines (plain or .gz) carry one event per line in the topic schema plus ``type``.
  :func:`read_jsonl` yields bad lines as :class:`BadLine` (raw bytes + Rejection) so a caller can
  dead-letter them; :func:`read_events` counts and logs them instead and yields only events.
- :func:`read_events` yields events in event-time order. Taobao files are sorted already and are
  streamed. JSON-lines files are loaded whole into memory (roughly 300-500 bytes per event as Structs)
  and stably sorted by ts when out of order; a catalog record without ts keeps its place (it takes
  the ts of the event before it).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import logging
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Final

from tqdm import tqdm

from schemas.events import AnyEvent, Browse, CatalogItem, Click, OrderItem, Purchase, UserEvent
from schemas.topics import TOPIC_BY_TYPE
from schemas.validation import Limits, Rejection, decode_tagged, encode_event, event_type

log = logging.getLogger(__name__)

SESSION_GAP_MS: Final = 30 * 60 * 1000
WARN_EVERY: Final = 10_000
_JSONL_SUFFIXES: Final = (".jsonl", ".ndjson", ".json")
_MIN_SLEEP_S: Final = 0.005
_PROGRESS_EVERY: Final = 1000

Send = Callable[[str, bytes, bytes], Awaitable[None]]
"""send(topic, key, value): e.g. an aiokafka producer's ``send_and_wait`` or a batching wrapper."""


@dataclass(frozen=True, slots=True)
class BadLine:
    """A JSON line that failed validation: its 1-based line number, exact bytes and why."""

    line_no: int
    raw: bytes
    rejection: Rejection


@dataclass(frozen=True, slots=True)
class ReplayStats:
    """What a replay sent: counts per event type and how long it took."""

    by_type: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def sent(self) -> int:
        return sum(self.by_type.values())

    @property
    def events_per_s(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


# --- readers --------------------------------------------------------------------------------------


def _open_binary(path: Path) -> io.BufferedIOBase:
    """Open plain or gzip (by magic bytes, whatever the suffix) for reading bytes."""
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def _line_id(raw: bytes, line_no: int) -> str:
    return f"tb-{hashlib.blake2b(raw, digest_size=6).hexdigest()}-{line_no}"


class _Skips:
    """Counts skipped input and logs the first and every WARN_EVERY-th, not each one."""

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what, self.count = path, what, 0

    def add(self, line_no: int, why: str) -> None:
        self.count += 1
        if self.count == 1 or self.count % WARN_EVERY == 0:
            log.warning("%s:%d: skipped %s (%s); %d skipped so far", self.path, line_no, self.what, why,
                        self.count)

    def done(self) -> None:
        if self.count:
            log.warning("%s: %d %s skipped in all", self.path, self.count, self.what)


def read_taobao_csv(path: str | Path) -> Iterator[UserEvent]:
    """Map a Taobao UserBehavior CSV (plain or .gz, header optional) to events, in file order."""
    path = Path(path)
    skips = _Skips(path, "malformed Taobao rows")
    sessions: dict[str, tuple[int, int]] = {}  # user -> (last ts ms, session number)
    with _open_binary(path) as fh:
        for line_no, raw in enumerate(fh, start=1):
            line = raw.rstrip(b"\r\n")
            if not line:
                continue
            parts = line.split(b",")
            if line_no == 1 and parts[0].strip() == b"user_id":
                continue
            try:
                event = _taobao_event(line, line_no, parts, sessions)
            except (ValueError, UnicodeDecodeError) as exc:
                skips.add(line_no, str(exc)[:80])
                continue
            yield event
    skips.done()


def _taobao_event(line: bytes, line_no: int, parts: list[bytes], sessions: dict[str, tuple[int, int]]
                  ) -> UserEvent:
    if len(parts) != 5:
        raise ValueError(f"{len(parts)} fields, expected 5")
    user, item, category, behavior = (p.strip().decode("ascii") for p in parts[:4])
    if not (user and item and category):
        raise ValueError("empty id")
    ts = int(parts[4]) * 1000
    if ts <= 0:
        raise ValueError("non-positive timestamp")
    last = sessions.get(user)
    number = 0 if last is None else last[1] + (ts - last[0] > SESSION_GAP_MS)
    session_id = f"{user}-{number}"
    event_id = _line_id(line, line_no)
    if behavior == "pv":
        event: UserEvent = Browse(event_id=event_id, user_id=user, ts=ts, page="product", item_id=item,
                                  category=category, session_id=session_id)
    elif behavior in ("cart", "fav"):
        event = Click(event_id=event_id, user_id=user, ts=ts, item_id=item, category=category,
                      action="add_to_cart" if behavior == "cart" else "wishlist", session_id=session_id)
    elif behavior == "buy":
        event = Purchase(event_id=event_id, user_id=user, ts=ts, order_id=f"o-{event_id}",
                         items=[OrderItem(item_id=item, quantity=1, category=category)], session_id=session_id)
    else:
        raise ValueError(f"unknown behavior_type {behavior[:20]!r}")
    sessions[user] = (max(ts, last[0]) if last else ts, number)
    return event


def read_jsonl(path: str | Path, limits: Limits | None = None, now_ms: int | None = None
               ) -> Iterator[AnyEvent | BadLine]:
    """Decode and validate each non-blank line (plain or .gz); yield events and BadLines in file order."""
    path = Path(path)
    limits = limits or Limits()
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    with _open_binary(path) as fh:
        for line_no, raw in enumerate(fh, start=1):
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            decoded = decode_tagged(line, limits, now_ms)
            yield BadLine(line_no, line, decoded) if isinstance(decoded, Rejection) else decoded


def _is_jsonl(path: Path) -> bool:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(_JSONL_SUFFIXES):
        return True
    if name.endswith(".csv"):
        return False
    with _open_binary(path) as fh:
        head = fh.read(64).lstrip()
    return head.startswith(b"{")


def read_events(path: str | Path, limits: Limits | None = None) -> Iterator[AnyEvent]:
    """Events of a Taobao CSV or JSON-lines file in event-time order; bad JSON lines counted and logged."""
    path = Path(path)
    if not _is_jsonl(path):
        yield from read_taobao_csv(path)
        return
    skips = _Skips(path, "invalid JSON lines")
    events: list[AnyEvent] = []
    for item in read_jsonl(path, limits):
        if isinstance(item, BadLine):
            skips.add(item.line_no, f"{item.rejection.reason}: {item.rejection.detail}")
        else:
            events.append(item)
    skips.done()
    times = _event_times(events)
    if any(a > b for a, b in pairwise(times)):
        order = sorted(range(len(events)), key=times.__getitem__)  # stable
        events = [events[i] for i in order]
    yield from events


def _event_times(events: Sequence[AnyEvent]) -> list[int]:
    """Each event's ts; an event without one (catalog) takes the previous event's, so it keeps its place."""
    times, last = [], -(2**63)
    for event in events:
        if event.ts is not None:
            last = event.ts
        times.append(last)
    return times


def split_by_time(events: Iterable[AnyEvent], train_fraction: float) -> tuple[list[AnyEvent], list[AnyEvent]]:
    """Split at a timestamp so about train_fraction of events come before it; ts >= boundary is test.

    Events sharing the boundary ts all go to test, so train never sees the evaluated period.
    """
    if not 0.0 <= train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be in [0, 1], got {train_fraction}")
    events = list(events)
    times = _event_times(events)
    cut = int(len(events) * train_fraction)
    if cut >= len(events):
        return events, []
    boundary = sorted(times)[cut]
    train = [e for e, t in zip(events, times, strict=True) if t < boundary]
    test = [e for e, t in zip(events, times, strict=True) if t >= boundary]
    return train, test


# --- replay ---------------------------------------------------------------------------------------


def _key(event: AnyEvent) -> bytes:
    return (event.item_id if isinstance(event, CatalogItem) else event.user_id).encode()


async def replay(
    events: Iterable[AnyEvent],
    send: Send,
    *,
    rate: float | None = None,
    speedup: float | None = None,
    limit: int | None = None,
    progress: bool = True,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> ReplayStats:
    """Send events to their topics in order; paced by ``rate`` (events/s) or ``speedup`` x event time.

    With neither, events go as fast as ``send`` takes them. Pacing sleeps only when ahead of schedule
    by at least 5 ms, so it sleeps per small batch, not per event. ``clock`` (seconds) and ``sleep`` are
    the pacing's time: real by default, a fake pair in tests so the schedule is checked exactly.
    """
    if rate is not None and speedup is not None:
        raise ValueError("give rate or speedup, not both")
    if (rate is not None and rate <= 0) or (speedup is not None and speedup <= 0):
        raise ValueError("rate and speedup must be positive")
    total = limit if limit is not None else (len(events) if isinstance(events, Sequence) else None)
    counts: Counter[str] = Counter()
    bar = tqdm(total=total, unit="ev", desc="replay", disable=not progress or not sys.stderr.isatty())
    start = now = clock()
    first_ts: int | None = None
    sent = 0
    try:
        for event in events:
            if limit is not None and sent >= limit:
                break
            due = start
            if rate is not None:
                due = start + sent / rate
            elif speedup is not None and event.ts is not None:
                first_ts = event.ts if first_ts is None else first_ts
                due = start + (event.ts - first_ts) / 1000.0 / speedup
            if due - now >= _MIN_SLEEP_S:
                now = clock()
                if due - now >= _MIN_SLEEP_S:
                    await sleep(due - now)
                    now = clock()
            kind = event_type(event)
            await send(TOPIC_BY_TYPE[kind], _key(event), encode_event(event))
            counts[kind] += 1
            sent += 1
            if sent % _PROGRESS_EVERY == 0:
                bar.update(_PROGRESS_EVERY)
                if rate is None and speedup is None:
                    await sleep(0)  # let other tasks run during a full-speed replay
        bar.update(sent % _PROGRESS_EVERY)
    finally:
        bar.close()
    elapsed = clock() - start
    stats = ReplayStats(by_type=dict(counts), elapsed_s=elapsed)
    log.info("replayed %d events in %.2f s (%.0f events/s): %s", stats.sent, elapsed, stats.events_per_s,
             stats.by_type)
    return stats
