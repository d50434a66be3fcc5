"""Item-to-item co-occurrence kNN: items that shared sessions, cosine-normalised, learnt online.

sim(i, j) = sessions with both / sqrt(sessions with i * sessions with j). A user's list scores
candidates by their similarity to the user's last ``recent_items`` distinct items, the newest item
weighted most (1, 1/2, 1/3, ...). Only the last ``max_session_items`` items of a session pair up,
which bounds the cost of very long sessions.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, OrderedDict

from models.ranking import RankedList, Ranker, Request
from schemas.events import UserEvent

from .common import SESSION_GAP_MS, Sessions, TopItems, fill, items_of

REASON = "often in sessions with items you viewed"


class ItemKNN(Ranker):
    name = "item_knn"

    def __init__(self, recent_items: int = 5, max_session_items: int = 50, pool: int = 200,
                 gap_ms: int = SESSION_GAP_MS) -> None:
        self._recent_n = recent_items
        self._max_session = max_session_items
        self._popular = TopItems(pool)
        self._sessions = Sessions(gap_ms)
        self._session_items: dict[tuple[str, str], OrderedDict[str, None]] = {}
        self._co: dict[str, Counter[str]] = {}
        self._item_sessions: Counter[str] = Counter()
        self._recent: dict[str, OrderedDict[str, None]] = {}

    def observe_one(self, event: UserEvent) -> None:
        items = items_of(event)
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

    def recommend_one(self, request: Request, now_ms: int, k: int) -> RankedList:
        recent = self._recent.get(request.user_id)
        if not recent:
            return RankedList(request.user_id, self._popular.ranked(k, request.exclude), cold_start=True)
        scores: Counter[str] = Counter()
        sessions_with = self._item_sessions
        for age, item in enumerate(reversed(recent)):
            row = self._co.get(item)
            if not row:
                continue
            weight = 1.0 / ((age + 1) * math.sqrt(sessions_with[item]))
            for other, together in row.items():
                scores[other] += weight * together / math.sqrt(sessions_with[other])
        ranked = heapq.nlargest(k + len(request.exclude), scores.items(), key=lambda pair: pair[1])
        return RankedList(request.user_id, fill(ranked, REASON, self._popular, k, request.exclude))
