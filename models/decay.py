"""Exponential interest decay in event time (DESIGN.md §2): ``P_t = a * P_(t-1) + (1 - a) * I_t``.

``a = exp(-ln2 * dt / half_life)``, so after one half-life an untouched weight halves. ``P`` is a
convex combination of the event intensities ``I`` seen so far: it never exceeds the largest event
weight, which keeps short- and long-term profiles on one scale.

Two edge cases, decided here once for every caller:

(a) Same-timestamp bursts. With ``dt = 0`` the gain ``1 - a`` is 0 and a burst of events sharing a
    timestamp (an order with several lines, replayed data with second resolution) would add nothing.
    Every in-order event therefore counts as if at least ``min_dt_s`` (default 1 s) had passed:
    ``dt_eff = max(dt, min_dt)`` is used for both the decay and the gain, so ``P`` stays a convex
    combination. The clock itself does not move for the floor; only the weights do.

(b) Out-of-order events (``ts`` older than the profile's clock). The clock never goes back and the
    profile is not decayed; the late observation is added with the gain it would have had
    (``1 - a(min_dt)``), itself decayed by its age ``clock - ts``. An old event thus adds little, and
    the result does not depend on how late it arrived.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

LN2 = math.log(2.0)


def decay_factor(dt_ms: float, half_life_s: float) -> float:
    """``exp(-ln2 * dt / half_life)``: the share of a weight left after ``dt_ms``; 1.0 for dt <= 0."""
    if dt_ms <= 0:
        return 1.0
    return math.exp(-LN2 * (dt_ms / 1000.0) / half_life_s)


def top_keys(scores: Mapping[str, float], n: int) -> list[str]:
    """The ``n`` keys with the largest score, ties broken by key so the choice is deterministic."""
    return sorted(scores, key=lambda k: (-scores[k], k))[:n]


@dataclass(frozen=True, slots=True)
class DecayingScores:
    """Decay rule for sparse ``key -> weight`` dicts, kept bounded to the ``max_size`` largest keys.

    The dicts stay plain (JSON-able, stored in a Faust table); this object only holds the rule.
    All weights of one dict are expressed at the owner's clock (the newest event time applied).
    """

    half_life_s: float
    max_size: int
    min_dt_s: float = 1.0

    def step(self, dt_ms: float) -> tuple[float, float]:
        """``(a, gain)`` for an in-order event ``dt_ms`` after the clock, with the ``min_dt`` floor."""
        a = decay_factor(max(dt_ms, self.min_dt_s * 1000.0), self.half_life_s)
        return a, 1.0 - a

    def late_gain(self, age_ms: float) -> float:
        """Weight factor of an observation ``age_ms`` older than the clock (edge case b)."""
        _, gain = self.step(0)
        return gain * decay_factor(age_ms, self.half_life_s)

    def update(self, scores: dict[str, float], dt_ms: float, observed: Mapping[str, float]) -> None:
        """In-order event: decay every weight by ``a``, add ``(1 - a) * I`` per observed key, prune."""
        a, gain = self.step(dt_ms)
        for key in scores:
            scores[key] *= a
        for key, intensity in observed.items():
            scores[key] = scores.get(key, 0.0) + gain * intensity
        self.prune(scores)

    def add_late(self, scores: dict[str, float], age_ms: float, observed: Mapping[str, float]) -> None:
        """Out-of-order event: no decay of the profile, the observation enters decayed by its age."""
        gain = self.late_gain(age_ms)
        for key, intensity in observed.items():
            scores[key] = scores.get(key, 0.0) + gain * intensity
        self.prune(scores)

    def apply(
        self, scores: dict[str, float], clock_ms: int, ts_ms: int, observed: Mapping[str, float]
    ) -> None:
        """Dispatch on event time: ``ts >= clock`` is in order, older is late. The caller moves its clock."""
        if ts_ms >= clock_ms:
            self.update(scores, ts_ms - clock_ms, observed)
        else:
            self.add_late(scores, clock_ms - ts_ms, observed)

    def prune(self, scores: dict[str, float]) -> None:
        """Drop the smallest weights beyond ``max_size`` (memory bound per user)."""
        excess = len(scores) - self.max_size
        if excess > 4:
            keep = set(top_keys(scores, self.max_size))
            for key in [k for k in scores if k not in keep]:
                del scores[key]
        else:  # usually one new key: dropping the worst ones is O(n), a sort is not
            for _ in range(excess):
                del scores[max(scores, key=lambda k: (-scores[k], k))]

    def at(self, scores: Mapping[str, float], dt_ms: float) -> dict[str, float]:
        """A copy of the weights as seen ``dt_ms`` after the clock (for reading, not for storing)."""
        factor = decay_factor(dt_ms, self.half_life_s)
        return {key: value * factor for key, value in scores.items()}
