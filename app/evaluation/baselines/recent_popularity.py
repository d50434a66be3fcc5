"""Trending: the most interacted-with items in a sliding event-time window.

The ranking is rebuilt at most once per ``refresh_ms`` of event time, as a trending job publishing
every minute would; counts themselves are exact for the window.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque

from models.ranking import Ranked, RankedList, Ranker, Request
from schemas.events import UserEvent

from .common import items_of

REASON = "popular in the last hour"


class RecentPopularity(Ranker):
    name = "recent_popularity"

    def __init__(self, window_ms: int = 3600 * 1000, refresh_ms: int = 60 * 1000, pool: int = 200) -> None:
        self._window_ms = window_ms
        self._refresh_ms = refresh_ms
        self._pool = pool
        self._events: deque[tuple[int, str]] = deque()
        self._counts: Counter[str] = Counter()
        self._ranked: list[Ranked] = []
        self._ranked_at: int | None = None
        self._users: set[str] = set()

    def observe_one(self, event: UserEvent) -> None:
        self._users.add(event.user_id)
        for item in items_of(event):
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

    def recommend_one(self, request: Request, now_ms: int, k: int) -> RankedList:
        if self._ranked_at is None or now_ms - self._ranked_at >= self._refresh_ms:
            self._expire(now_ms)
            top = heapq.nlargest(self._pool, self._counts.items(), key=lambda pair: pair[1])
            self._ranked = [Ranked(item, float(count), REASON) for item, count in top]
            self._ranked_at = now_ms
        ranked = self._ranked
        if request.exclude:
            ranked = [r for r in ranked if r.item_id not in request.exclude]
        return RankedList(request.user_id, tuple(ranked[:k]), cold_start=request.user_id not in self._users)
