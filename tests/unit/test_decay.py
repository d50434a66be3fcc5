"""Half-life maths and the two edge cases of models/decay.py (same-ts bursts, late events)."""

from __future__ import annotations

import math

import pytest

from models.decay import DecayingScores, decay_factor, top_keys

HOUR_MS = 3_600_000


def test_one_half_life_halves_and_two_quarter() -> None:
    assert decay_factor(HOUR_MS, 3600.0) == pytest.approx(0.5, rel=1e-12)
    assert decay_factor(2 * HOUR_MS, 3600.0) == pytest.approx(0.25, rel=1e-12)
    assert decay_factor(0, 3600.0) == 1.0
    assert decay_factor(-5, 3600.0) == 1.0


def test_update_is_the_contract_formula() -> None:
    rule = DecayingScores(half_life_s=3600.0, max_size=10)
    scores = {"a": 1.0}
    rule.update(scores, HOUR_MS, {"b": 2.0})
    # a = 0.5: P_a = 0.5 * 1 + 0.5 * 0, P_b = 0.5 * 0 + 0.5 * 2
    assert scores == pytest.approx({"a": 0.5, "b": 1.0})


def test_untouched_weight_halves_after_one_half_life() -> None:
    rule = DecayingScores(half_life_s=1800.0, max_size=10)
    scores = {"x": 0.8}
    rule.update(scores, 1_800_000, {})
    assert scores["x"] == pytest.approx(0.4)


def test_same_timestamp_burst_counts_with_min_dt_floor() -> None:
    rule = DecayingScores(half_life_s=60.0, max_size=10, min_dt_s=1.0)
    a1 = math.exp(-math.log(2) / 60.0)  # decay of one second
    scores: dict[str, float] = {"old": 1.0}
    for _ in range(3):
        rule.update(scores, 0, {"new": 1.0})
    # Each same-ts event acts as if 1 s had passed: the burst adds weight instead of nothing.
    expected_new = (1 - a1) * (1 + a1 + a1**2)
    assert scores["new"] == pytest.approx(expected_new, rel=1e-12)
    assert scores["old"] == pytest.approx(a1**3, rel=1e-12)
    # Still a convex combination: nothing exceeds the largest intensity.
    assert sum(scores.values()) == pytest.approx(1.0)


def test_late_event_does_not_decay_profile_and_enters_decayed_by_age() -> None:
    rule = DecayingScores(half_life_s=3600.0, max_size=10, min_dt_s=1.0)
    scores = {"a": 0.6}
    clock, late_ts = 10 * HOUR_MS, 9 * HOUR_MS  # one half-life late
    rule.apply(scores, clock, late_ts, {"b": 1.0})
    gain_1s = 1 - decay_factor(1000, 3600.0)
    assert scores["a"] == 0.6
    assert scores["b"] == pytest.approx(gain_1s * 0.5, rel=1e-12)
    assert rule.late_gain(0) == pytest.approx(gain_1s)


def test_prune_keeps_top_n_deterministically() -> None:
    rule = DecayingScores(half_life_s=3600.0, max_size=2)
    scores = {"c": 0.3, "a": 0.5, "b": 0.5}
    rule.prune(scores)
    assert set(scores) == {"a", "b"}
    scores = {f"k{i}": float(i) for i in range(100)}
    rule.update(scores, HOUR_MS, {"z": 1000.0})
    assert len(scores) == 2 and set(scores) == {"z", "k99"}
    assert top_keys({"x": 1.0, "w": 1.0, "y": 2.0}, 2) == ["y", "w"]


def test_at_reads_weights_later_without_changing_them() -> None:
    rule = DecayingScores(half_life_s=3600.0, max_size=5)
    scores = {"a": 1.0}
    assert rule.at(scores, HOUR_MS) == pytest.approx({"a": 0.5})
    assert scores == {"a": 1.0}
