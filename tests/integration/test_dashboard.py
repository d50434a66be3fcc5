"""The dashboard, served by the session's real worker on a real broker during a replay, in headless Chromium.

Chromium is Debian's package (scripts/install.sh installs it), driven by playwright-python with
executable_path (no browser download). Asserts on values the page's own JS rendered from live data,
saves a screenshot under the test's tmp dir and copies it to docs/img/dashboard.png.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from pathlib import Path

import msgspec
import pytest

from app.tools.process import WorkerProcess
from app.tools.simulator import simulate
from schemas.events import CatalogItem
from tests.integration.conftest import Kafka
from tests.waiting import wait_for

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync"]
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img" / "dashboard.png"


def chromium_binary() -> str | None:
    real = Path("/usr/lib/chromium/chromium")  # Debian's binary behind the /usr/bin/chromium wrapper script
    return str(real) if real.exists() else shutil.which("chromium")


def number(text: str | None) -> float | None:
    if text is None or not re.fullmatch(r"[0-9][0-9,]*(\.[0-9]+)?", text.strip()):
        return None
    return float(text.replace(",", ""))


def test_dashboard_renders_live_values(worker: WorkerProcess, kafka: Kafka, tmp_path: Path) -> None:
    binary = chromium_binary()
    if binary is None:
        pytest.skip("Debian's chromium is not installed (scripts/install.sh installs it)")
    from playwright.sync_api import sync_playwright

    events = [e for e in simulate(n_users=60, n_items=600, n_categories=12, n_events=2_400, seed=11,
                                  start_ts_ms=int(time.time() * 1000) - 60_000) if not isinstance(e, CatalogItem)]
    users = sorted({e.user_id for e in events})
    stop = threading.Event()

    def replay() -> None:  # paced, so the page sees a moving stream, not one burst; stamped with send time
        for start in range(0, len(events), 100):
            if stop.is_set():
                return
            now = int(time.time() * 1000)
            kafka.send_events([msgspec.structs.replace(e, ts=now) for e in events[start:start + 100]])
            time.sleep(0.5)

    sender = threading.Thread(target=replay, daemon=True)
    sender.start()
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(str(tmp_path / "chromium-profile"),
                                                            executable_path=binary, args=FLAGS, headless=True,
                                                            viewport={"width": 1400, "height": 1500})
            page = context.new_page()
            page.goto(f"{worker.url}/dashboard")

            # live values rendered by the page's JS while the replay runs
            wait_for(lambda: (number(page.text_content("#events-per-s")) or 0) > 0, timeout_s=90)
            wait_for(lambda: number(page.text_content("#fresh-p50")) is not None, timeout_s=90)
            wait_for(lambda: (number(page.text_content("#lists-total")) or 0) > 0, timeout_s=90)
            wait_for(lambda: page.locator("#table-quality .quality-row").count() > 0, timeout_s=60)
            wait_for(lambda: number(page.text_content("#lag-total")) is not None, timeout_s=60)
            wait_for(lambda: int(page.get_attribute("#chart-rate", "data-points") or 0) >= 2, timeout_s=60)
            assert int(page.get_attribute("#chart-lag-partitions", "data-points") or 0) >= 6
            assert page.locator("#chart-rate path").count() >= 1
            assert page.locator("#chart-scenes rect").count() >= 1
            p50, p99 = number(page.text_content("#fresh-p50")), number(page.text_content("#fresh-p99"))
            assert p50 is not None and p99 is not None and p99 >= p50
            first_row = page.locator("#table-quality .quality-row").first.text_content() or ""
            assert re.search(r"(browsing|shopping|post_purchase)", first_row)

            # user lookup: scene, recent interactions and the latest list with reasons
            user = next(u for u in users if worker.get(f"/users/{u}/recommendations").status_code == 200)
            page.fill("#user-id", user)
            page.click("#lookup button")
            page.wait_for_selector("#user-list", timeout=30_000)
            assert page.text_content("#user-scene") in {"browsing", "shopping", "post_purchase"}
            assert page.locator("#user-list tr").count() >= 2
            reasons = page.locator("#user-list tr td:nth-child(4)").all_text_contents()
            assert all(r.strip() for r in reasons)

            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            context.close()
        assert shot.stat().st_size > 10_000
        DOCS_IMG.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_IMG)
        print(f"dashboard screenshot: {shot} (copied to {DOCS_IMG})")
    finally:
        stop.set()
        sender.join(timeout=60)
