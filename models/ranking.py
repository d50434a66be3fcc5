"""The one ranking interface: every recommender, production or baseline, is a ``Ranker``.

River's pattern: one small base class, every model one small module implementing it, so any model
can stand in for another, in ``streamrec evaluate`` and ``streamrec tune`` alike. A ranker is a
streaming learner:

- ``fit(train)`` warms it on a history (events in time order); by default it observes them,
- ``observe(events)`` folds newer events in (it keeps learning online, as deployed),
- ``retrain(history)`` rebuilds its offline-trained parts on everything seen so far (the scheduled
  retrain of a deployment); rankers with nothing trained offline ignore it,
- ``recommend(requests, now_ms, k=...)`` lists items for a batch of users as of ``now_ms``.

A model overrides either the batch form (``observe`` / ``recommend``: the production
``Recommender`` encodes and recalls a whole batch at once) or the one-at-a-time form
(``observe_one`` / ``recommend_one``: most baselines); the base class maps one onto the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from models.rerank import Ranked
from schemas.events import UserEvent

__all__ = ["RankRequest", "Ranked", "RankedList", "Ranker", "Request"]


class Request(Protocol):
    """Whom to rank for. A caller that keeps the user's state itself (the worker, in its tables) may
    pass a request that carries it (``models.recommender.UserRequest``); rankers that keep their
    own state read only the user id."""

    @property
    def user_id(self) -> str: ...

    @property
    def recently_shown(self) -> frozenset[str]: ...

    @property
    def exclude(self) -> frozenset[str]: ...


@dataclass(frozen=True, slots=True)
class RankRequest:
    """A user and what the caller knows about their lists: nothing but the id, by default."""

    user_id: str
    recently_shown: frozenset[str] = frozenset()  # down-weighted by rankers that care
    exclude: frozenset[str] = frozenset()  # never listed


@dataclass(frozen=True, slots=True)
class RankedList:
    """One user's list, best first, each item with its score and the reason it is there."""

    user_id: str
    items: tuple[Ranked, ...]
    scene: str | None = None  # the ranker's scene for the user; None for rankers without scenes
    cold_start: bool = False  # from the no-history fallback, not from anything known about the user
    fallback: bool = False  # a degraded list (recall unavailable): popularity only

    @property
    def item_ids(self) -> tuple[str, ...]:
        return tuple(r.item_id for r in self.items)


class Ranker:
    """Base class of every recommender. Subclasses set ``name`` and override ``observe`` or
    ``observe_one``, and ``recommend`` or ``recommend_one``."""

    name: str = "ranker"
    list_size: int = 20  # k when a caller does not say

    def fit(self, train: Sequence[UserEvent]) -> None:
        """Learn from ``train`` (events before anything asked of it, in time order)."""
        self.observe(train)

    def observe(self, events: Sequence[UserEvent]) -> None:
        for event in events:
            self.observe_one(event)

    def retrain(self, history: Sequence[UserEvent]) -> None:
        """Rebuild what was trained offline on ``history`` (every event so far, in time order; all of
        them already observed). Nothing by default: the online state is already up to date."""

    def observe_one(self, event: UserEvent) -> None:
        raise NotImplementedError(f"{type(self).__name__} implements neither observe nor observe_one")

    def recommend(self, requests: Sequence[Request], now_ms: int, *, k: int | None = None) -> list[RankedList]:
        """Each request's list of at most ``k`` items (default ``list_size``), as of ``now_ms``."""
        size = self.list_size if k is None else k
        return [self.recommend_one(request, now_ms, size) for request in requests]

    def recommend_one(self, request: Request, now_ms: int, k: int) -> RankedList:
        raise NotImplementedError(f"{type(self).__name__} implements neither recommend nor recommend_one")
