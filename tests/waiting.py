"""Small helpers shared by the integration and reliability tests: tests wait on state, never on sleeps,
and a wait that runs out FAILS, saying what it waited for and what it saw instead."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable


def describe(predicate: Callable[..., object]) -> str:
    """The predicate's source (a lambda's line), else its name: what a timed-out wait was waiting for."""
    try:
        return " ".join(inspect.getsource(predicate).split())
    except (OSError, TypeError):
        return getattr(predicate, "__qualname__", repr(predicate))


def timed_out(what: str, timeout_s: float, seen: str) -> TimeoutError:
    """The error of a wait past its deadline (TimeoutError, which callers may catch to add a diagnosis)."""
    return TimeoutError(f"waited {timeout_s:g}s for {what}\nsaw instead: {seen[-4000:]}")


def wait_for(predicate: Callable[[], object], timeout_s: float = 60.0, interval_s: float = 0.3,
             what: str | None = None) -> object:
    """Poll until predicate() is truthy and return its value; raise ``timed_out`` once the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise timed_out(what or describe(predicate), timeout_s, f"last value {value!r}")
        time.sleep(interval_s)
