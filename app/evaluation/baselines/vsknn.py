"""V-SKNN, the vector-multiplication session kNN of Ludewig & Jannach (2018), learning online.

The algorithm of ``VMContextKNN`` in session-rec (``algorithms/knn/vsknn.py``, rn5l/session-rec),
re-implemented for the ``Ranker`` interface, so that our lead is measured against the session kNN
that beat neural models in that study, not a weaker look-alike (issue 21; ``session_knn`` is not it):

1. Sessions: the event's ``session_id`` when given, else a 30-minute inactivity gap (DESIGN.md §6);
   each of a user's sessions is one session of the index. ``observe`` adds every new event to the
   index (the reference's ``extend``, per event), so candidates and IDF follow the stream.
2. Candidates: every indexed session sharing an item with the current session (the current one
   excluded); above ``sample_size`` only the most recent, by the time of their last event.
3. Similarity ``vec``: the current session's clicks get position weights by ``weighting`` (click i
   of L, oldest i=1: linear 1-0.1(L-i), same 1, div i/L, log 1/log10(L-i+1.7), quadratic (i/L)^2;
   a repeated item keeps its newest position's weight); a candidate's similarity is the sum of the
   weights of the items it shares divided by the number of distinct current items (``cosine``
   divides by the norms instead). Optionally the weights are the items' IDF
   (``idf_weighting_session``) and neighbours are aged by (7/8)^days (``weighting_time``). The
   ``k`` most similar with similarity > 0 are the neighbours.
4. Scores: each neighbour adds ``sim * decay`` to every one of its items, times
   ``1 + idf(item) * idf_weighting`` when that is on. ``decay`` is ``weighting_score`` of the step at
   which the neighbour is reached walking the current session back from its newest click (step 1:
   it holds the newest click; linear 1-0.1s, same 1, div 1/s, log 1/log10(s+1.7), quadratic 1/s^2).
   IDF is ln(sessions / events of the item), as the reference computes it, kept online.
5. Reminders: ``remind`` lets the current session's items be scored (off: never listed);
   ``push_reminders`` multiplies their scores by (clicks in the session + 1); ``add_reminders``
   lifts the first three of them with a positive score that fall below the 17th best score to
   just above it (the reference's slot for a list of 20). Scores end divided by the best
   (``normalize``).

Where ours differs, and why: linear weights are floored at 0 (the reference's ``i <= 10`` test gives
the newest clicks of a session longer than 10 weight 0 and the oldest negative weights, and its
linear step decay turns negative after step 10: evident slips; both agree for sessions of at most 10
clicks); with no ongoing session the user's previous session stands in (``previous_session``: the
reference never predicts a session's first click, our protocol scores it); ties are broken by
recency, then by creation order (the reference's depend on set order); every item event
(view, cart, wishlist, order line) is a click; a list with fewer than ``k`` scored items is filled
with popular items, as every baseline here does. Dwell-time weighting and random sampling are not
implemented.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from models.ranking import Ranked, RankedList, Ranker, Request
from schemas.events import UserEvent

from .common import POPULAR, SESSION_GAP_MS, Sessions, TopItems, indexed_session

Weighting = Literal["linear", "same", "div", "log", "quadratic"]
Similarity = Literal["vec", "cosine"]
SessionKey = tuple[str, str]

WEIGHTINGS: tuple[Weighting, ...] = ("linear", "same", "div", "log", "quadratic")
REASON = "viewed in sessions like yours"
REMIND_REASON = "in your current session"
DAY_MS = 24 * 3600 * 1000
ADD_REMINDERS = 3  # how many of the session's items add_reminders may lift (the reference's 3)
ADD_REMINDERS_SLOT = 16  # ...to just above the score at this index (19 - 3: in a list of 20)

TUNED: dict[str, Any] = {"k": 100, "sample_size": 1000, "weighting": "same", "weighting_score": "log",
                         "idf_weighting": 0.0, "remind": True, "push_reminders": True, "add_reminders": True}
"""Hyperparameters of the ``vsknn`` baseline, chosen by `streamrec tune` on the 9-day file's
validation slice (grid entry ``vsknn_same_log_push_add``; docs/EVALUATION.md, "V-SKNN"); the class
defaults are the reference's."""


def position_weight(weighting: Weighting, i: int, length: int) -> float:
    """Weight of click ``i`` (1 = oldest) of a current session of ``length`` clicks."""
    if weighting == "linear":
        return max(1.0 - 0.1 * (length - i), 0.0)
    if weighting == "same":
        return 1.0
    if weighting == "div":
        return i / length
    if weighting == "log":
        return 1.0 / math.log10(length - i + 1.7)
    if weighting == "quadratic":
        return (i / length) ** 2
    raise ValueError(f"unknown weighting {weighting!r}; known: {', '.join(WEIGHTINGS)}")


def step_decay(weighting: Weighting, step: int) -> float:
    """Score decay of a neighbour reached at ``step`` (1 = it holds the newest click)."""
    if weighting == "linear":
        return max(1.0 - 0.1 * step, 0.0)
    if weighting == "same":
        return 1.0
    if weighting == "div":
        return 1.0 / step
    if weighting == "log":
        return 1.0 / math.log10(step + 1.7)
    if weighting == "quadratic":
        return 1.0 / (step * step)
    raise ValueError(f"unknown weighting {weighting!r}; known: {', '.join(WEIGHTINGS)}")


@dataclass(slots=True)
class _Session:
    """One indexed session: its distinct items (ordered, so iteration is reproducible), every click
    in order (needed when it is the current session) and when it was last active."""

    order: int  # creation order: the tie-break among sessions with the same last event time
    items: dict[str, None] = field(default_factory=dict)
    clicks: list[str] = field(default_factory=list)
    last_ts: int = 0


@dataclass(frozen=True, slots=True)
class Neighbour:
    key: SessionKey
    similarity: float


class VSKNN(Ranker):
    name = "vsknn"

    def __init__(self, k: int = 100, sample_size: int = 1000, *, weighting: Weighting = "div",
                 weighting_score: Weighting = "div", similarity: Similarity = "vec", idf_weighting: float = 0.0,
                 idf_weighting_session: bool = False, remind: bool = True, push_reminders: bool = False,
                 add_reminders: bool = False, weighting_time: bool = False, last_n_clicks: int | None = None,
                 previous_session: bool = True, normalize: bool = True, pool: int = 200,
                 gap_ms: int = SESSION_GAP_MS, name: str | None = None) -> None:
        for kind in (weighting, weighting_score):
            if kind not in WEIGHTINGS:
                raise ValueError(f"unknown weighting {kind!r}; known: {', '.join(WEIGHTINGS)}")
        if similarity not in ("vec", "cosine"):
            raise ValueError(f"unknown similarity {similarity!r}; known: vec, cosine")
        if name is not None:
            self.name = name
        self.k = k
        self.sample_size = sample_size  # 0: every candidate session
        self.weighting: Weighting = weighting
        self.weighting_score: Weighting = weighting_score
        self.similarity: Similarity = similarity
        self.idf_weighting = float(idf_weighting)
        self.idf_weighting_session = idf_weighting_session
        self.remind = remind
        self.push_reminders = push_reminders
        self.add_reminders = add_reminders
        self.weighting_time = weighting_time
        self.last_n_clicks = last_n_clicks
        self.previous_session = previous_session
        self.normalize = normalize
        self._popular = TopItems(pool)
        self._sessions = Sessions(gap_ms)
        self._store: dict[SessionKey, _Session] = {}
        self._item_sessions: dict[str, list[SessionKey]] = {}
        self._item_events: Counter[str] = Counter()

    # -- learning -------------------------------------------------------------------------------

    def observe_one(self, event: UserEvent) -> None:
        found = indexed_session(self._sessions, self._store, event, lambda order: _Session(order=order))
        if found is None:
            return
        key, session, items = found
        for item in items:
            self._popular.add(item)
            self._item_events[item] += 1
            session.clicks.append(item)
            if item not in session.items:
                session.items[item] = None
                self._item_sessions.setdefault(item, []).append(key)

    def idf(self, item: str) -> float:
        """ln(indexed sessions / events of the item): the reference's IDF, over what was observed."""
        count = self._item_events.get(item, 0)
        return math.log(len(self._store) / count) if count else 0.0

    # -- the current session and its neighbours -------------------------------------------------

    def current_session(self, user_id: str, now_ms: int) -> tuple[SessionKey | None, list[str]]:
        """The session a list is made for (its key and clicks in order), or (None, []) when none."""
        key = self._sessions.current(user_id, now_ms)
        if key is None and self.previous_session:
            key = self._sessions.last(user_id)
        session = self._store.get(key) if key is not None else None
        return (key, session.clicks) if session is not None else (None, [])

    def _context(self, clicks: list[str]) -> list[str]:
        return clicks if self.last_n_clicks is None else clicks[-self.last_n_clicks :]

    def candidates(self, key: SessionKey, clicks: list[str]) -> list[SessionKey]:
        """Sessions sharing an item with the current one (itself excluded), at most ``sample_size``:
        the most recently active, newest first."""
        found: set[SessionKey] = set()
        for item in dict.fromkeys(clicks):
            found.update(self._item_sessions.get(item, ()))
        found.discard(key)
        store = self._store
        recency = lambda other: (store[other].last_ts, store[other].order)
        if self.sample_size and len(found) > self.sample_size:
            return heapq.nlargest(self.sample_size, found, key=recency)
        return sorted(found, key=recency, reverse=True)

    def _position_weights(self, context: list[str]) -> dict[str, float]:
        length = len(context)
        weights = {item: position_weight(self.weighting, i, length) for i, item in enumerate(context, 1)}
        if self.idf_weighting_session:
            weights = {item: self.idf(item) for item in weights}
        return weights

    def neighbours(self, user_id: str, now_ms: int) -> list[Neighbour]:
        """The ``k`` nearest sessions to the user's current one, most similar first."""
        key, clicks = self.current_session(user_id, now_ms)
        if key is None:
            return []
        return self._neighbours(key, clicks, now_ms)

    def _neighbours(self, key: SessionKey, clicks: list[str], now_ms: int) -> list[Neighbour]:
        weights = self._position_weights(self._context(clicks))
        norm = len(weights) if self.similarity == "vec" else math.sqrt(sum(w * w for w in weights.values()))
        store = self._store
        found: list[tuple[float, int, int, SessionKey]] = []
        for other in self.candidates(key, clicks):
            session = store[other]
            shared = sum(weight for item, weight in weights.items() if item in session.items)
            if self.similarity == "cosine":
                similarity = shared / (norm * math.sqrt(len(session.items))) if norm > 0 else 0.0
            else:
                similarity = shared / norm
            if similarity <= 0.0:
                continue
            if self.weighting_time:
                similarity *= (7 / 8) ** round(max(now_ms - session.last_ts, 0) / DAY_MS)
            found.append((similarity, session.last_ts, session.order, other))
        return [Neighbour(other, similarity) for similarity, _, _, other in heapq.nlargest(self.k, found)]

    # -- scoring --------------------------------------------------------------------------------

    def scores(self, user_id: str, now_ms: int) -> dict[str, float]:
        """Every scored item's final score for the user (normalised to the best when ``normalize``)."""
        key, clicks = self.current_session(user_id, now_ms)
        if key is None:
            return {}
        return self._scores(self._neighbours(key, clicks, now_ms), clicks)

    def _scores(self, neighbours: list[Neighbour], clicks: list[str]) -> dict[str, float]:
        context = self._context(clicks)
        in_context = set(context)
        idf_weighting = self.idf_weighting
        scores: dict[str, float] = {}
        for neighbour in neighbours:
            items = self._store[neighbour.key].items
            decay = 0.0
            for step, item in enumerate(reversed(context), 1):
                if item in items:
                    decay = step_decay(self.weighting_score, step)
                    break
            for item in items:
                if not self.remind and item in in_context:
                    continue
                score = neighbour.similarity
                if idf_weighting:
                    score += score * self.idf(item) * idf_weighting
                scores[item] = scores.get(item, 0.0) + score * decay
        if self.remind and self.push_reminders:
            for item, count in Counter(clicks).items():
                if item in scores:
                    scores[item] *= count + 1
        if self.remind and self.add_reminders:
            self._lift_reminders(scores, clicks)
        if self.normalize and scores:
            best = max(scores.values())
            if best > 0.0:
                scores = {item: score / best for item, score in scores.items()}
        return scores

    @staticmethod
    def _lift_reminders(scores: dict[str, float], clicks: list[str]) -> None:
        reminders = [item for item in dict.fromkeys(clicks) if scores.get(item, 0.0) > 0.0][:ADD_REMINDERS]
        if not reminders:
            return
        ranked = heapq.nlargest(ADD_REMINDERS_SLOT + 1, scores.values())
        floor = ranked[ADD_REMINDERS_SLOT] if len(ranked) > ADD_REMINDERS_SLOT else 0.0
        for item in reminders:
            if scores[item] < floor:
                scores[item] = floor + 1e-4

    def recommend_one(self, request: Request, now_ms: int, k: int) -> RankedList:
        key, clicks = self.current_session(request.user_id, now_ms)
        exclude = request.exclude
        if key is None:
            last = self._sessions.last(request.user_id)
            cold = last is None or last not in self._store
            return RankedList(request.user_id, self._popular.ranked(k, exclude), cold_start=cold)
        scores = self._scores(self._neighbours(key, clicks, now_ms), clicks)
        if not self.remind:
            exclude = exclude | frozenset(self._context(clicks))
        own = set(clicks)
        best = heapq.nlargest(k + len(exclude), ((item, score) for item, score in scores.items() if score > 0.0),
                              key=lambda pair: pair[1])
        listed = [Ranked(item, score, REMIND_REASON if item in own else REASON)
                  for item, score in best if item not in exclude][:k]
        if len(listed) < k:
            taken = {ranked.item_id for ranked in listed} | exclude
            listed += [Ranked(item, 0.0, POPULAR) for item in self._popular.head(k - len(listed), exclude=taken)]
        return RankedList(request.user_id, tuple(listed))
