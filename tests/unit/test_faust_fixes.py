"""The seam to Faust's private API (app/runtime/faust_fixes/): how the consumer is composed, and what it shows."""

from __future__ import annotations

from collections import defaultdict

from app.runtime.faust_app import build_runtime
from app.runtime.faust_fixes import pipeline_state
from app.runtime.faust_fixes.apps import FastPathConsumer, StreamRecConsumer, StreamRecConsumerThread
from app.runtime.settings import Settings

# Per-class attributes that are not overrides: mode gives every Service class its own logger and ABC data;
# each fix's `__post_init__` sets its own state and calls the next one's.
NOT_OVERRIDES = {"__module__", "__qualname__", "__doc__", "__abstractmethods__", "_abc_impl", "logger",
                 "__post_init__"}


def _owners(composed: type) -> dict[str, list[str]]:
    owners: dict[str, list[str]] = defaultdict(list)
    for cls in composed.__mro__:
        if cls.__module__.startswith("app.runtime.faust_fixes."):
            for name in set(vars(cls)) - NOT_OVERRIDES:
                owners[name].append(cls.__name__)
    return owners


def test_no_two_fixes_override_the_same_method_so_their_order_cannot_matter() -> None:
    for composed in (StreamRecConsumer, FastPathConsumer, StreamRecConsumerThread):
        shared = {name: classes for name, classes in _owners(composed).items() if len(classes) > 1}
        assert shared == {}, f"{composed.__name__}: one method, several fixes: {shared}"


def test_debug_snapshot_reads_the_producer_buffer_and_the_fix_counters() -> None:
    app = build_runtime(Settings(kafka_bootstrap="127.0.0.1:9", app_id="fixes-snapshot")).app
    state = pipeline_state(app)
    assert state["producer_buffer"] == 0  # a number, not "unavailable: ..."
    assert (state["repairs"], state["gaps"], state["rereads"], state["fetch_rounds"]) == (0, 0, 0, 0)
