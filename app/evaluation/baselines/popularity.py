"""Global popularity: the most interacted-with items so far, the same list for everyone."""

from __future__ import annotations

from models.ranking import RankedList, Ranker, Request
from schemas.events import UserEvent

from .common import TopItems, items_of


class Popularity(Ranker):
    name = "popularity"

    def __init__(self, pool: int = 200) -> None:
        self._top = TopItems(pool)
        self._users: set[str] = set()

    def observe_one(self, event: UserEvent) -> None:
        self._users.add(event.user_id)
        for item in items_of(event):
            self._top.add(item)

    def recommend_one(self, request: Request, now_ms: int, k: int) -> RankedList:
        return RankedList(request.user_id, self._top.ranked(k, request.exclude),
                          cold_start=request.user_id not in self._users)
