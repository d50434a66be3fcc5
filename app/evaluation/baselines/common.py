"""What several baselines share: an incrementally sorted popularity list, derived sessions, backfill."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

from models.ranking import Ranked
from schemas.events import UserEvent, event_items

SESSION_GAP_MS = 30 * 60 * 1000
"""Inactivity gap that ends a derived session (DESIGN.md §6)."""
POPULAR = "popular overall"


def items_of(event: UserEvent) -> list[str]:
    return [item for item, _ in event_items(event)]


class TopItems:
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

    def ranked(self, k: int, exclude: frozenset[str] = frozenset(), reason: str = POPULAR) -> tuple[Ranked, ...]:
        counts = self.counts
        return tuple(Ranked(item, float(counts[item]), reason) for item in self.head(k, exclude))


def fill(personal: list[tuple[str, float]], reason: str, popular: TopItems, k: int,
         exclude: frozenset[str] = frozenset()) -> tuple[Ranked, ...]:
    """The personal list (item, score; best first) without ``exclude``, backfilled to ``k`` items
    with popular items not already in it (score 0: below every personal item)."""
    if exclude:
        personal = [(item, score) for item, score in personal if item not in exclude]
    listed = [Ranked(item, float(score), reason) for item, score in personal[:k]]
    if len(listed) < k:
        taken = {item for item, _ in personal} | exclude
        listed += [Ranked(item, 0.0, POPULAR) for item in popular.head(k - len(listed), exclude=taken)]
    return tuple(listed)


class Sessions:
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


class _Indexed(Protocol):
    last_ts: int


S = TypeVar("S", bound=_Indexed)


def indexed_session(sessions: Sessions, store: dict[tuple[str, str], S], event: UserEvent,
                    new: Callable[[int], S]) -> tuple[tuple[str, str], S, list[str]] | None:
    """Assign `event` to its session and, when it has items, return the session's key, the session (made
    by `new(len(store))` on first sight, its last activity moved to the event) and the items."""
    key = sessions.assign(event)
    items = items_of(event)
    if not items:
        return None
    session = store.get(key)
    if session is None:
        session = store[key] = new(len(store))
    session.last_ts = max(session.last_ts, event.ts)
    return key, session, items
