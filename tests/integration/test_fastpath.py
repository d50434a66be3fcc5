"""app/runtime/faust_fixes/fastpath.py against the real broker: every message once, in order per partition, offsets committed.

A child Faust worker on `FastPathApp` reads a 2-partition topic through a deliberately small stream
buffer (so the full-queue path is exercised), is stopped with SIGTERM, and is started again after more
messages arrive: the second run must get exactly the new messages, which only holds if the first run
committed what it processed and nothing more.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.runtime.broker import EmbeddedBroker
from app.tools.process import py_spy_dump
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


async def _create(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, values: range) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        sent = [await producer.send(topic, str(v).encode(), key=str(v % 7).encode()) for v in values]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) or 0 for p in (0, 1)}
    finally:
        await consumer.stop()


def _lines(path: Path) -> list[tuple[int, int, int]]:
    if not path.exists():
        return []
    return [tuple(int(x) for x in line.split()) for line in path.read_text().splitlines() if line.strip()]


def _processed_and_committed(bootstrap: str, group: str, topic: str, out: Path, n: int) -> bool:
    """Values 0..n-1 are all in OUT and the group's committed offsets add up to n (nothing left to read)."""
    processed = {v for _, _, v in _lines(out)}
    committed = asyncio.run(_committed(bootstrap, group, topic))
    return set(range(n)) <= processed and sum(committed.values()) == n


def _diagnosis(child: subprocess.Popen, out: Path) -> str:
    """What a stuck child was doing: its consumer's state (SIGUSR1) and its threads' stacks, also in OUT.stuck."""
    state = out.with_suffix(".state")
    if child.poll() is None:
        child.send_signal(signal.SIGUSR1)
        try:
            wait_for(state.exists, timeout_s=10)
        except TimeoutError:
            pass  # a blocked event loop writes nothing; its stacks below still tell
    text = (f"child exit code: {child.poll()}\nconsumer state: "
            f"{state.read_text() if state.exists() else 'not written'}\n{py_spy_dump(child.pid)}")
    out.with_suffix(".stuck").write_text(text)
    return f"the child stopped short ({out.with_suffix('.stuck')}):\n{text[-20000:]}"


def _run_until(bootstrap: str, group: str, topic: str, out: Path, expect: int,
               *extra: str, until: Callable[[], bool] | None = None, timeout_s: float = 120) -> list[tuple[int, int, int]]:
    """Run the child app until OUT has `expect` lines (or `until()` holds), then SIGTERM it; its log is OUT.stderr."""
    with out.with_suffix(".stderr").open("ab") as log:
        child = subprocess.Popen([sys.executable, "-m", "tests.integration.fastpath_app", bootstrap, group, topic,
                                  str(out), *extra], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    try:
        try:
            wait_for(until or (lambda: len(_lines(out)) >= expect), timeout_s=timeout_s)
        except TimeoutError as exc:
            raise TimeoutError(_diagnosis(child, out)) from exc
        time.sleep(1.5)  # > broker_commit_interval: anything extra would show up, commits happen
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return _lines(out)


def test_fastpath_delivers_each_message_once_in_order_and_commits(broker: EmbeddedBroker, tmp_path: Path) -> None:
    topic, group = f"fastpath-{uuid.uuid4().hex[:8]}", f"fastpath-{uuid.uuid4().hex[:8]}"
    asyncio.run(_create(broker.bootstrap, topic))
    first, second = range(3000), range(3000, 4000)
    asyncio.run(_produce(broker.bootstrap, topic, first))

    got = _run_until(broker.bootstrap, group, topic, tmp_path / "run1.log", len(first))
    assert sorted(v for _, _, v in got) == list(first)  # every message, none twice
    offsets: dict[int, list[int]] = defaultdict(list)
    for partition, offset, _ in got:
        offsets[partition].append(offset)
    assert set(offsets) == {0, 1}
    for seen in offsets.values():
        assert seen == list(range(len(seen)))  # in order, no gap, per partition
    committed = asyncio.run(_committed(broker.bootstrap, group, topic))
    assert committed == {p: len(seen) for p, seen in offsets.items()}  # next offset to read = all processed

    asyncio.run(_produce(broker.bootstrap, topic, second))
    again = _run_until(broker.bootstrap, group, topic, tmp_path / "run2.log", len(second))
    assert sorted(v for _, _, v in again) == list(second)  # resumes at the commit: nothing lost or repeated


def test_a_failed_batch_is_not_committed_and_comes_back_after_a_restart(broker: EmbeddedBroker,
                                                                        tmp_path: Path) -> None:
    """app.runtime.faust_fixes.batches.acked_only_when_done: take_events alone would ack (and commit) the failed batch."""
    topic, group = f"failbatch-{uuid.uuid4().hex[:8]}", f"failbatch-{uuid.uuid4().hex[:8]}"
    asyncio.run(_create(broker.bootstrap, topic))
    values = range(2000)
    asyncio.run(_produce(broker.bootstrap, topic, values))

    run1 = tmp_path / "run1.log"
    failed_path = run1.with_suffix(".failed")
    # Faust restarts the crashed agent; what it does after that is not this test's concern (a restarted
    # agent need not get every later message), only that the failed batch is neither lost nor committed.
    got = _run_until(broker.bootstrap, group, topic, run1, 0, "1000", until=failed_path.exists)
    failed = _lines(failed_path)
    assert failed and 1000 in {v for _, _, v in failed}
    assert not {v for _, _, v in failed} & {v for _, _, v in got}
    committed = asyncio.run(_committed(broker.bootstrap, group, topic))
    for partition in (0, 1):
        offsets = [o for p, o, _ in failed if p == partition]
        if offsets:  # the commit stops before the failed batch's first event in that partition
            assert committed[partition] <= min(offsets), (committed, partition, min(offsets))

    missing = set(values) - {v for _, _, v in got}
    run2 = tmp_path / "run2.log"
    again = _run_until(broker.bootstrap, group, topic, run2, 0,
                       until=lambda: missing <= {v for _, _, v in _lines(run2)})
    assert {v for _, _, v in failed} <= {v for _, _, v in again}  # processed after the restart


@pytest.mark.parametrize("fastpath", ["true", "false"])
def test_a_failed_batch_comes_back_in_the_same_worker_and_commits_reach_the_end(
        broker: EmbeddedBroker, tmp_path: Path, fastpath: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault 11 (`RepairBlockedPartitions`): the failed batch's hole blocks the commits until the worker reads the partition again.

    Messages keep arriving while it does, so the seek happens with fetched batches in flight: a seek
    that let the rest of such a batch through would make Faust commit over the offsets in between
    (missing values here). Without the repair the failed events are processed only after a restart,
    and the committed offset stays below them however long the worker runs (the first test above).
    """
    monkeypatch.setenv("STREAMREC_FAUST_FASTPATH", fastpath)  # the child app: fast path or Faust's own loop
    topic, group = f"repair-{uuid.uuid4().hex[:8]}", f"repair-{uuid.uuid4().hex[:8]}"
    asyncio.run(_create(broker.bootstrap, topic))
    first = range(2000)
    asyncio.run(_produce(broker.bootstrap, topic, first))
    run = tmp_path / "run.log"
    stderr = run.with_suffix(".stderr")
    repaired = "reading the partition again from offset"
    sent = [len(first)]

    def keep_sending() -> None:  # 250 values every 0.25 s until 3 s after the repair (at most 90 s)
        after, deadline = None, time.monotonic() + 90
        while time.monotonic() < deadline and (after is None or time.monotonic() < after):
            asyncio.run(_produce(broker.bootstrap, topic, range(sent[0], sent[0] + 250)))
            sent[0] += 250
            if after is None and stderr.exists() and repaired in stderr.read_text(errors="replace"):
                after = time.monotonic() + 3
            time.sleep(0.25)

    sender = threading.Thread(target=keep_sending, daemon=True)
    sender.start()

    def all_done() -> bool:
        return not sender.is_alive() and _processed_and_committed(broker.bootstrap, group, topic, run, sent[0])

    got = _run_until(broker.bootstrap, group, topic, run, 0, "1000", until=all_done, timeout_s=240)
    failed = _lines(run.with_suffix(".failed"))
    assert failed and 1000 in {v for _, _, v in failed}
    assert {v for _, _, v in got} == set(range(sent[0]))  # the failed batch too, in the same process
    log = stderr.read_text(errors="replace")
    assert repaired in log, log[-3000:]


@pytest.mark.parametrize("fastpath", ["true", "false"])
def test_a_single_failed_message_at_the_committed_offset_is_read_again_not_committed_over(
        broker: EmbeddedBroker, tmp_path: Path, fastpath: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault 13 (`NoCommitOverFetchedRecord._new_offset`): Faust alone commits over one missing offset at the head of the acks.

    With batches of one message, the failed batch is a single offset; everything after it is acked,
    so Faust's commit (which takes a lone missing offset for a non-data one) would skip it for good:
    the value is never processed and the committed offsets still reach the end. The fetched-offset
    check blocks that commit, and the blocked-partition check reads the message again.
    """
    monkeypatch.setenv("STREAMREC_FAUST_FASTPATH", fastpath)
    topic, group = f"onehole-{uuid.uuid4().hex[:8]}", f"onehole-{uuid.uuid4().hex[:8]}"
    asyncio.run(_create(broker.bootstrap, topic))
    values = range(400)
    asyncio.run(_produce(broker.bootstrap, topic, values))
    run = tmp_path / "run.log"

    def all_done() -> bool:
        return _processed_and_committed(broker.bootstrap, group, topic, run, len(values))

    got = _run_until(broker.bootstrap, group, topic, run, 0, "200", "1", until=all_done, timeout_s=120)
    failed = _lines(run.with_suffix(".failed"))
    assert [v for _, _, v in failed] == [200]  # a batch of one message
    assert {v for _, _, v in got} == set(values)  # 200 too, read again in the same process
    log = run.with_suffix(".stderr").read_text(errors="replace")
    assert "reading the partition again from offset" in log, log[-3000:]


@pytest.mark.parametrize("fastpath", ["true", "false"])
def test_seeks_while_fetching_neither_crash_nor_stall_the_fetch_loop(
        broker: EmbeddedBroker, tmp_path: Path, fastpath: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault 15 (`SeekOnConsumerThread._seek`): the repair's seek runs on aiokafka's own thread.

    Faust's seek calls aiokafka's from the app's thread, racing the consumer thread's fetcher: after a
    repair in the SIGKILL test the fetcher crashed (KeyError in `fetched_records`). Here the child
    seeks both partitions back every 0.1 s for 15 s while messages keep arriving, then only consumes;
    every value must still be processed, the commits must reach the end, and the fetch loop must not
    crash. The race itself is too rare to show here in 15 s: tests/unit/test_repair.py checks which
    thread the seek runs on. (A first version that never stopped seeking timed out in a clean-clone CI
    run on the fast path: at the 180 s limit it was still seeking partition 1 back to the same
    committed offset.)
    """
    monkeypatch.setenv("STREAMREC_FAUST_FASTPATH", fastpath)
    monkeypatch.setenv("FASTPATH_APP_SEEK_EVERY_S", "0.1")
    topic, group = f"seeks-{uuid.uuid4().hex[:8]}", f"seeks-{uuid.uuid4().hex[:8]}"
    asyncio.run(_create(broker.bootstrap, topic))
    run = tmp_path / "run.log"
    sent = [0]

    def keep_sending() -> None:  # 200 values every 0.1 s for 15 s
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            asyncio.run(_produce(broker.bootstrap, topic, range(sent[0], sent[0] + 200)))
            sent[0] += 200
            time.sleep(0.1)

    sender = threading.Thread(target=keep_sending, daemon=True)
    sender.start()

    def all_done() -> bool:
        return not sender.is_alive() and _processed_and_committed(broker.bootstrap, group, topic, run, sent[0])

    got = _run_until(broker.bootstrap, group, topic, run, 0, until=all_done, timeout_s=180)
    log = run.with_suffix(".stderr").read_text(errors="replace")
    assert {v for _, _, v in got} == set(range(sent[0]))
    # each seek waits for a fetch round (12-13 in 15 s when measured): enough to know they ran under load
    assert log.count("sought back") >= 5, log[-3000:]
    assert "Crashed" not in log and "Traceback" not in log, log[-3000:]
