"""The dashboard, served by the session's real worker on a real broker during a paced replay, in headless Chromium.

Chromium is Debian's package (scripts/install_test.sh installs it), driven by playwright-python with
executable_path (no browser download). What the page shows is checked against the worker, not against "> 0":
- every figure (every element with ``data-field``) equals the value in the document the page rendered, and
  every counter lies between two `/stats` reads taken just before and just after the page's poll; once the
  replay has drained and `/stats` stands still, every counter equals `/stats` exactly;
- events/s is above 0 whenever `/stats` shows the consumed counter moved inside the rate window, and falls
  to 0 once it stands still; each chart draws exactly its series from the document;
- at 1400x1000 and 1024x768 no element leaves its panel, nothing scrolls sideways and no two pieces of text
  overlap (the checker is first shown to catch a planted overflow and a planted overlap).
Screenshots go to the test's tmp dir; ``STREAMREC_DASHBOARD_SCREENSHOT=docs/img/dashboard.png`` copies the
live 1400x1000 one there (the documented way to refresh the picture in docs/CONSUMING.md).
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from app.serving.dashboard import RATE_WINDOW_S
from app.tools.process import WorkerProcess
from app.tools.simulator import simulate
from schemas.events import CatalogItem
from tests.integration.conftest import Kafka
from tests.waiting import wait_for

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync"]
VIEWPORTS = [(1400, 1000), (1024, 768)]
NONE = "–"  # what the page shows for a value the worker does not have
UNIT = {"int": 0.5, "dec1": 0.05, "pct": 0.0005}  # half the last digit each format shows
MISSING = object()

# poll now (window.dashboard.refresh) and read, in the same JS turn, the document on screen, every figure
# and every chart's data: no other poll can render in between
SNAPSHOT_JS = """async () => {
  const doc = await window.dashboard.refresh();
  const figures = [...document.querySelectorAll("[data-field]")].map(el => ({
    field: el.dataset.field, format: el.dataset.format || "int", fallback: el.dataset.default ?? null,
    text: el.textContent}));
  const charts = Object.fromEntries(Object.entries(window.dashboard.charts).map(([id, c]) => [id, {
    labels: c.data.labels ?? null, datasets: c.data.datasets.map(s => ({label: s.label, data: s.data}))}]));
  return {doc, figures, charts};
}"""

# every element of every panel (and the header) inside its panel, no sideways scrolling, no overlapping text
LAYOUT_JS = """() => {
  const problems = [], eps = 0.5;
  const name = el => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
    (typeof el.className === "string" && el.className ? "." + el.className.trim().split(/\\s+/).join(".") : "");
  const box = r => `[${r.left.toFixed(1)}..${r.right.toFixed(1)} x ${r.top.toFixed(1)}..${r.bottom.toFixed(1)}]`;
  const root = document.documentElement;
  if (root.scrollWidth > root.clientWidth) problems.push(`page scrolls sideways: ${root.scrollWidth} > ${root.clientWidth}`);
  for (const panel of document.querySelectorAll("header, main > section")) {
    const p = panel.getBoundingClientRect(), where = name(panel);
    for (const el of [panel, ...panel.querySelectorAll("*")]) {
      const r = el.getBoundingClientRect();
      if (r.width === 0 && r.height === 0) continue;  // not rendered
      if (el !== panel && (r.left < p.left - eps || r.right > p.right + eps || r.top < p.top - eps || r.bottom > p.bottom + eps))
        problems.push(`${where}: ${name(el)} ${box(r)} leaves the panel ${box(p)}`);
      if (el.clientWidth > 0 && el.scrollWidth > el.clientWidth)
        problems.push(`${where}: ${name(el)} overflows: scrollWidth ${el.scrollWidth} > clientWidth ${el.clientWidth}`);
    }
    const texts = [], walker = document.createTreeWalker(panel, NodeFilter.SHOW_TEXT);
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
      if (!n.textContent.trim()) continue;
      const range = document.createRange();
      range.selectNodeContents(n);
      for (const r of range.getClientRects()) if (r.width > 0 && r.height > 0) texts.push([n.textContent.trim(), r]);
    }
    for (let i = 0; i < texts.length; i++) for (let j = i + 1; j < texts.length; j++) {
      const [a, ra] = texts[i], [b, rb] = texts[j];
      const w = Math.min(ra.right, rb.right) - Math.max(ra.left, rb.left);
      const h = Math.min(ra.bottom, rb.bottom) - Math.max(ra.top, rb.top);
      if (w > 2 && h > 2) problems.push(`${where}: text ${JSON.stringify(a)} ${box(ra)} overlaps ${JSON.stringify(b)} ${box(rb)}`);
    }
  }
  return problems;
}"""

PLANT_JS = """() => {
  const wide = document.createElement("div");
  wide.id = "planted-wide"; wide.style.width = "3000px"; wide.textContent = "planted";
  document.querySelector("#panel-quality").appendChild(wide);
  const both = document.createElement("div");
  both.id = "planted-overlap"; both.style.position = "relative"; both.style.height = "20px";
  both.innerHTML = '<span style="position:absolute;left:0">p50 ms</span><span style="position:absolute;left:6px">p99 ms</span>';
  document.querySelector("#panel-freshness").appendChild(both);
}"""
UNPLANT_JS = "() => { document.getElementById('planted-wide').remove(); document.getElementById('planted-overlap').remove(); }"
# two frames (Chart.js resizes on the next one), or 1 s if a loaded machine delays frames
SETTLE_JS = """() => new Promise(r => { requestAnimationFrame(() => requestAnimationFrame(r)); setTimeout(r, 1000); })"""


def chromium_binary() -> str | None:
    real = Path("/usr/lib/chromium/chromium")  # Debian's binary behind the /usr/bin/chromium wrapper script
    return str(real) if real.exists() else shutil.which("chromium")


def at(doc: Any, path: str) -> Any:
    for part in path.split("/"):
        if isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        elif isinstance(doc, dict) and part in doc:
            doc = doc[part]
        else:
            return MISSING
    return doc


def shown_number(text: str, fmt: str) -> float:
    text = text.strip().replace(",", "")
    return float(text.removesuffix("%")) / 100 if fmt == "pct" else float(text)


def figure_problems(doc: dict, figures: list[dict]) -> list[str]:
    """Every figure on the page against the document it was rendered from (within the digits it shows)."""
    problems = []
    for f in figures:
        value, fmt, text = at(doc, f["field"]), f["format"], f["text"].strip()
        if value is MISSING and f["fallback"] is not None:
            value = float(f["fallback"])
        if value is None or value is MISSING:
            ok = text == NONE
        elif fmt == "text":
            ok = text == str(value)
        elif fmt == "version":  # the version's last part after "…", the full one in the cell's title
            ok = text.startswith("…") and str(value).endswith("-" + text[1:])
        else:
            ok = text != NONE and abs(shown_number(text, fmt) - value) <= UNIT[fmt] * 1.001
        if not ok:
            problems.append(f"{f['field']}: shows {text!r}, the document has {value!r}")
    return problems


def counters_shown(figures: list[dict]) -> dict[str, float]:
    return {f["field"].removeprefix("counters/"): shown_number(f["text"], "int")
            for f in figures if f["field"].startswith("counters/")}


def chart_problems(doc: dict, charts: dict) -> list[str]:
    """Each chart draws exactly its part of the document."""
    def xy(points: list) -> list[dict]:
        return [{"x": x, "y": y} for x, y in points]

    series = doc["series"]
    expected = {
        "chart-rate": [xy(series["events_per_s"])],
        "chart-lag-history": [xy(series["lag_total"])],
        "chart-freshness": [xy(series["freshness_p50_ms"]), xy(series["freshness_p99_ms"])],
    }
    lag = [s for s in doc["lag"] if s["lag"] is not None and (not s["topic"].startswith("reco.") or s["lag"] > 0)]
    rows, scenes = doc["quality"]["by_scene_model"], doc["quality"]["scenes"]
    problems = [f"{cid}: draws {[s['data'] for s in charts[cid]['datasets']]}, the document has {want}"
                for cid, want in expected.items() if [s["data"] for s in charts[cid]["datasets"]] != want]
    lag_labels = [re.sub(r"^(streamrec|ecom)\.", "", s["topic"]) + "/" + str(s["partition"]) for s in lag]
    if charts["chart-lag-partitions"]["labels"] != lag_labels or \
            charts["chart-lag-partitions"]["datasets"][0]["data"] != [s["lag"] for s in lag]:
        problems.append(f"chart-lag-partitions: {charts['chart-lag-partitions']} against {lag}")
    if charts["chart-scenes"]["labels"] != list(scenes) or \
            charts["chart-scenes"]["datasets"][0]["data"] != list(scenes.values()):
        problems.append(f"chart-scenes: {charts['chart-scenes']} against {scenes}")
    ctr = charts["chart-ctr"]  # per model version (in order of appearance) a CTR and a conversion dataset
    versions = list(dict.fromkeys(r["model_version"] for r in rows))
    if ctr["labels"] != list(dict.fromkeys(r["scene"] for r in rows)) or len(ctr["datasets"]) != 2 * len(versions):
        problems.append(f"chart-ctr: {ctr} against {rows}")
        return problems
    for row in rows:
        i, j = versions.index(row["model_version"]), ctr["labels"].index(row["scene"])
        drawn = ctr["datasets"][2 * i]["data"][j], ctr["datasets"][2 * i + 1]["data"][j]
        if drawn != (row["ctr"], row["conversion_rate"]):
            problems.append(f"chart-ctr: {row['scene']} {row['model_version']} drawn as {drawn}, the document has {row}")
    return problems


def test_dashboard_shows_the_workers_figures_and_fits_its_panels(worker: WorkerProcess, kafka: Kafka,
                                                                  tmp_path: Path) -> None:
    binary = chromium_binary()
    if binary is None:
        pytest.fail("Debian's chromium is not installed: scripts/install_test.sh installs it")
    from playwright.sync_api import sync_playwright

    events = [e for e in simulate(n_users=60, n_items=600, n_categories=12, n_events=1_800, seed=11,
                                  start_ts_ms=int(time.time() * 1000) - 60_000) if not isinstance(e, CatalogItem)]
    users = sorted({e.user_id for e in events})
    consumed_before = worker.stats().get("ingest.consumed", 0)
    stop = threading.Event()

    def replay() -> None:
        """Bursts of 150 events 3 s apart, stamped with send time: a stream that keeps flowing while the
        consumed counter stands still for seconds between bursts (where a rate between two polls read 0)."""
        for start in range(0, len(events), 150):
            if stop.is_set():
                return
            now = int(time.time() * 1000)
            kafka.send_events([msgspec.structs.replace(e, ts=now) for e in events[start:start + 150]])
            time.sleep(3.0)

    def snapshot(page) -> tuple[dict, dict, dict]:
        """/stats, the page's fresh poll, /stats: the figures lie between the two reads."""
        before = worker.stats()
        shown = page.evaluate(SNAPSHOT_JS)
        return before, shown, worker.stats()

    sender = threading.Thread(target=replay, daemon=True)
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(str(tmp_path / "chromium-profile"),
                                                            executable_path=binary, args=FLAGS, headless=True,
                                                            viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("requestfailed", lambda r: errors.append(f"{r.url}: {r.failure}"))
            page.goto(f"{worker.url}/dashboard")
            assert page.evaluate("() => [typeof Chart, typeof window.dashboard]") == ["function", "object"], errors
            sender.start()

            # while events flow: figures bracketed by /stats, events/s never 0 while the counter moves
            consumed_seen: list[tuple[float, int]] = []
            rate_checked = 0
            live_shot = tmp_path / "dashboard-live-1400x1000.png"
            while sender.is_alive():
                t = time.monotonic()
                before, shown, after = snapshot(page)
                consumed_seen.append((t, before.get("ingest.consumed", 0)))
                assert figure_problems(shown["doc"], shown["figures"]) == []
                for key, value in counters_shown(shown["figures"]).items():
                    assert before.get(key, 0) <= value <= after.get(key, 0), (key, before, value, after)
                # the counter moved between two of our reads 3-8 s ago, inside the page's 10 s window
                recent = [c for s, c in consumed_seen if t - (RATE_WINDOW_S - 2) <= s <= t - 3]
                if len(recent) >= 2 and recent[-1] > recent[0]:
                    rate_checked += 1
                    assert (shown["doc"]["throughput"]["events_per_s"] or 0) > 0, (consumed_seen, shown["doc"])
                halfway = before.get("ingest.consumed", 0) - consumed_before >= len(events) // 2
                listed = [u for u in users if worker.get(f"/users/{u}/recommendations").status_code == 200] \
                    if halfway and not live_shot.exists() else []
                if listed:  # mid-replay: the picture for the docs, with a user looked up
                    page.fill("#user-id", listed[0])
                    page.click("#lookup button")
                    page.wait_for_selector("#user-list")
                    page.screenshot(path=str(live_shot), full_page=True)
                time.sleep(0.7)
            assert rate_checked >= 5, f"only {rate_checked} reads saw the counter move: {consumed_seen}"
            if not live_shot.exists():  # the worker was still behind the first half when the replay ended
                page.screenshot(path=str(live_shot), full_page=True)

            # drained and standing still: every counter equals /stats, events/s falls to 0
            wait_for(lambda: worker.stats().get("ingest.consumed", 0) >= consumed_before + len(events), timeout_s=120)

            unchanged: dict[str, Any] = {}

            def still() -> tuple[dict, dict] | None:
                """/stats unchanged for 5 s (every list published), and across the page's poll."""
                before, shown, after = snapshot(page)
                if before != after or unchanged.get("stats") != after:
                    unchanged.update(stats=after, since=time.monotonic())
                    return None
                return (after, shown) if time.monotonic() - unchanged["since"] >= 5 else None

            frozen, shown = wait_for(still, timeout_s=90, interval_s=1.0,  # type: ignore[misc]
                                     what="/stats to stand still for 5 s, across a poll of the page")
            assert figure_problems(shown["doc"], shown["figures"]) == []
            counters = counters_shown(shown["figures"])
            assert counters == {key: frozen.get(key, 0) for key in counters}
            assert counters["ingest.consumed"] >= consumed_before + len(events)

            def rate_is_zero() -> bool:
                before, shown, after = snapshot(page)
                assert before == after == frozen, "the pipeline moved after it stood still"
                return shown["doc"]["throughput"]["events_per_s"] == 0

            wait_for(rate_is_zero, timeout_s=RATE_WINDOW_S + 20, interval_s=1.0,
                     what="events/s to fall to 0 a window after the counter stopped")
            assert page.text_content("#events-per-s") == "0.0"

            # the user lookup shows the list the API serves (frozen: the same one)
            user = next(u for u in users if worker.get(f"/users/{u}/recommendations").status_code == 200)
            served = worker.get(f"/users/{user}/recommendations").json()
            page.fill("#user-id", user)
            page.click("#lookup button")
            page.wait_for_function("version => (document.querySelector('#user-list-title') || {}).textContent"
                                   "?.includes('version ' + version + ',')", arg=served["version"])
            assert page.text_content("#user-scene") == served["scene"]
            assert page.locator("#user-list tbody tr td:nth-child(2)").all_text_contents() == \
                [item["item_id"] for item in served["items"]]
            assert all(r.strip() for r in page.locator("#user-list tbody tr td:nth-child(4)").all_text_contents())

            # the layout checker catches what it is meant to catch
            page.evaluate(PLANT_JS)
            planted = page.evaluate(LAYOUT_JS)
            assert any("planted-wide" in p for p in planted), planted
            assert any('"p50 ms"' in p and '"p99 ms"' in p for p in planted), planted
            page.evaluate(UNPLANT_JS)

            for width, height in VIEWPORTS:
                page.set_viewport_size({"width": width, "height": height})
                page.evaluate(SETTLE_JS)
                before, shown, after = snapshot(page)
                page.evaluate(SETTLE_JS)  # Chart.js resizes on the next frames
                assert before == after == frozen
                assert figure_problems(shown["doc"], shown["figures"]) == []
                assert counters_shown(shown["figures"])["ingest.consumed"] == frozen["ingest.consumed"]
                assert chart_problems(shown["doc"], shown["charts"]) == []
                assert all(len(s["data"]) > 0 for c in shown["charts"].values() for s in c["datasets"]), shown["charts"]
                assert page.evaluate(LAYOUT_JS) == [], f"at {width}x{height}"
                page.screenshot(path=str(tmp_path / f"dashboard-{width}x{height}.png"), full_page=True)
            assert errors == []
            context.close()
        assert live_shot.stat().st_size > 10_000
        if target := os.environ.get("STREAMREC_DASHBOARD_SCREENSHOT"):
            shutil.copyfile(live_shot, target)
        print(f"dashboard screenshots in {tmp_path}")
    finally:
        stop.set()
        if sender.is_alive():
            sender.join(timeout=60)
