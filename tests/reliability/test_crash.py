"""SIGKILL the worker at random moments while events flow; nothing is lost and nothing counts twice.

The reference ("clean run") is the pure fold of models/profile.py over every distinct event, in the
order the profile agent first read it from streamrec.events: one application per event. The worker's
state must equal it exactly (counts, purchases) and within 1e-9 (interests, item weights). Scene and
intent are not compared: they come from the shared online scene model, whose state depends on how
all users' events interleave in one process, which a crash legitimately changes (docs/RELIABILITY.md).
Order-free fields (counts per type, accepted, purchased set) are also checked against the events as
generated, with no pipeline in between.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable

import httpx
import orjson
import pytest

from app.runtime.records import decode_users
from app.runtime.settings import Settings
from app.tools.process import WorkerProcess
from models.profile import ProfileParams, UserProfile, apply_event, event_kind, new_profile
from schemas import topics
from schemas.events import Purchase, UserEvent
from schemas.validation import Limits, Rejection, decode_event, encode_event
from tests.reliability.conftest import Cluster, now_ms, report, scale, shop_events

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

FLOAT_TOL = 1e-9


def reference_profiles(delivered: list[UserEvent]) -> dict[str, UserProfile]:
    params = ProfileParams.from_settings(Settings())
    profiles: dict[str, UserProfile] = {}
    seen: dict[str, set[str]] = defaultdict(set)
    for event in delivered:
        if event.event_id in seen[event.user_id]:
            continue
        seen[event.user_id].add(event.event_id)
        profile = profiles.setdefault(event.user_id, new_profile(event.user_id))
        apply_event(profile, event, params, None)
    return profiles


def mismatches(actual: dict, expected: UserProfile) -> list[str]:
    """Field-by-field differences of one user's stored profile against the reference."""
    out = []
    if actual["counts"] != expected.counts:
        out.append(f"counts {actual['counts']} != {expected.counts}")
    if actual["accepted"] != expected.accepted:
        out.append(f"accepted {actual['accepted']} != {expected.accepted}")
    if set(actual["purchased"]) != set(expected.purchased):
        out.append("purchased set differs")
    for name in ("short_cat", "long_cat"):
        got, want = actual[name], getattr(expected, name)
        if set(got) != set(want) or any(abs(got[k] - want[k]) > FLOAT_TOL for k in want):
            out.append(f"{name} differs")
    got_items, want_items = actual["items"], expected.items
    if set(got_items) != set(want_items) or any(abs(got_items[k][0] - want_items[k][0]) > FLOAT_TOL
                                                for k in want_items):
        out.append("item weights differ")
    return out


def kill_during_recovery(cluster: Cluster, timeout_s: float = 120.0) -> bool:
    """Start a worker with no local table state and SIGKILL it while it restores from the changelogs.

    Recovery begins by probing the changelogs' high watermarks (app/runtime/faust_fixes/highwater.py logs it), so a kill
    right after that line lands inside recovery. Returns True if it did (the worker was not ready)."""
    log = cluster.data_dir / "worker.log"
    start = log.stat().st_size if log.exists() else 0
    worker = cluster.worker(fresh_state=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with open(log, "rb") as handle:
            handle.seek(start)
            if b"table recovery: high watermarks" in handle.read():
                worker.kill()
                try:
                    return not worker.get("/readyz", timeout=0.5).json()["ready"]
                except httpx.HTTPError:
                    return True  # killed before it served HTTP: not ready
        time.sleep(0.005)
    worker.kill()
    return False


def test_sigkill_at_random_moments_loses_and_double_counts_nothing(cluster: Cluster) -> None:
    n_events, n_kills = scale(12_000, 100_000), scale(3, 6)
    rng = random.Random(5)
    events = shop_events(n_events, n_users=scale(400, 3000), seed=11)
    rate = n_events / (n_kills * 10.0)  # spread the load over the kill cycle

    sender = threading.Thread(target=cluster.send_events, args=(events, rate), daemon=True)
    sender.start()
    kills, recovery_kills, t_start = 0, 0, time.monotonic()
    for i in range(n_kills):
        if i == 1:  # once: kill during a table changelog recovery (no local RocksDB -> full restore)
            recovery_kills += kill_during_recovery(cluster)
            kills += 1
            continue
        worker = cluster.worker()
        worker.wait_ready(timeout_s=180)
        time.sleep(rng.uniform(0.5, 6.0))
        worker.kill()
        kills += 1
    sender.join(timeout=600)
    assert not sender.is_alive()

    final = cluster.worker()
    t_restart = time.monotonic()
    final.wait_ready(timeout_s=180)
    ready_s = time.monotonic() - t_restart
    drain_s = cluster.wait_drained(final, timeout_s=scale(300, 900))
    stats = final.stats()

    delivered = cluster.delivered_events()
    reference = reference_profiles(delivered)
    stored = cluster.stored_profiles()
    sent_ids = {e.event_id for e in events}
    by_user: dict[str, list[UserEvent]] = defaultdict(list)
    for event in events:
        by_user[event.user_id].append(event)

    # Every sent event reached the profile agent, and nothing else did.
    delivered_ids = {e.event_id for e in delivered}
    assert delivered_ids == sent_ids, explain_missing(cluster, sent_ids - delivered_ids, delivered_ids - sent_ids,
                                                      stats)
    bad: dict[str, list[str]] = {}
    for user, user_events in by_user.items():
        actual = stored.get(user)
        if actual is None:
            bad[user] = ["no stored profile"]
            continue
        problems = mismatches(actual, reference[user])
        generated = Counter(event_kind(e) for e in user_events)
        if {k: v for k, v in actual["counts"].items() if v} != dict(generated):
            problems.append(f"counts {actual['counts']} != generated {dict(generated)}")
        bought = {line.item_id for e in user_events if isinstance(e, Purchase) for line in e.items}
        if len(bought) <= 200 and set(actual["purchased"]) != bought:
            problems.append("purchased set != generated")
        if problems:
            bad[user] = problems
    assert not bad, (f"{len(bad)} users differ, e.g. {list(bad.items())[:3]}\n{explain_order(cluster, final, bad)}\n"
                     f"{explain_unrefreshed(cluster, [u for u, p in bad.items() if p == ['no stored profile']])}")

    # Versions strictly increasing per user, in log order.
    versions: dict[str, list[int]] = defaultdict(list)
    for message in cluster.read_topic(topics.RECOMMENDATIONS):
        record = orjson.loads(message.value)
        versions[record["user_id"]].append(record["version"])
    assert set(versions) >= set(by_user)
    assert all(v == sorted(set(v)) for v in versions.values())

    # The ledger: consumed = accepted + duplicates + dead-lettered, and each event accepted once.
    assert stats["profile.accepted"] == n_events
    assert stats["ingest.consumed"] == (stats["profile.accepted"] + stats.get("profile.duplicates", 0)
                                        + stats.get("ingest.deadlettered", 0)), stats
    assert not any(cluster.lag().values())
    assert recovery_kills == 1, "the kill meant for changelog recovery landed outside it"
    report("SIGKILL (1 during changelog recovery)" if recovery_kills else "SIGKILL",
           injected=kills, during_recovery=recovery_kills, events_sent=n_events,
           events_accounted=stats["profile.accepted"], duplicates=stats.get("profile.duplicates", 0),
           reforwarded=stats.get("profile.redelivered", 0), state_mismatches=len(bad),
           restart_to_ready_s=round(ready_s, 1), drain_s=round(drain_s, 1),
           total_s=round(time.monotonic() - t_start, 1))


def explain_missing(cluster: Cluster, missing: set[str], extra: set[str], stats: dict) -> str:
    """What became of events that never reached the profile agent: dead-lettered (with the reason) or
    not found at all, with the worker's counters."""
    reasons: Counter[str] = Counter()
    for message in cluster.read_topic(topics.DEADLETTER):
        try:
            event_id = orjson.loads(message.value).get("event_id")
        except (orjson.JSONDecodeError, AttributeError):
            continue
        if event_id in missing:
            reasons[dict(message.headers).get("reason", b"?").decode()] += 1
    return (f"{len(missing)} sent events never reached streamrec.events (e.g. {sorted(missing)[:5]}), "
            f"dead-lettered: {dict(reasons)}, not found anywhere: {len(missing) - sum(reasons.values())}; "
            f"{len(extra)} unexpected; worker stats {stats}")


def explain_unrefreshed(cluster: Cluster, users: list[str], most: int = 5) -> str:
    """For users the refresh never stored: the streamrec.refresh messages that listed them, the lists
    published for them, and the worker group's committed offsets on streamrec.refresh, so a failure says
    whether the refresh message was never written, committed over unprocessed, or processed without a list."""
    if not users:
        return ""
    try:
        wanted = set(sorted(users)[:most])
        listed: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for message in cluster.read_topic(topics.REFRESH):
            for user in decode_users(message.value):
                if user in wanted:
                    listed[user].append((message.partition, message.offset))
        lists = Counter(orjson.loads(m.value)["user_id"] for m in cluster.read_topic(topics.RECOMMENDATIONS)
                        if m.value and orjson.loads(m.value)["user_id"] in wanted)
        committed = {f"{tp.topic}/{tp.partition}": offsets for tp, offsets in cluster.group_offsets().items()
                     if tp.topic == topics.REFRESH}
        return "\n".join([f"{u}: listed on streamrec.refresh at (partition, offset) {listed.get(u, [])[:10]}, "
                          f"{lists.get(u, 0)} lists published" for u in sorted(wanted)]
                         + [f"streamrec.refresh (committed, highwater): {committed}"])
    except Exception as exc:  # noqa: BLE001 - a diagnosis must never hide the failure it explains
        return f"explain_unrefreshed failed: {exc!r}"


def explain_order(cluster: Cluster, worker: WorkerProcess, users: Iterable[str], most: int = 3) -> str:
    """Where the worker applied a mismatched user's events, against where the profile agent first read them.

    The profile table's ledger (app/runtime/ledger.py) keeps, per recent event, the `streamrec.events` offset
    at which it was applied. An event applied at a later copy than its first (a re-forwarded
    duplicate) was skipped or undone at the first one: that is the offset to look for in the logs."""
    try:
        return _explain_order(cluster, worker, sorted(users)[:most])
    except Exception as exc:  # noqa: BLE001 - a diagnosis must never hide the failure it explains
        return f"explain_order failed: {exc!r}"


def _explain_order(cluster: Cluster, worker: WorkerProcess, users: list[str]) -> str:
    copies: dict[str, dict[str, list[tuple[int, int]]]] = {u: defaultdict(list) for u in users}
    for message in cluster.read_topic(topics.EVENTS):
        user = message.key.decode()
        if user in copies:
            copies[user][orjson.loads(message.value)["event_id"]].append((message.partition, message.offset))
    lines = []
    for user in users:
        row = worker.get(f"/users/{user}/state").json().get("profile") or {}
        ledger = row.get("_ledger", {})
        later = [(event_id, offsets[0][1], ledger[event_id][1]) for event_id, offsets in copies[user].items()
                 if event_id in ledger and ledger[event_id][1] != offsets[0][1]]
        lines.append(f"{user}: partition {sorted({p for o in copies[user].values() for p, _ in o})}, "
                     f"{len(copies[user])} events, {sum(map(len, copies[user].values()))} copies, "
                     f"{len(ledger)} in the ledger, applied at a later copy (event, first offset, applied offset): "
                     f"{later[:10]}")
    return "\n".join(lines)


def test_reference_fold_detects_a_double_count() -> None:
    """The comparison above is not vacuous: applying one event twice (no dedupe) is a mismatch."""
    events = shop_events(300, n_users=3, seed=2)
    reference = reference_profiles(events)
    user = events[0].user_id
    params = ProfileParams.from_settings(Settings(), dedupe_window=1)
    doubled = new_profile(user)
    mine = [e for e in events if e.user_id == user]
    for event in [*mine, mine[0]]:
        apply_event(doubled, event, params, None)
    assert mismatches(orjson.loads(orjson.dumps(doubled.to_dict())), reference[user])


@pytest.mark.parametrize(("n_events", "n_users", "seed"), [(100_000, 3000, 11), (30_000, 200, 21), (10_000, 100, 22)])
def test_generated_events_are_all_valid_at_full_size(n_events: int, n_users: int, seed: int) -> None:
    """The fault tests count every sent event as accepted, so their generator must make valid ones only:
    it once ran the simulated clock 88 h past now at 30,000 events, and ingest rightly dead-lettered
    half of them as future events."""
    now = now_ms()
    for event in shop_events(n_events, n_users=n_users, seed=seed):
        topic = topics.TOPIC_BY_TYPE[type(event).__name__.lower()]
        result = decode_event(encode_event(event), topic, Limits(), now)
        assert not isinstance(result, Rejection), result
