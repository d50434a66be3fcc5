"""The shipped alert rules on a real Prometheus scraping a real worker's /metrics.

A worker on its own broker gets a steady stream of shop events. Then the refresh stage stops
consuming while events keep arriving: the test holds the write lock of the worker's real SQLite store,
so every refresh batch waits out the store's busy timeout, fails and is left unacknowledged (the
worker is alive, its lag sampler and /metrics keep working). StreamRecConsumerLagGrowing must go
pending and then firing for streamrec.refresh, and only for it. Then the worker is frozen (SIGSTOP):
a frozen worker exports nothing, its lag included, so StreamRecWorkerNotReady is the alert that fires.

Prometheus runs deploy/prometheus/prometheus.yml, changed only in its target addresses and intervals
(1 s), and a copy of deploy/prometheus/alerts.yml whose `for:` durations are all FOR (the documented
substitution; thresholds and windows are the shipped ones, so the lag alert needs a backlog over 60 s old).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
import yaml
from aiokafka import AIOKafkaProducer

from app.runtime.broker import EmbeddedBroker, free_port
from app.runtime.kafka import ensure_topics
from app.runtime.settings import Settings
from app.tools.process import WorkerProcess
from app.tools.simulator import simulate
from schemas import topics
from schemas.events import CatalogItem
from schemas.validation import encode_event

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
INTERVAL = "1s"
FOR = "5s"
RATE = 40.0  # events/s: far below what a worker sustains, so only the stalled stage falls behind
LAG_ALERT = "StreamRecConsumerLagGrowing"
READY_ALERT = "StreamRecWorkerNotReady"


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    assert found, "no prometheus binary: scripts/install_test.sh installs Debian's prometheus package"
    return found


def scrape_config(worker: str, prometheus: str) -> dict:
    """The shipped config with the worker and Prometheus at these addresses and 1 s intervals."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval=INTERVAL, scrape_timeout=INTERVAL, evaluation_interval=INTERVAL)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    del jobs["streamrec-worker"]["dns_sd_configs"]
    jobs["streamrec-worker"]["static_configs"] = [{"targets": [worker]}]
    jobs["prometheus"]["static_configs"] = [{"targets": [prometheus]}]
    return config


def short_rules() -> dict:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = FOR
    return rules


def alert_inputs() -> set[str]:
    """Every series name the shipped alert expressions read (quoted label values and functions aside)."""
    names: set[str] = set()
    for group in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            expr = re.sub(r'"[^"]*"', "", rule["expr"])
            names.update(m.group(1) for m in re.finditer(r"\b([a-z]+(?:_[a-z]+)+)\b(?!\s*\()", expr))
    return names


@contextlib.contextmanager
def running_prometheus(tmp_path: Path, worker_address: str) -> Iterator[str]:
    port = free_port()
    address = f"127.0.0.1:{port}"
    conf_dir = tmp_path / "prometheus"
    conf_dir.mkdir()
    (conf_dir / "prometheus.yml").write_text(yaml.safe_dump(scrape_config(worker_address, address)))
    (conf_dir / "alerts.yml").write_text(yaml.safe_dump(short_rules()))
    log = open(conf_dir / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([prometheus_binary(), f"--config.file={conf_dir / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address={address}"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://{address}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (conf_dir / "prometheus.log").read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/-/ready", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "prometheus not ready in 60 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def alerts(url: str) -> list[dict]:
    body = httpx.get(url + "/api/v1/alerts", timeout=5).json()
    assert body["status"] == "success", body
    return body["data"]["alerts"]


def target_health(url: str) -> str | None:
    for target in httpx.get(url + "/api/v1/targets", timeout=5).json()["data"]["activeTargets"]:
        if target["labels"]["job"] == "streamrec-worker":
            return target["health"]
    return None


def wait_for_alert(url: str, name: str, state: str, timeout_s: float,
                   **labels: str) -> tuple[dict, list[tuple[str, float]]]:
    """Poll /api/v1/alerts until alert `name` with `labels` is in `state`; returns it and each state
    seen with the monotonic time it was first seen."""
    deadline = time.monotonic() + timeout_s
    seen: list[tuple[str, float]] = []
    while time.monotonic() < deadline:
        for alert in alerts(url):
            if alert["labels"]["alertname"] == name and all(alert["labels"].get(k) == v for k, v in labels.items()):
                if not seen or seen[-1][0] != alert["state"]:
                    seen.append((alert["state"], time.monotonic()))
                if alert["state"] == state:
                    return alert, seen
        time.sleep(0.5)
    raise AssertionError(f"{name} {labels} not {state} within {timeout_s:.0f} s (states seen: {seen}); "
                         f"active alerts: {alerts(url)}")


class Sender(threading.Thread):
    """Produces shop events at RATE per second until stopped: the traffic that keeps arriving."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(daemon=True)
        self.bootstrap = bootstrap
        self.halt = threading.Event()
        self.sent = 0
        now = int(time.time() * 1000)
        self.events = [e for e in simulate(n_users=150, n_items=400, n_categories=12, n_events=20_000, seed=20,
                                           start_ts_ms=now - 3_600_000) if not isinstance(e, CatalogItem)]

    def run(self) -> None:
        asyncio.run(self._send())

    async def _send(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        await producer.start()
        started = time.monotonic()
        try:
            for event in self.events:
                if self.halt.is_set():
                    break
                topic = topics.TOPIC_BY_TYPE[type(event).__name__.lower()]
                # keep event time behind wall time (the simulated clock runs faster): never "too far ahead"
                event = msgspec.structs.replace(event, ts=min(event.ts, int(time.time() * 1000)))
                await producer.send_and_wait(topic, encode_event(event), key=event.user_id.encode())
                self.sent += 1
                ahead = self.sent / RATE - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        finally:
            await producer.stop()


@pytest.fixture
def stack(tmp_path: Path, model_dir: Path) -> Iterator[tuple[WorkerProcess, Sender]]:
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        asyncio.run(ensure_topics(Settings(kafka_bootstrap=broker.bootstrap)))
        worker = WorkerProcess(broker.bootstrap, tmp_path / "worker",
                               env={"STREAMREC_MODEL_DIR": str(model_dir), "STREAMREC_VECTOR_DIM": "32"})
        sender = Sender(broker.bootstrap)
        with worker:
            try:
                worker.wait_ready(timeout_s=180)
                sender.start()
                yield worker, sender
            finally:
                sender.halt.set()
                if worker.proc is not None and worker.proc.poll() is None:
                    os.kill(worker.proc.pid, signal.SIGCONT)  # a stopped process never handles SIGTERM
                sender.join(timeout=30)


def test_lag_alert_fires_on_a_real_prometheus_when_the_worker_stops_consuming(
        stack: tuple[WorkerProcess, Sender], tmp_path: Path) -> None:
    worker, sender = stack
    with running_prometheus(tmp_path, f"127.0.0.1:{worker.port}") as prometheus:
        # Healthy first: lists flow, the worker is scraped and ready, and no alert is pending.
        deadline = time.monotonic() + 90
        while worker.stats().get("refresh.published", 0) == 0 or target_health(prometheus) != "up":
            assert time.monotonic() < deadline, f"no lists or no scrape in 90 s: {worker.stats()}\n{worker.log_tail()}"
            time.sleep(1)
        time.sleep(10)  # ten evaluations of healthy traffic
        exported = {line.split("{")[0].split(" ")[0] for line in worker.get("/metrics").text.splitlines()
                    if line and not line.startswith("#")}
        assert alert_inputs() <= exported, alert_inputs() - exported  # the rules read series the worker has
        assert "streamrec_ready 1.0" in worker.get("/metrics").text
        assert [a for a in alerts(prometheus) if a["labels"]["alertname"] in (LAG_ALERT, READY_ALERT)] == []

        # The refresh stage stops consuming: its store writes wait on the lock this test holds.
        lock = sqlite3.connect(worker.data_dir / "streamrec.db", timeout=30, isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            locked_at = time.monotonic()
            _, states = wait_for_alert(prometheus, LAG_ALERT, "firing", timeout_s=180, topic=topics.REFRESH)
            (pending, pending_at), (_, firing_at) = states  # pending first, for FOR, then firing
            assert pending == "pending", states
            print(f"ALERTING {LAG_ALERT}: pending {pending_at - locked_at:.1f} s and firing "
                  f"{firing_at - locked_at:.1f} s after the stall began")
            assert pending_at - locked_at > 60, "pending before the backlog was 60 s old: the age gate failed"
            assert "database is locked" in worker.log_tail(1_000_000)  # the stall is the one this test made
            stalled = {a["labels"].get("topic") for a in alerts(prometheus) if a["labels"]["alertname"] == LAG_ALERT}
            assert stalled == {topics.REFRESH}, stalled  # ingest and profile keep up: only the stuck stage
            assert sender.is_alive() and sender.sent > RATE * 60  # events kept arriving all along
            assert worker.stats()["ingest.consumed"] >= sender.sent * 0.9

            # Frozen: nothing is scraped any more, so the worker-not-ready alert is the one that fires.
            assert worker.proc is not None
            os.kill(worker.proc.pid, signal.SIGSTOP)
            alert, _ = wait_for_alert(prometheus, READY_ALERT, "firing", timeout_s=60)
            assert alert["labels"]["instance"] == f"127.0.0.1:{worker.port}"
            assert target_health(prometheus) == "down"
        finally:
            lock.close()  # ends the transaction, releases the lock
