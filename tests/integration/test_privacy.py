"""`streamrec forget-user` erases a user from tables, store, history and the compacted list topic."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from app.store.sqlite import SqliteStore
from schemas import topics
from schemas.events import Browse
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def test_forget_user_leaves_nothing_behind(worker, kafka, broker) -> None:
    user, other = "it-forget-me", "it-keep-me"
    now = int(time.time() * 1000)
    kafka.send_events([Browse(event_id=f"{u}-{i}", user_id=u, ts=now + i, page="product", item_id=f"item-{i}",
                              category="c1") for u in (user, other) for i in range(3)])
    for u in (user, other):
        kafka.recommendations(u, lambda recs: bool(recs))
        wait_for(lambda u=u: (worker.get(f"/users/{u}/state").json().get("feedback") or {}).get("lists"))

    db = worker.data_dir / "streamrec.db"
    env = {"STREAMREC_SQLITE_PATH": str(db), "STREAMREC_KAFKA_BOOTSTRAP": broker.bootstrap}
    done = subprocess.run([sys.executable, "-m", "app.cli", "forget-user", user], capture_output=True, text=True, check=False,
                          env={**__import__("os").environ, **env}, timeout=60)
    assert done.returncode == 0, done.stderr

    wait_for(lambda: worker.get(f"/users/{user}/state").status_code == 404)  # feedback row included

    async def in_store(u: str) -> tuple:
        store = await SqliteStore.open(db, 0)
        try:
            return await store.get_profile(u), await store.history(u, limit=100)
        finally:
            await store.close()

    profile, history = wait_for(lambda: (r := asyncio.run(in_store(user)))[0] is None and not r[1] and (r,))[0]
    assert profile is None and history == []
    raw = db.read_bytes() + (db.with_name(db.name + "-wal").read_bytes() if db.with_name(db.name + "-wal").exists()
                             else b"")
    assert user.encode() not in raw

    messages = kafka.read_until(topics.RECOMMENDATIONS, lambda ms: bool(ms) and ms[-1].value is None,
                                key=user.encode())
    assert messages[-1].value is None  # tombstone: compaction drops the user's lists

    kept_profile, kept_history = asyncio.run(in_store(other))
    assert kept_profile is not None and kept_history
    assert worker.get(f"/users/{other}/state").status_code == 200
