"""What only the embedded SQLite store promises beyond the contract: WAL, durable reopen, real purge of
expired rows, and forget-user leaving no byte of the user in the files on disk."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import msgspec
import orjson
import pytest

from app.store.sqlite import SqliteStore
from schemas.events import EncodedRecommendation
from tests.contract.test_store_contract import encoded, profile, rec


class FakeClock:
    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def test_file_is_in_wal_mode_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "store.db"

    async def body() -> None:
        async with await SqliteStore.open(path, 0) as store:
            await store.put_profiles([profile("u1", 1)])
            await store.put_recommendations(encoded([rec("u1", 1, 1_700_000_000_000)]))
        async with await SqliteStore.open(path, 0) as again:  # ttl 0: history never expires, even from 2023
            assert await again.get_profile("u1") == profile("u1", 1)
            assert [r.version for r in await again.history("u1")] == [1]

    asyncio.run(body())
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_rows_hold_the_bytes_they_were_given(tmp_path: Path) -> None:
    """A list is stored as the bytes published to Kafka and a profile as its table bytes: never encoded again
    (the spacing below is one no encoder of ours writes)."""
    path = tmp_path / "store.db"
    record = rec("u1", 1, 1_700_000_000_000)
    published = EncodedRecommendation(record, orjson.dumps(msgspec.to_builtins(record), option=orjson.OPT_INDENT_2))
    snapshot = msgspec.structs.replace(profile("u1", 1), payload=b'{ "user_id": "u1", "_ledger": {} }')

    async def body() -> None:
        async with await SqliteStore.open(path, 0) as store:
            await store.put_recommendations([published])
            await store.put_profiles([snapshot])
            assert await store.latest_recommendation("u1") == record
            assert await store.get_profile("u1") == snapshot

    asyncio.run(body())
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT record FROM rec_history").fetchone()[0] == published.raw
        assert conn.execute("SELECT payload FROM profiles").fetchone()[0] == snapshot.payload


def test_expired_rows_are_purged_not_just_hidden(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    clock = FakeClock(1_700_000_000.0)
    t = int(clock.now_s * 1000)

    async def body() -> None:
        async with await SqliteStore.open(path, 60, clock=clock) as store:
            await store.put_recommendations(
                encoded([rec("u1", 1, t - 30_000), rec("u1", 2, t), rec("u2", 1, t - 59_000)]))
            assert [r.version for r in await store.history("u1")] == [2, 1]
            clock.now_s += 31  # u1 v1 and u2 v1 are past their ttl, u1 v2 is not
            assert [r.version for r in await store.history("u1")] == [2]
            assert await store.latest_recommendation("u2") is None
            assert await store.purge_expired() == 2
            assert await store.purge_expired() == 0

    asyncio.run(body())
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT user_id, version FROM rec_history").fetchall() == [("u1", 2)]


def test_forget_user_leaves_no_bytes_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    secret = "user-5f1c9e0d7a-secret"
    t = 1_800_000_000_000

    async def body() -> None:
        async with await SqliteStore.open(path, 0) as store:
            await store.put_profiles([profile(secret, t), profile("someone-else", t)])
            # Big enough to spill into overflow pages, which must be wiped as well.
            await store.put_recommendations(encoded(
                [rec(secret, v, t + v, items=tuple(f"{secret}-item-{i}" for i in range(300))) for v in range(1, 6)]
            ))
            await store.put_recommendations(encoded([rec("someone-else", 1, t)]))
            files = [p for p in tmp_path.iterdir() if p.name.startswith("store.db")]
            assert any(secret.encode() in p.read_bytes() for p in files)
            await store.forget_user(secret)
            assert await store.get_profile("someone-else") is not None

    asyncio.run(body())
    leftovers = [p.name for p in tmp_path.iterdir() if secret.encode() in p.read_bytes()]
    assert leftovers == []
    assert b"someone-else" in path.read_bytes()


def test_calls_run_off_the_event_loop_thread(tmp_path: Path) -> None:
    seen: list[str] = []

    async def body() -> None:
        async with await SqliteStore.open(tmp_path / "store.db", 0) as store:
            conn = store._conn  # the thread that runs SQL is what this test checks
            conn.set_trace_callback(lambda _sql: seen.append(threading.current_thread().name))
            await store.put_profiles([profile("u1", 1)])
            await store.get_profile("u1")

    asyncio.run(body())
    assert seen and all(name.startswith("streamrec-sqlite") for name in seen)


def test_closed_store_refuses_calls(tmp_path: Path) -> None:
    async def body() -> None:
        store = await SqliteStore.open(tmp_path / "store.db", 0)
        await store.close()
        await store.close()  # closing twice is harmless
        with pytest.raises(RuntimeError, match="closed"):
            await store.get_profile("u1")

    asyncio.run(body())


def test_newer_schema_on_disk_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version=99")

    with pytest.raises(RuntimeError, match="schema version 99"):
        asyncio.run(SqliteStore.open(path, 0))
