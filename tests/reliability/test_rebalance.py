"""Workers joining and leaving one consumer group while events flow (issue 19): nothing lost, nothing twice.

Two workers share the group on a real broker while a paced producer runs; a third joins; then one
is SIGKILLed and one SIGTERMed, and the last takes over every partition. Each worker has its own
data dir and web port (RocksDB, milvus-lite) and all share one SQLite store, as they share Cassandra
at scale. At the end:

- every sent event reached the profile agent and the ledger is exact (as in test_crash.py);
- every user's state, in the shared store and in the survivor's table, equals the clean reference
  fold (test_crash.reference_profiles: each distinct event once, in first-read order);
- no event was applied twice, by two owners of a partition or one: each user's profile changelog
  is one linear history (every write's dedupe ring continues the previous write's ring, `accepted`
  grows by exactly the events added, and an event's ledger offset never changes), and each stats
  row's counted-offset ranges only grow, its counters by exactly the offsets newly counted;
- lists kept flowing in every phase, versions strictly increasing per user in reco.recommendations,
  and every user's newest list reflects their newest event.

Recovery is measured per membership change: to the partitions spread over the live workers (each
ready and owning some of every agent topic) and to the group's committed offsets reaching the high
watermarks of the moment of the change (the backlog then is processed).
"""

from __future__ import annotations

import itertools
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import httpx
import orjson
import pytest
from aiokafka import TopicPartition

from app.runtime.counters import MAX_RANGES, OffsetRanges
from app.runtime.ledger import LEDGER_KEY
from app.runtime.settings import Settings
from app.tools.process import WorkerProcess
from schemas import topics
from tests.reliability.conftest import (
    APP_ID,
    CONSUMED_TOPICS,
    Cluster,
    PacedProducer,
    now_ms,
    report,
    scale,
    shop_events,
)
from tests.reliability.test_crash import explain_missing, explain_order, mismatches, reference_profiles

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

STOP_LIMIT_S = 10.0  # SIGTERM -> exit, as in test_stop_and_stall.py
SETTLE_S = 5.0  # events keep flowing this long after a change has recovered, before the next one
POLL_S = 1.0  # between looks at the group (each costs two consumers and an HTTP call per worker)
PROFILES_CHANGELOG = f"{APP_ID}-profiles-changelog"
STATS_CHANGELOG = f"{APP_ID}-stats-changelog"
# the offsets each stats stage counts, and the counters one counted offset adds exactly one to
COUNTED = {"ingest": (topics.INPUT_TOPICS, ("consumed",)),
           "profile": (("events",), ("accepted", "duplicates", "redelivered"))}


@dataclass
class Change:
    """One membership change and how the group recovered from it."""

    label: str
    live: dict[str, WorkerProcess]
    at: float = field(default_factory=time.monotonic)
    at_ms: int = field(default_factory=now_ms)
    lag_at_change: int = 0
    max_lag: int = 0
    reassigned_s: float | None = None
    caught_up_s: float | None = None
    owners: dict[str, list[int]] = field(default_factory=dict)  # worker -> its streamrec.events partitions
    sent_at_change: int = 0

    def figures(self) -> dict:
        return {"change": self.label, "reassigned_s": round(self.reassigned_s or -1, 1),
                "caught_up_s": round(self.caught_up_s or -1, 1), "lag_at_change": self.lag_at_change,
                "max_lag": self.max_lag, "owners": self.owners}


def owned(worker: WorkerProcess) -> set[tuple[str, int]] | None:
    """The agent-topic partitions a ready worker consumes (its consumer's assignment); None if not ready."""
    try:
        if worker.get("/readyz", timeout=5.0).status_code != 200:
            return None
        partitions = worker.get("/debug/pipeline", timeout=10.0).json()["partitions"]
    except (httpx.HTTPError, ValueError, KeyError):
        return None
    if not isinstance(partitions, dict):
        return None
    out = set()
    for name in partitions:
        topic, _, partition = name.rpartition("/")
        if topic in CONSUMED_TOPICS:
            out.add((topic, int(partition)))
    return out


def spread(assignments: dict[str, set[tuple[str, int]] | None], n_partitions: int) -> str | None:
    """Why the live workers' assignments are not yet a complete, disjoint spread (None when they are)."""
    waiting = [name for name, parts in assignments.items() if parts is None]
    if waiting:
        return f"not ready: {waiting}"
    every = {(t, p) for t in CONSUMED_TOPICS for p in range(n_partitions)}
    held = Counter(tp for parts in assignments.values() for tp in parts)  # type: ignore[union-attr]
    if set(held) != every or any(n > 1 for n in held.values()):
        return (f"unowned {sorted(every - set(held))[:6]}, owned twice {[tp for tp, n in held.items() if n > 1][:6]}")
    idle = [name for name, parts in assignments.items() if {t for t, _ in parts} != set(CONSUMED_TOPICS)]  # type: ignore[union-attr]
    return f"own no partition of some agent topic: {idle}" if idle else None


def follow(cluster: Cluster, change: Change, before: dict[TopicPartition, tuple[int, int]], timeout_s: float) -> None:
    """Poll until the partitions are spread over `change.live` and the group has processed what was in
    the log at the change; fail with the state of every worker past `timeout_s`."""
    targets = {tp: highwater for tp, (_, highwater) in before.items()}
    deadline = change.at + timeout_s
    why: str | None = "not polled yet"
    behind: dict[str, int] = {}
    while time.monotonic() < deadline:
        for name, worker in change.live.items():
            if worker.proc is not None and worker.proc.poll() is not None:
                raise RuntimeError(f"worker {name} died after '{change.label}':\n{worker.log_tail()}")
        if change.reassigned_s is None:
            assignments = {name: owned(worker) for name, worker in change.live.items()}
            why = spread(assignments, cluster.partitions)
            if why is None:
                change.reassigned_s = time.monotonic() - change.at
                change.owners = {name: sorted(p for t, p in parts if t == topics.EVENTS)  # type: ignore[union-attr]
                                 for name, parts in assignments.items()}
        offsets = cluster.group_offsets()
        change.max_lag = max(change.max_lag, sum(max(0, hw - c) for c, hw in offsets.values()))
        behind = {f"{tp.topic}/{tp.partition}": targets[tp] - offsets[tp][0] for tp in targets
                  if offsets[tp][0] < targets[tp]}
        if change.caught_up_s is None and not behind:
            change.caught_up_s = time.monotonic() - change.at
        if change.reassigned_s is not None and change.caught_up_s is not None:
            return
        time.sleep(POLL_S)
    raise TimeoutError(f"'{change.label}': not recovered {timeout_s:.0f}s after the change: partitions "
                       f"{'spread' if change.reassigned_s is not None else 'not spread (' + str(why) + ')'}, "
                       f"committed offsets still behind the change's high watermarks: {behind}\n"
                       + stuck_diagnosis(cluster, change))


def stuck_diagnosis(cluster: Cluster, change: Change) -> str:
    """Each live worker's warnings, rebalance state and stream queues; the full /debug/pipeline snapshot
    and py-spy stacks go to a file per worker beside the logs (named in the message)."""
    lines = []
    for name, worker in change.live.items():
        diagnosis = worker.diagnose()
        path = cluster.data_dir.parent / f"stuck-{name}.txt"
        path.write_text(diagnosis)
        try:
            state = worker.get("/debug/pipeline", timeout=10.0).json()
            summary = {key: state.get(key) for key in ("rebalancing", "flow_active", "channels")}
        except (httpx.HTTPError, ValueError) as exc:
            summary = {"pipeline": repr(exc)}
        lines.append(f"--- worker {name} ({path}): {summary}\n{worker.log_problems(12)}")
    return "\n".join(lines)


def membership_change(cluster: Cluster, producer: PacedProducer, label: str, timeout_s: float,
                      act: Callable[[], dict[str, WorkerProcess]]) -> Change:
    """Make one change while events flow (`act` returns the workers live after it), then follow the
    group until it has recovered, and let events flow a little longer."""
    assert producer.running, (f"the producer ran out of events ({producer.sent} sent) before '{label}': "
                              f"events must flow through every change; raise the event count")
    before = cluster.group_offsets()
    change = Change(label, {}, lag_at_change=sum(max(0, hw - c) for c, hw in before.values()),
                    sent_at_change=producer.sent)
    change.live = act()
    follow(cluster, change, before, timeout_s)
    time.sleep(SETTLE_S)
    return change


def history_breaks(changelog: list, window: int) -> dict[str, str]:
    """Users whose profile changelog is not one linear history: a write that does not continue the one
    before it (two owners writing the same row from different states, or an event applied twice)."""
    last: dict[str, dict] = {}
    broken: dict[str, str] = {}
    for message in changelog:
        user = message.key.decode()
        if user in broken or message.value is None:
            continue
        value = orjson.loads(message.value)
        ring, accepted, ledger = value["recent_event_ids"], value["accepted"], value.get(LEDGER_KEY, {})
        previous = last.get(user)
        if previous is None:
            if len(ring) < window and accepted != len(ring):
                broken[user] = f"first write at offset {message.offset}: accepted {accepted} for {len(ring)} events"
        else:
            old_ring = previous["recent_event_ids"]
            # the new ring is the old one with new ids appended and, once full, its oldest k ids dropped
            k = next((k for k in range(len(old_ring) + 1) if ring[:len(old_ring) - k] == old_ring[k:]
                      and (k == 0 or len(ring) == window)), None)
            added = None if k is None else len(ring) - (len(old_ring) - k)
            changed = [e for e in set(ledger) & set(previous.get(LEDGER_KEY, {}))
                       if ledger[e] != previous[LEDGER_KEY][e]]
            if k is None:
                broken[user] = (f"write at {message.partition}/{message.offset} does not continue the previous "
                                f"write: its ring starts {ring[:3]}, the previous ends {old_ring[-3:]}")
            elif accepted - previous["accepted"] != added:
                broken[user] = (f"write at {message.partition}/{message.offset}: accepted "
                                f"{previous['accepted']} -> {accepted} for {added} new events")
            elif changed:
                broken[user] = f"write at {message.partition}/{message.offset}: ledger of {changed[:3]} changed"
        last[user] = value
    return broken


def counting_breaks(changelog: list) -> dict[str, str]:
    """Stats rows whose counted offsets shrank, or whose counters moved by other than the offsets newly
    counted (a message counted twice, or two owners' rows interleaved)."""
    last: dict[str, dict] = {}
    broken: dict[str, str] = {}
    for message in changelog:
        key = message.key.decode()
        stage = key.split(":", 1)[0]
        if stage not in COUNTED or key in broken or message.value is None:
            continue
        sources, counters = COUNTED[stage]
        value = orjson.loads(message.value)
        previous = last.get(key, {})
        newly, bounded = 0, False
        for source in sources:
            old, new = (OffsetRanges.from_json(row.get("@" + source)) for row in (previous, value))
            merged = OffsetRanges([*old.ranges, *new.ranges])
            if merged.ranges != new.ranges:
                broken[key] = f"write at offset {message.offset}: counted {source} offsets shrank {old} -> {new}"
            newly += len(new) - len(old)
            bounded |= len(new.ranges) >= MAX_RANGES  # a closed gap adds offsets that were not counted
        moved = sum(value.get(c, 0) - previous.get(c, 0) for c in counters)
        if key not in broken and (moved > newly or (moved != newly and not bounded) or moved < 0):
            broken[key] = f"write at offset {message.offset}: counters moved {moved} for {newly} newly counted offsets"
        last[key] = value
    return broken


def test_workers_join_and_leave_under_load_lose_and_double_apply_nothing(group_cluster: Cluster) -> None:
    cluster = group_cluster
    rate = scale(80, 300)
    events = shop_events(scale(20_000, 150_000), n_users=scale(300, 3000), seed=19)
    change_timeout_s = scale(180, 900)
    t_start = time.monotonic()

    start = Change("two workers start", {})
    workers = {name: cluster.member(name) for name in ("a", "b")}
    for worker in workers.values():
        worker.wait_ready(timeout_s=180)
    start.live = dict(workers)
    follow(cluster, start, cluster.group_offsets(), change_timeout_s)

    producer = PacedProducer(cluster, events, rate).start()
    time.sleep(SETTLE_S)
    changes, stop = [], {}

    def join() -> dict[str, WorkerProcess]:
        workers["c"] = cluster.member("c")
        return dict(workers)

    def sigkill() -> dict[str, WorkerProcess]:  # the survivors get its partitions once the broker expires it
        workers.pop("a").kill()
        return dict(workers)

    def sigterm() -> dict[str, WorkerProcess]:  # it leaves the group as it stops
        stopped, t0 = workers.pop("c"), time.monotonic()
        stop["code"] = stopped.stop(timeout_s=STOP_LIMIT_S)
        stop["s"] = time.monotonic() - t0
        assert stop["code"] is not None, f"worker c still running {STOP_LIMIT_S}s after SIGTERM:\n{stopped.log_tail()}"
        return dict(workers)

    for label, act in (("third worker joins", join), ("SIGKILL a", sigkill), ("SIGTERM c", sigterm)):
        changes.append(membership_change(cluster, producer, label, change_timeout_s, act))
    survivor = workers["b"]

    sent_events = producer.finish()
    flow_end_ms = now_ms()
    drain_s = cluster.wait_drained(survivor, timeout_s=scale(300, 900))
    stats = survivor.stats()
    n_sent = len(sent_events)
    assert all(c.sent_at_change < n_sent for c in changes), "events must keep flowing after every change"

    # Every sent event reached the profile agent, nothing else did, and the ledger is exact.
    delivered = cluster.delivered_events()
    sent_ids = {e.event_id for e in sent_events}
    delivered_ids = {e.event_id for e in delivered}
    assert delivered_ids == sent_ids, explain_missing(cluster, sent_ids - delivered_ids, delivered_ids - sent_ids,
                                                      stats)
    assert stats["profile.accepted"] == n_sent, stats
    assert stats["ingest.consumed"] == (stats["profile.accepted"] + stats.get("profile.duplicates", 0)
                                        + stats.get("ingest.deadlettered", 0)), stats

    # No event applied twice: one linear history per user row and per stats row, across every owner.
    window = Settings().dedupe_window
    forks = history_breaks(cluster.read_topic(PROFILES_CHANGELOG), window)
    assert not forks, (f"{len(forks)} users' profile changelog is not one linear history, e.g. "
                       f"{list(forks.items())[:5]}\n{explain_order(cluster, survivor, forks)}")
    recounted = counting_breaks(cluster.read_topic(STATS_CHANGELOG))
    assert not recounted, f"stats rows counted out of step with their offsets: {recounted}"

    # Every user's state equals the clean run: in the shared store and in the survivor's table.
    reference = reference_profiles(delivered)
    stored = cluster.stored_profiles()
    by_user: dict[str, list] = defaultdict(list)
    for event in sent_events:
        by_user[event.user_id].append(event)
    bad: dict[str, list[str]] = {}
    for user in by_user:
        actual = stored.get(user)
        problems = ["no stored profile"] if actual is None else mismatches(actual, reference[user])
        row = survivor.get(f"/users/{user}/state", timeout=30.0).json().get("profile")
        problems += ["no table row"] if row is None else [f"table: {p}" for p in mismatches(row, reference[user])]
        if problems:
            bad[user] = problems
    assert not bad, f"{len(bad)} users differ, e.g. {list(bad.items())[:3]}\n{explain_order(cluster, survivor, bad)}"

    # Lists kept flowing through every change, versions strictly increasing, newest list = newest event.
    lists: dict[str, list[dict]] = defaultdict(list)
    for message in cluster.read_topic(topics.RECOMMENDATIONS):
        if message.value is not None:
            record = orjson.loads(message.value)
            lists[record["user_id"]].append(record)
    assert set(lists) >= set(by_user), f"users without a list: {sorted(set(by_user) - set(lists))[:10]}"
    unordered = {u: [r["version"] for r in rs] for u, rs in lists.items()
                 if [r["version"] for r in rs] != sorted({r["version"] for r in rs})}
    assert not unordered, f"versions not strictly increasing for {len(unordered)} users: {list(unordered.items())[:3]}"
    stale_lists = {u: (rs[-1]["source_ts"], max(e.ts for e in by_user[u])) for u, rs in lists.items()
                   if u in by_user and rs[-1]["source_ts"] != max(e.ts for e in by_user[u])}
    assert not stale_lists, f"newest list behind the newest event (source_ts, newest ts): {list(stale_lists.items())[:5]}"
    generated = sorted(r["generated_at"] for rs in lists.values() for r in rs)
    bounds = [c.at_ms for c in changes] + [flow_end_ms]
    phases = []
    for change, (lo, hi) in zip(changes, itertools.pairwise(bounds), strict=True):
        inside = [g for g in generated if lo <= g < hi]
        assert inside, f"no list published between '{change.label}' and the next change"
        gaps = [b - a for a, b in zip([lo, *inside], inside, strict=False)]
        phases.append({"lists": len(inside), "longest_pause_s": round(max(gaps) / 1000, 1)})

    released = sum(int(n) for worker in cluster.workers for n in re.findall(
        r"rebalance: (\d+) messages held only by channels that dropped them", worker.log_tail(10**8)))
    for change, phase in zip(changes, phases, strict=True):
        report(f"rebalance: {change.label}", **change.figures(), **phase)
    report("rebalance under load (join, SIGKILL, SIGTERM)", injected=len(changes), events_sent=n_sent,
           events_accounted=stats["profile.accepted"], duplicates=stats.get("profile.duplicates", 0),
           reforwarded=stats.get("profile.redelivered", 0), state_mismatches=len(bad), users=len(by_user),
           rate=rate, partitions=cluster.partitions, first_ready_s=round(start.reassigned_s or -1, 1),
           sigterm_exit=stop["code"], sigterm_stop_s=round(stop["s"], 1), drain_s=round(drain_s, 1),
           lists=len(generated), dropped_only_released=released, total_s=round(time.monotonic() - t_start, 1))


def _changelog(rows: list[tuple[str, dict]]) -> list:
    """Changelog messages as read_topic returns them (key, value, partition, offset)."""
    return [SimpleNamespace(key=key.encode(), value=orjson.dumps(value), partition=0, offset=offset)
            for offset, (key, value) in enumerate(rows)]


def _profile(ring: list[str], accepted: int, offsets: dict[str, int]) -> dict:
    return {"recent_event_ids": ring, "accepted": accepted, LEDGER_KEY: {e: ["src", offsets[e]] for e in ring}}


def test_history_check_finds_forks_and_double_application() -> None:
    """The linear-history check is not vacuous: a second owner writing from an older state, an event
    applied twice, and an event applied at another copy's offset are each caught; a linear history
    (ring overflow included) is not."""
    at = {"e1": 1, "e2": 2, "e3": 3, "e4": 4}
    linear = [("u", _profile(["e1"], 1, at)), ("u", _profile(["e1", "e2", "e3"], 3, at)),
              ("u", _profile(["e2", "e3", "e4"], 4, at))]  # window 3: e1 left the ring
    assert history_breaks(_changelog(linear), window=3) == {}
    fork = [("u", _profile(["e1", "e2", "e3"], 3, at)), ("u", _profile(["e1", "e2"], 2, at))]
    assert "does not continue" in history_breaks(_changelog(fork), window=8)["u"]
    twice = [("u", _profile(["e1"], 1, at)), ("u", _profile(["e1", "e2"], 3, at))]
    assert "accepted 1 -> 3 for 1 new" in history_breaks(_changelog(twice), window=8)["u"]
    moved = [("u", _profile(["e1"], 1, at)), ("u", _profile(["e1", "e2"], 2, {**at, "e1": 9}))]
    assert "ledger" in history_breaks(_changelog(moved), window=8)["u"]


def test_counting_check_finds_a_recount_and_shrunk_ranges() -> None:
    key = "profile:0"
    ok = [(key, {"accepted": 2, "@events": [[0, 1]]}), (key, {"accepted": 3, "redelivered": 1, "@events": [[0, 3]]})]
    assert counting_breaks(_changelog(ok)) == {}
    recount = [(key, {"accepted": 2, "@events": [[0, 1]]}), (key, {"accepted": 3, "@events": [[0, 1]]})]
    assert "moved 1 for 0" in counting_breaks(_changelog(recount))[key]
    shrunk = [(key, {"accepted": 2, "@events": [[0, 1]]}), (key, {"accepted": 2, "@events": [[0, 0]]})]
    assert "shrank" in counting_breaks(_changelog(shrunk))[key]
