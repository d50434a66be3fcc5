"""The demo's live figures: throughput over the last samples, backlog, freshness over recent lists."""

from __future__ import annotations

import logging
from io import StringIO

import pytest
from rich.console import Console

from app.tools.demo import (
    FRESHNESS_WINDOW_S,
    RATE_WINDOW_S,
    Sample,
    live_view,
    logs_to,
    progress,
    status_line,
)
from schemas.events import RecItem, Recommendation


def test_rates_come_from_the_last_window_of_samples_only() -> None:
    # 0-10 s: 100 events/s; then 5 s at 300 events/s. The rate shown is the recent one.
    samples = [Sample(float(t), 100 * t, 90 * t, 10 * t) for t in range(11)]
    samples += [Sample(10.0 + t, 1000 + 300 * t, 900 + 250 * t, 100 + 20 * t) for t in range(1, 6)]
    p = progress(samples, [], started=0.0, now=15.0)
    assert (p.sent, p.consumed, p.published) == (2500, 2150, 200)
    assert p.sent_per_s == pytest.approx(300.0)
    assert p.consumed_per_s == pytest.approx(250.0)
    assert p.lists_per_s == pytest.approx(20.0)
    assert p.backlog == 350
    assert p.elapsed_s == 15.0
    assert RATE_WINDOW_S == 5.0  # the window the figures above assume


def test_nothing_to_measure_yet_shows_no_numbers() -> None:
    p = progress([], [], started=0.0, now=1.0)
    assert (p.sent_per_s, p.fresh_p50_ms, p.fresh_p99_ms, p.fresh_lists) == (None, None, None, 0)
    assert progress([Sample(1.0, 5, 0, 0)], [], 0.0, 1.0).sent_per_s is None  # one sample has no rate
    line = status_line(p)
    assert "sent 0 (–)" in line and "freshness – p50, – p99" in line


def test_freshness_percentiles_cover_recent_lists_only() -> None:
    old = [(0.0, 60_000)] * 100  # lists seen long ago: slow
    recent = [(100.0 - i * 0.1, 1_000 + 10 * i) for i in range(100)]  # 1,000-1,990 ms within the window
    p = progress([], old + recent, started=0.0, now=100.0)
    assert p.fresh_lists == 100 and FRESHNESS_WINDOW_S > 10
    assert p.fresh_p50_ms == pytest.approx(1_495.0)
    assert p.fresh_p99_ms == pytest.approx(1_980.1)


def test_the_terminal_view_shows_the_figures_and_a_recent_list() -> None:
    samples = [Sample(0.0, 0, 0, 0), Sample(2.0, 500, 400, 60)]
    p = progress(samples, [(2.0, 1_234)], started=0.0, now=2.0)
    record = Recommendation(rec_id="r1", user_id="u7", version=3, generated_at=2, source_ts=1, scene="shopping",
                            model_version="m1", items=[RecItem(item_id="i9", score=0.5, reason="popular in 3")])
    out = StringIO()
    Console(file=out, width=120, color_system=None).print(live_view(p, record))
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in out.getvalue().splitlines() if line.count("│") == 4}
    assert rows["events sent"] == ["500", "250"]
    assert rows["consumed by the worker"] == ["400", "200"]
    assert rows["backlog (sent - consumed)"] == ["100", ""]
    assert rows["lists published"] == ["60", "30"]
    assert rows["freshness, last 30 s (1 lists)"] == ["p50 1,234 ms", "p99 1,234 ms"]
    assert "user u7" in out.getvalue() and "popular in 3" in out.getvalue()


def test_log_lines_go_where_the_live_view_prints_them_meanwhile() -> None:
    root = logging.getLogger()
    before = StringIO()
    handler = logging.StreamHandler(before)
    root.addHandler(handler)
    live_stream = StringIO()
    try:
        with logs_to(live_stream):
            logging.getLogger("app.tools.replay").warning("replayed during the live view")
        logging.getLogger("app.tools.replay").warning("after it")
    finally:
        root.removeHandler(handler)
    assert "replayed during the live view" in live_stream.getvalue()
    assert "replayed during the live view" not in before.getvalue() and "after it" in before.getvalue()
