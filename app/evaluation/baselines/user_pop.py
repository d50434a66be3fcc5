"""S-POP: the user's own items ranked by how often, then how recently, they were touched.

Repeat consumption is strong in shop logs (people return to items they viewed), which makes this a
hard baseline; users without history get global popularity.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from models.ranking import RankedList, Ranker, Request
from schemas.events import UserEvent

from .common import TopItems, fill, items_of

REASON = "you viewed this item"


@dataclass(slots=True)
class _Seen:
    count: int = 0
    last_seq: int = 0


class UserPop(Ranker):
    name = "user_pop"

    def __init__(self, pool: int = 200) -> None:
        self._popular = TopItems(pool)
        self._history: dict[str, dict[str, _Seen]] = {}
        self._seq = 0

    def observe_one(self, event: UserEvent) -> None:
        history = self._history.setdefault(event.user_id, {})
        for item in items_of(event):
            self._seq += 1
            seen = history.get(item)
            if seen is None:
                seen = history[item] = _Seen()
            seen.count += 1
            seen.last_seq = self._seq
            self._popular.add(item)

    def recommend_one(self, request: Request, now_ms: int, k: int) -> RankedList:
        history = self._history.get(request.user_id)
        if not history:
            return RankedList(request.user_id, self._popular.ranked(k, request.exclude), cold_start=True)
        ranked = heapq.nsmallest(k + len(request.exclude), history.items(),
                                 key=lambda pair: (-pair[1].count, -pair[1].last_seq))
        own = [(item, seen.count) for item, seen in ranked]
        return RankedList(request.user_id, fill(own, REASON, self._popular, k, request.exclude))
