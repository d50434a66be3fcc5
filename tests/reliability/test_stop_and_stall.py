"""Graceful stop under load, stop with the broker frozen, and a 20 s broker stall (SIGSTOP/SIGCONT)."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from app.tools.process import WorkerProcess
from tests.reliability.conftest import Cluster, report, scale, shop_events

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

STOP_LIMIT_S = 10.0  # the requirement for SIGTERM -> exit
STALL_S = 20.0


def sigterm(worker, limit_s: float = STOP_LIMIT_S) -> tuple[int | None, float]:
    """SIGTERM and wait up to limit_s; returns (exit code or None if still running, seconds)."""
    assert worker.proc is not None
    t0 = time.monotonic()
    worker.proc.terminate()
    try:
        code = worker.proc.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        code = None
    return code, time.monotonic() - t0


def assert_all_accepted(cluster: Cluster, events: list, stats: dict, worker: WorkerProcess) -> None:
    assert stats["profile.accepted"] == len(events)
    assert stats["ingest.consumed"] == stats["profile.accepted"] + stats.get("profile.duplicates", 0) + \
        stats.get("ingest.deadlettered", 0)
    stored = cluster.stored_profiles()
    per_user: dict[str, int] = {}
    for event in events:
        per_user[event.user_id] = per_user.get(event.user_id, 0) + 1
    stale = {u for u in per_user if u in stored and stored[u]["accepted"] != per_user[u]}
    assert not stale, f"{len(stale)} users' stored profiles miss events:\n{cluster.explain_stale(stale, worker)}"
    assert set(stored) >= set(per_user)


def test_sigterm_during_load_exits_in_time_and_loses_nothing(cluster: Cluster) -> None:
    events = shop_events(scale(6_000, 30_000), n_users=200, seed=21)
    worker = cluster.worker()
    worker.wait_ready(timeout_s=180)
    sender = threading.Thread(target=cluster.send_events, args=(events, len(events) / 12.0), daemon=True)
    sender.start()
    time.sleep(5.0)
    code, stop_s = sigterm(worker)
    assert code is not None, f"worker still running {STOP_LIMIT_S}s after SIGTERM:\n{worker.log_tail()}"
    sender.join(timeout=300)

    again = cluster.worker()
    again.wait_ready(timeout_s=180)
    cluster.wait_drained(again)
    stats = again.stats()
    assert_all_accepted(cluster, events, stats, again)
    report("SIGTERM under load", injected=1, events_sent=len(events), events_accounted=stats["profile.accepted"],
           state_mismatches=0, exit_code=code, stop_s=round(stop_s, 1),
           reforwarded=stats.get("profile.redelivered", 0))


def test_sigterm_with_the_broker_frozen_still_exits(cluster: Cluster) -> None:
    """DESIGN.md §5: with the broker gone a Faust worker once ignored SIGTERM."""
    events = shop_events(scale(2_000, 10_000), n_users=100, seed=22)
    worker = cluster.worker()
    worker.wait_ready(timeout_s=180)
    cluster.send_events(events)
    time.sleep(1.0)
    cluster.broker.freeze()
    try:
        code, stop_s = sigterm(worker)
    finally:
        cluster.broker.thaw()
    assert code is not None, f"worker still running {STOP_LIMIT_S}s after SIGTERM:\n{worker.log_tail()}"

    again = cluster.worker()
    again.wait_ready(timeout_s=180)
    cluster.wait_drained(again)
    stats = again.stats()
    assert_all_accepted(cluster, events, stats, again)
    report("SIGTERM with broker frozen", injected=1, events_sent=len(events),
           events_accounted=stats["profile.accepted"], state_mismatches=0, exit_code=code, stop_s=round(stop_s, 1))


def test_broker_frozen_for_20s_worker_survives_and_loses_nothing(cluster: Cluster) -> None:
    events = shop_events(scale(6_000, 30_000), n_users=200, seed=23)
    worker = cluster.worker()
    worker.wait_ready(timeout_s=180)
    pid = worker.proc.pid if worker.proc else None
    sender = threading.Thread(target=cluster.send_events, args=(events, len(events) / 20.0), daemon=True)
    sender.start()
    time.sleep(4.0)
    cluster.broker.freeze()
    time.sleep(STALL_S)
    cluster.broker.thaw()
    thawed = time.monotonic()
    sender.join(timeout=300)
    drain_s = cluster.wait_drained(worker, timeout_s=scale(300, 900))
    recovery_s = time.monotonic() - thawed
    assert worker.proc is not None and worker.proc.poll() is None and worker.proc.pid == pid
    stats = worker.stats()
    assert_all_accepted(cluster, events, stats, worker)
    report("broker SIGSTOP 20 s", injected=1, events_sent=len(events), events_accounted=stats["profile.accepted"],
           state_mismatches=0, recovery_s=round(recovery_s, 1), drain_s=round(drain_s, 1))
