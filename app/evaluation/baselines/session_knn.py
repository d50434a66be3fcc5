"""Session-kNN: score items by the past sessions most similar to the user's current one.

In the style of V-SKNN (Ludewig & Jannach 2018, "Evaluation of session-based recommendation
algorithms"), simplified: candidate neighbours are the most recent ``sample_size`` sessions sharing
an item with the current session; similarity is the dot product of the current session, weighted by
a linear position decay (newest item 1, each older one 0.1 less, floor 0.1), with the neighbour's
item set, times the neighbour's recency 0.5 ** (age / recency_half_life). The ``k`` best neighbours
vote for their items with their similarity over (1 + distance to the shared item in that session).
With no ongoing session (the next event opens a new one) the user's previous session stands in;
with none at all the list is global popularity.
"""

from __future__ import annotations

import heapq
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from models.ranking import RankedList, Ranker, Request
from schemas.events import UserEvent

from .common import SESSION_GAP_MS, Sessions, TopItems, fill, indexed_session

REASON = "viewed in sessions like yours"


@dataclass(slots=True)
class _Session:
    items: OrderedDict[str, None] = field(default_factory=OrderedDict)
    last_ts: int = 0


class SessionKNN(Ranker):
    name = "session_knn"

    def __init__(self, k: int = 100, sample_size: int = 500, context_items: int = 10,
                 max_session_items: int = 50, recency_half_life_ms: int = 24 * 3600 * 1000, pool: int = 200,
                 gap_ms: int = SESSION_GAP_MS) -> None:
        self._k = k
        self._sample = sample_size
        self._context = context_items
        self._max_session = max_session_items
        self._half_life = recency_half_life_ms
        self._popular = TopItems(pool)
        self._sessions = Sessions(gap_ms)
        self._store: dict[tuple[str, str], _Session] = {}
        self._item_sessions: dict[str, list[tuple[str, str]]] = {}

    def observe_one(self, event: UserEvent) -> None:
        found = indexed_session(self._sessions, self._store, event, lambda _: _Session())
        if found is None:
            return
        key, session, items = found
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

    def recommend_one(self, request: Request, now_ms: int, k: int) -> RankedList:
        own_key, weights = self._context_of(request.user_id, now_ms)
        if not weights:
            return RankedList(request.user_id, self._popular.ranked(k, request.exclude),
                              cold_start=own_key is None)
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
        ranked = heapq.nlargest(k + len(request.exclude), scores.items(), key=lambda pair: pair[1])
        return RankedList(request.user_id, fill(ranked, REASON, self._popular, k, request.exclude))
