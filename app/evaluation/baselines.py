"""Strong, simple baselines that StreamRec must beat, behind the evaluation protocol (issue 8).

All of them are streaming recommenders: `fit` warms them on the training period, then the evaluator
alternates `recommend` (the list the user would see now) and `observe` (the event that followed), so
they keep learning online exactly as a deployed system would. Session-kNN in the V-SKNN style is the
one to beat on real shop logs (Ludewig & Jannach 2018, "Evaluation of session-based recommendation
algorithms"). Pure logic: no Kafka, no Faust.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from schemas.events import UserEvent, event_items

SESSION_GAP_MS = 30 * 60 * 1000
"""Inactivity gap that ends a derived session (DESIGN.md §6)."""


@dataclass(frozen=True, slots=True)
class Served:
    """One list as the system would have served it at that moment, with what per-scene reports need.

    `scene` is the system's scene for the user (None for systems without scenes); `cold_start` says
    the list came from the no-history fallback rather than from anything known about the user.
    """

    items: tuple[str, ...]
    scene: str | None = None
    cold_start: bool = False


@runtime_checkable
class StreamingRecommender(Protocol):
    """What the evaluator drives. StreamRec and its ablations plug in through an adapter to this.

    Contract: `fit` gets only events before the split, in time order; afterwards the evaluator calls
    `recommend(user, k, now_ms)` before each evaluated event (now_ms = that event's ts) and then
    `observe(event)` with the event itself, for every evaluated event, scored or not.
    `recommend` must return what the user would see at now_ms: for a system that refreshes lists
    asynchronously (micro-batches), its latest published list, not a fresh computation it would not
    have made yet. `Served.scene` and `Served.cold_start` feed the per-scene and cold-start reports.
    """

    name: str

    def fit(self, train: Sequence[UserEvent]) -> None: ...

    def recommend(self, user_id: str, k: int, now_ms: int) -> Served: ...

    def observe(self, event: UserEvent) -> None: ...


RecommenderFactory = Callable[[], StreamingRecommender]


def _items_of(event: UserEvent) -> list[str]:
    return [item for item, _ in event_items(event)]


class _TopItems:
    """Items ordered by a count that only grows, kept incrementally (no full sort per request).

    An increment moves the item up past smaller counts only, so ties keep whoever got there first.
    """

    __slots__ = ("_pos", "_size", "_top", "counts")

    def __init__(self, size: int) -> None:
        self._size = size
        self._top: list[str] = []
        self._pos: dict[str, int] = {}
        self.counts: Counter[str] = Counter()

    def add(self, item: str) -> None:
        counts = self.counts
        counts[item] += 1
        value = counts[item]
        top, pos = self._top, self._pos
        index = pos.get(item)
        if index is None:
            if len(top) < self._size:
                top.append(item)
            elif value > counts[top[-1]]:
                del pos[top[-1]]
                top[-1] = item
            else:
                return
            index = len(top) - 1
        while index > 0 and counts[top[index - 1]] < value:
            above = top[index - 1]
            top[index] = above
            pos[above] = index
            index -= 1
        top[index] = item
        pos[item] = index

    def head(self, k: int, exclude: Iterable[str] = ()) -> list[str]:
        skip = set(exclude)
        if not skip:
            return self._top[:k]
        return [item for item in self._top if item not in skip][:k]


def _fill(personal: list[str], popular: _TopItems, k: int) -> tuple[str, ...]:
    """The personal list, backfilled with popular items not already in it, to k items."""
    if len(personal) >= k:
        return tuple(personal[:k])
    return tuple(personal + popular.head(k - len(personal), exclude=personal))


class _Sessions:
    """Session of each user: the event's session_id when given, else a 30-minute inactivity gap."""

    __slots__ = ("_counter", "_current", "_gap_ms", "_last_ts")

    def __init__(self, gap_ms: int = SESSION_GAP_MS) -> None:
        self._gap_ms = gap_ms
        self._current: dict[str, tuple[str, str]] = {}
        self._last_ts: dict[str, int] = {}
        self._counter: Counter[str] = Counter()

    def assign(self, event: UserEvent) -> tuple[str, str]:
        user = event.user_id
        last = self._last_ts.get(user)
        if event.session_id is not None:
            key = (user, event.session_id)
        elif last is None or event.ts - last > self._gap_ms or user not in self._current:
            self._counter[user] += 1
            key = (user, str(self._counter[user]))
        else:
            key = self._current[user]
        self._current[user] = key
        self._last_ts[user] = max(event.ts, last) if last is not None else event.ts
        return key

    def current(self, user_id: str, now_ms: int) -> tuple[str, str] | None:
        """The user's ongoing session at now_ms, None when the next event would open a new one."""
        last = self._last_ts.get(user_id)
        if last is None or now_ms - last > self._gap_ms:
            return None
        return self._current.get(user_id)

    def last(self, user_id: str) -> tuple[str, str] | None:
        return self._current.get(user_id)


class Popularity:
    """Global popularity: the most interacted-with items so far, the same list for everyone."""

    def __init__(self, pool: int = 200, name: str = "popularity") -> None:
        self.name = name
        self._top = _TopItems(pool)
        self._users: set[str] = set()

    def fit(self, train: Sequence[UserEvent]) -> None:
        for event in train:
            self.observe(event)

    def observe(self, event: UserEvent) -> None:
        self._users.add(event.user_id)
        for item in _items_of(event):
            self._top.add(item)

    def recommend(self, user_id: str, k: int, now_ms: int) -> Served:
        return Served(items=tuple(self._top.head(k)), cold_start=user_id not in self._users)


class RecentPopularity:
    """Trending: most interacted-with items in a sliding event-time window.

    The ranking is rebuilt at most once per `refresh_ms` of event time, as a trending job publishing
    every minute would; counts themselves are exact for the window.
    """

    def __init__(
        self,
        window_ms: int = 3600 * 1000,
        refresh_ms: int = 60 * 1000,
        pool: int = 200,
        name: str = "recent_popularity",
    ) -> None:
        self.name = name
        self._window_ms = window_ms
        self._refresh_ms = refresh_ms
        self._pool = pool
        self._events: deque[tuple[int, str]] = deque()
        self._counts: Counter[str] = Counter()
        self._ranked: list[str] = []
        self._ranked_at: int | None = None
        self._users: set[str] = set()

    def fit(self, train: Sequence[UserEvent]) -> None:
        for event in train:
            self.observe(event)

    def observe(self, event: UserEvent) -> None:
        self._users.add(event.user_id)
        for item in _items_of(event):
            self._events.append((event.ts, item))
            self._counts[item] += 1
        self._expire(event.ts)

    def _expire(self, now_ms: int) -> None:
        horizon = now_ms - self._window_ms
        events, counts = self._events, self._counts
        while events and events[0][0] <= horizon:
            _, item = events.popleft()
            counts[item] -= 1
            if counts[item] <= 0:
                del counts[item]

    def recommend(self, user_id: str, k: int, now_ms: int) -> Served:
        if self._ranked_at is None or now_ms - self._ranked_at >= self._refresh_ms:
            self._expire(now_ms)
            self._ranked = [
                item for item, _ in heapq.nlargest(self._pool, self._counts.items(), key=lambda pair: pair[1])
            ]
            self._ranked_at = now_ms
        return Served(items=tuple(self._ranked[:k]), cold_start=user_id not in self._users)


@dataclass(slots=True)
class _Seen:
    count: int = 0
    last_seq: int = 0


class UserPop:
    """S-POP: the user's own items ranked by how often, then how recently, they were touched.

    Repeat consumption is strong in shop logs (people return to items they viewed), which makes this
    a hard baseline; users without history get global popularity.
    """

    def __init__(self, pool: int = 200, name: str = "user_pop") -> None:
        self.name = name
        self._popular = _TopItems(pool)
        self._history: dict[str, dict[str, _Seen]] = {}
        self._seq = 0

    def fit(self, train: Sequence[UserEvent]) -> None:
        for event in train:
            self.observe(event)

    def observe(self, event: UserEvent) -> None:
        history = self._history.setdefault(event.user_id, {})
        for item in _items_of(event):
            self._seq += 1
            seen = history.get(item)
            if seen is None:
                seen = history[item] = _Seen()
            seen.count += 1
            seen.last_seq = self._seq
            self._popular.add(item)

    def recommend(self, user_id: str, k: int, now_ms: int) -> Served:
        history = self._history.get(user_id)
        if not history:
            return Served(items=tuple(self._popular.head(k)), cold_start=True)
        ranked = heapq.nsmallest(k, history.items(), key=lambda pair: (-pair[1].count, -pair[1].last_seq))
        return Served(items=_fill([item for item, _ in ranked], self._popular, k))


class ItemKNN:
    """Item-to-item co-occurrence kNN: items that shared sessions, cosine-normalised, learnt online.

    sim(i, j) = sessions with both / sqrt(sessions with i * sessions with j). A user's list scores
    candidates by their similarity to the user's last `recent_items` distinct items, the newest item
    weighted most (1, 1/2, 1/3, ...). Only the last `max_session_items` items of a session pair up,
    which bounds the cost of very long sessions.
    """

    def __init__(
        self,
        recent_items: int = 5,
        max_session_items: int = 50,
        pool: int = 200,
        gap_ms: int = SESSION_GAP_MS,
        name: str = "item_knn",
    ) -> None:
        self.name = name
        self._recent_n = recent_items
        self._max_session = max_session_items
        self._popular = _TopItems(pool)
        self._sessions = _Sessions(gap_ms)
        self._session_items: dict[tuple[str, str], OrderedDict[str, None]] = {}
        self._co: dict[str, Counter[str]] = {}
        self._item_sessions: Counter[str] = Counter()
        self._recent: dict[str, OrderedDict[str, None]] = {}

    def fit(self, train: Sequence[UserEvent]) -> None:
        for event in train:
            self.observe(event)

    def observe(self, event: UserEvent) -> None:
        items = _items_of(event)
        if not items:
            self._sessions.assign(event)
            return
        key = self._sessions.assign(event)
        session = self._session_items.setdefault(key, OrderedDict())
        recent = self._recent.setdefault(event.user_id, OrderedDict())
        for item in items:
            self._popular.add(item)
            recent[item] = None
            recent.move_to_end(item)
            if len(recent) > self._recent_n:
                recent.popitem(last=False)
            if item in session:
                session.move_to_end(item)
                continue
            self._item_sessions[item] += 1
            row = self._co.setdefault(item, Counter())
            for other in session:
                row[other] += 1
                self._co[other][item] += 1
            session[item] = None
            if len(session) > self._max_session:
                session.popitem(last=False)

    def recommend(self, user_id: str, k: int, now_ms: int) -> Served:
        recent = self._recent.get(user_id)
        if not recent:
            return Served(items=tuple(self._popular.head(k)), cold_start=True)
        scores: Counter[str] = Counter()
        sessions_with = self._item_sessions
        for age, item in enumerate(reversed(recent)):
            row = self._co.get(item)
            if not row:
                continue
            weight = 1.0 / ((age + 1) * math.sqrt(sessions_with[item]))
            for other, together in row.items():
                scores[other] += weight * together / math.sqrt(sessions_with[other])
        ranked = [item for item, _ in heapq.nlargest(k, scores.items(), key=lambda pair: pair[1])]
        return Served(items=_fill(ranked, self._popular, k))


@dataclass(slots=True)
class _Session:
    items: OrderedDict[str, None] = field(default_factory=OrderedDict)
    last_ts: int = 0


class SessionKNN:
    """V-SKNN: score items by the past sessions most similar to the user's current one.

    Following Ludewig & Jannach (2018): candidate neighbours are the most recent `sample_size`
    sessions sharing an item with the current session; similarity is the dot product of the current
    session, weighted by a linear position decay (newest item 1, each older one 0.1 less, floor 0.1),
    with the neighbour's item set; here it is also multiplied by the neighbour's recency,
    0.5 ** (age / recency_half_life). The `k` best neighbours vote for their items with their
    similarity. When the user has no ongoing session (the next event opens a new one), the user's
    previous session stands in as the context; with none at all the list is global popularity.
    """

    def __init__(
        self,
        k: int = 100,
        sample_size: int = 500,
        context_items: int = 10,
        max_session_items: int = 50,
        recency_half_life_ms: int = 24 * 3600 * 1000,
        pool: int = 200,
        gap_ms: int = SESSION_GAP_MS,
        name: str = "session_knn",
    ) -> None:
        self.name = name
        self._k = k
        self._sample = sample_size
        self._context = context_items
        self._max_session = max_session_items
        self._half_life = recency_half_life_ms
        self._popular = _TopItems(pool)
        self._sessions = _Sessions(gap_ms)
        self._store: dict[tuple[str, str], _Session] = {}
        self._item_sessions: dict[str, list[tuple[str, str]]] = {}

    def fit(self, train: Sequence[UserEvent]) -> None:
        for event in train:
            self.observe(event)

    def observe(self, event: UserEvent) -> None:
        key = self._sessions.assign(event)
        items = _items_of(event)
        if not items:
            return
        session = self._store.get(key)
        if session is None:
            session = self._store[key] = _Session()
        session.last_ts = max(session.last_ts, event.ts)
        for item in items:
            self._popular.add(item)
            if item in session.items:
                session.items.move_to_end(item)
                continue
            session.items[item] = None
            self._item_sessions.setdefault(item, []).append(key)
            if len(session.items) > self._max_session:
                session.items.popitem(last=False)

    def _context_of(self, user_id: str, now_ms: int) -> tuple[tuple[str, str] | None, dict[str, float]]:
        key = self._sessions.current(user_id, now_ms) or self._sessions.last(user_id)
        session = self._store.get(key) if key is not None else None
        if session is None:
            return key, {}
        newest_first = list(reversed(session.items))[: self._context]
        return key, {item: max(1.0 - 0.1 * distance, 0.1) for distance, item in enumerate(newest_first)}

    def recommend(self, user_id: str, k: int, now_ms: int) -> Served:
        own_key, weights = self._context_of(user_id, now_ms)
        if not weights:
            return Served(items=tuple(self._popular.head(k)), cold_start=own_key is None)
        candidates: set[tuple[str, str]] = set()
        for item in weights:
            candidates.update(self._item_sessions.get(item, ())[-self._sample :])
        candidates.discard(own_key)
        store = self._store
        if len(candidates) > self._sample:
            candidates = set(heapq.nlargest(self._sample, candidates, key=lambda key: store[key].last_ts))
        neighbours: list[tuple[float, tuple[str, str]]] = []
        for key in candidates:
            session = store[key]
            overlap = sum(weight for item, weight in weights.items() if item in session.items)
            if overlap <= 0.0:
                continue
            age = max(now_ms - session.last_ts, 0)
            neighbours.append((overlap * 0.5 ** (age / self._half_life), key))
        scores: Counter[str] = Counter()
        for similarity, key in heapq.nlargest(self._k, neighbours):
            sequence = list(store[key].items)
            shared = [index for index, item in enumerate(sequence) if item in weights]
            for index, item in enumerate(sequence):
                distance = min(abs(index - at) for at in shared)
                scores[item] += similarity / (distance + 1)
        ranked = [item for item, _ in heapq.nlargest(k, scores.items(), key=lambda pair: pair[1])]
        return Served(items=_fill(ranked, self._popular, k))


def baseline_factories() -> dict[str, RecommenderFactory]:
    """The baselines of issue 8 under their report names, each a fresh instance per run."""
    return {
        "popularity": Popularity,
        "recent_popularity": RecentPopularity,
        "user_pop": UserPop,
        "item_knn": ItemKNN,
        "session_knn": SessionKNN,
    }
