"""The dashboard's pure parts: events/s over a window of counter samples, freshness buckets, quality sums."""

from __future__ import annotations

from itertools import pairwise

import pytest

from app.serving.dashboard import RateMeter, freshness_series, quality
from models.feedback import WindowMetrics


def stepped(t: float) -> int:
    """A counter written once per batch: 300 events every 3 s (100 events/s on average)."""
    return int(t // 3) * 300


def test_rate_reads_the_flow_even_when_the_counter_stands_still_between_samples() -> None:
    meter = RateMeter(window_s=10.0, history_step_s=5.0)
    rates = []
    for t in range(60):
        meter.add(float(t), stepped(t))
        rates.append(meter.rate())
    assert rates[:5] == [None] * 5  # under half a window of samples: no figure rather than a guess
    assert all(r is not None and 90 <= r <= 120 for r in rates[10:]), rates  # 300 or 400 per ~10 s window
    assert sum(stepped(t) == stepped(t - 1) for t in range(10, 60)) >= 30  # two-sample differences would read 0


def test_rate_falls_to_zero_a_window_after_the_counter_stops_and_never_goes_negative() -> None:
    meter = RateMeter(window_s=10.0)
    for t in range(20):
        meter.add(float(t), t * 50)
    assert meter.rate() == pytest.approx(50.0)
    for t in range(20, 31):
        meter.add(float(t), 950)
    assert meter.rate() == 0.0
    meter.add(31.0, 100)  # partitions moved to another worker: its counter dropped
    assert meter.rate() == 0.0


def test_rate_history_has_one_point_per_step_and_keeps_only_its_span() -> None:
    meter = RateMeter(window_s=4.0, history_step_s=5.0, history_s=20.0)
    for t in range(60):
        meter.add(float(t), t * 10)
    times = [p[0] for p in meter.history]
    assert len(times) == 4 and times[-1] == 57_000  # the first rate at t=2 s (half the window), then every 5 s
    assert all(b - a == 5_000 for a, b in pairwise(times))
    assert all(p[1] == 10.0 for p in meter.history)
    assert len(meter.samples) <= 6  # the window's samples plus one before it, not every sample ever


def test_freshness_series_is_p50_and_p99_per_bucket_stamped_at_the_bucket_end() -> None:
    samples = [(100.5, float(ms)) for ms in range(1, 101)] + [(112.0, 7.0)]
    series = freshness_series(samples, step_s=10.0)
    assert series["p50_ms"] == [[110_000, 50.0], [120_000, 7.0]]
    assert series["p99_ms"] == [[110_000, 99.0], [120_000, 7.0]]
    assert freshness_series([]) == {"p50_ms": [], "p99_ms": []}


def window(scene: str, model: str, lists: int, clicks: int, conversions: int) -> WindowMetrics:
    return WindowMetrics(metric="feedback", window_start=0, window_end=60_000, scene=scene, model_version=model,
                         arm="A", lists=lists, impressions=lists * 20, clicks=clicks, conversions=conversions,
                         ctr=None, conversion_rate=None, k=20, scored=0, hit_rate=None, ndcg=None, coverage=None,
                         distinct_items=0, diversity=None, scene_switches=0, freshness_p50_ms=None,
                         freshness_p99_ms=None, late_dropped_total=0, scene_model_accuracy=None)


def test_quality_sums_windows_per_scene_and_model() -> None:
    q = quality([window("browsing", "m1", 10, 2, 1), window("browsing", "m1", 30, 6, 0),
                 window("shopping", "m1", 5, 0, 0)])
    assert q["by_scene_model"] == [
        {"scene": "browsing", "model_version": "m1", "lists": 40, "clicks": 8, "conversions": 1,
         "ctr": 0.2, "conversion_rate": 0.025},
        {"scene": "shopping", "model_version": "m1", "lists": 5, "clicks": 0, "conversions": 0,
         "ctr": 0.0, "conversion_rate": 0.0}]
    assert q["scenes"] == {"browsing": 40, "shopping": 5} and q["lists_total"] == 45
