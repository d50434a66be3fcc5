"""`streamrec store ...` and the helpers the main CLI calls, on the embedded store."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from app.runtime.settings import Settings, get_settings
from app.store import open_store
from app.store.cli import forget_user_store, store_app
from app.store.sqlite import SqliteStore
from tests.contract.test_store_contract import encoded, now_ms, profile, rec


@pytest.fixture
def sqlite_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "cli" / "streamrec.db"
    monkeypatch.setenv("STREAMREC_STORE", "sqlite")
    monkeypatch.setenv("STREAMREC_SQLITE_PATH", str(path))
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()


def seed(path: Path, users: tuple[str, ...]) -> None:
    async def body() -> None:
        async with await SqliteStore.open(path, 86_400) as store:
            t = now_ms()
            await store.put_profiles([profile(u, t) for u in users])
            await store.put_recommendations(
                encoded([rec(u, v, t - 1000 * (3 - v)) for u in users for v in (1, 2, 3)]))

    asyncio.run(body())


def test_open_store_follows_settings(tmp_path: Path) -> None:
    async def body() -> None:
        store = await open_store(Settings(sqlite_path=tmp_path / "s.db"))
        assert isinstance(store, SqliteStore)
        await store.close()
        with pytest.raises(ValueError, match="STREAMREC_CASSANDRA_HOSTS is empty"):
            await open_store(Settings(store="cassandra", cassandra_hosts=""))

    asyncio.run(body())


def test_migrate_creates_the_sqlite_schema(sqlite_env: Path) -> None:
    result = CliRunner().invoke(store_app, ["migrate"])
    assert result.exit_code == 0, result.output
    assert "sqlite schema up to date" in result.output
    assert sqlite_env.exists()


def test_history_prints_json_lines_newest_first(sqlite_env: Path) -> None:
    seed(sqlite_env, ("alice",))
    result = CliRunner().invoke(store_app, ["history", "alice", "--limit", "2"])
    assert result.exit_code == 0, result.output
    lines = [orjson.loads(line) for line in result.output.splitlines()]
    assert [(d["user_id"], d["version"]) for d in lines] == [("alice", 3), ("alice", 2)]


def test_forget_user_helper_and_command(sqlite_env: Path) -> None:
    seed(sqlite_env, ("alice", "bob", "carol"))
    asyncio.run(forget_user_store("alice", get_settings()))
    result = CliRunner().invoke(store_app, ["forget-user", "bob"])
    assert result.exit_code == 0, result.output

    async def check() -> None:
        async with await SqliteStore.open(sqlite_env, 86_400) as store:
            for gone in ("alice", "bob"):
                assert await store.get_profile(gone) is None
                assert await store.history(gone) == []
            assert len(await store.history("carol")) == 3

    asyncio.run(check())
