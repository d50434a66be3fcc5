"""Item-to-item co-occurrence learnt online from the event stream: the "cooccur" candidate source.

Items touched close together in one user's session are related ("people who looked at this next
looked at that"); on shop logs this session signal is the strongest one after the user's own
history (issue 8). Each new item of a user's session pairs with the user's previous
``window`` distinct session items, weighted ``1 / distance``; ``neighbours`` returns the cosine-
normalised score ``pair / sqrt(n_i * n_j)`` (``n`` = how often the item was paired at all), so very
popular items do not neighbour everything.

Memory stays bounded like ``Trending``: at most ``max_users`` open sessions (least recently seen
dropped), ``max_items`` rows (lowest counts dropped when a quarter over) and ``max_neighbours`` per row.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict

from schemas.events import UserEvent, event_items

_SLACK = 1.25


def _prune(table: dict[str, float], bound: int) -> None:
    if len(table) > bound * _SLACK:
        keep = heapq.nlargest(bound, table.items(), key=lambda kv: (kv[1], kv[0]))
        kept = dict(keep)
        table.clear()
        table.update(kept)


class CoOccurrence:
    """Decay-free, bounded session co-occurrence counts, updated one event at a time."""

    def __init__(
        self,
        window: int = 5,
        gap_ms: int = 30 * 60 * 1000,
        max_users: int = 200_000,
        max_items: int = 200_000,
        max_neighbours: int = 100,
    ) -> None:
        self.window = window
        self.gap_ms = gap_ms
        self.max_users = max_users
        self.max_items = max_items
        self.max_neighbours = max_neighbours
        self._sessions: OrderedDict[str, tuple[int, list[str]]] = OrderedDict()  # user -> (last ts, items)
        self._rows: dict[str, dict[str, float]] = {}
        self._mass: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def observe_event(self, event: UserEvent) -> None:
        """Pair the event's items with the user's recent session items (a 30-minute gap opens a new one)."""
        items = [item for item, _ in event_items(event)]
        if not items:
            return
        user = event.user_id
        last_ts, recent = self._sessions.pop(user, (event.ts, []))
        if event.ts - last_ts > self.gap_ms:
            recent = []
        for item in items:
            if recent and recent[-1] == item:
                continue  # a repeat of the same item says nothing about its neighbours
            for distance, other in enumerate(reversed(recent), start=1):
                if other != item:
                    self._add(item, other, 1.0 / distance)
            if item in recent:
                recent.remove(item)
            recent.append(item)
            del recent[: -self.window]
        self._sessions[user] = (max(last_ts, event.ts), recent)
        if len(self._sessions) > self.max_users:
            self._sessions.popitem(last=False)

    def _add(self, a: str, b: str, weight: float) -> None:
        for x, y in ((a, b), (b, a)):
            row = self._rows.get(x)
            if row is None:
                row = self._rows[x] = {}
            row[y] = row.get(y, 0.0) + weight
            self._mass[x] = self._mass.get(x, 0.0) + weight
            if len(row) > self.max_neighbours * _SLACK:
                _prune(row, self.max_neighbours)
        if len(self._rows) > self.max_items * _SLACK:
            _prune(self._mass, self.max_items)
            for key in [k for k in self._rows if k not in self._mass]:
                del self._rows[key]

    def neighbours(self, item_id: str, n: int) -> list[tuple[str, float]]:
        """The ``n`` items most related to ``item_id``, ``(item, cosine-normalised score)`` best first."""
        row = self._rows.get(item_id)
        if not row:
            return []
        own = math.sqrt(self._mass.get(item_id, 1.0))
        mass = self._mass
        scored = ((other, w / (own * math.sqrt(mass.get(other, w)))) for other, w in row.items())
        return heapq.nsmallest(n, scored, key=lambda kv: (-kv[1], kv[0]))
