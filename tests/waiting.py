"""Small helpers shared by the integration and reliability tests."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], object], timeout_s: float = 60.0, interval_s: float = 0.3) -> object:
    """Poll until predicate() is truthy and return its value: tests wait on state, never on sleeps."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"condition not met within {timeout_s}s")
