"""The embedded default store: one SQLite file in WAL mode.

Every call runs as one transaction on a single dedicated thread, so the event loop never blocks and
concurrent coroutines never interleave statements inside each other's transactions. WAL lets other
processes (the serving API, `streamrec forget-user`) read and write the same file meanwhile; the busy
timeout makes writers from other processes wait instead of failing.

``secure_delete`` is on and ``forget_user`` checkpoints the WAL, so a forgotten user's bytes are
overwritten on disk rather than left in free pages (the privacy test reads the raw file to prove it).
History expiry is real: each entry stores ``expires_at``; reads filter on it and expired rows are
purged at most once a minute on writes (and by ``purge_expired``).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import orjson

from app.runtime.logs import user_ref
from app.store.base import (
    ItemMeta,
    ProfileSnapshot,
    Store,
    decode_recommendation,
    expires_at_ms,
    newest_copies,
)
from schemas.events import EncodedRecommendation, Recommendation

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 1
PURGE_EVERY_S = 60.0
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS profiles (
    user_id    TEXT PRIMARY KEY,
    scene      TEXT NOT NULL,
    interests  TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    payload    BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rec_history (
    user_id      TEXT NOT NULL,
    version      INTEGER NOT NULL,
    generated_at INTEGER NOT NULL,
    expires_at   INTEGER,
    record       BLOB NOT NULL,
    PRIMARY KEY (user_id, version)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rec_history_expires ON rec_history (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS items (
    item_id    TEXT PRIMARY KEY,
    category   TEXT NOT NULL,
    price      REAL NOT NULL,
    available  INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
"""

_UPSERT_PROFILE = """
INSERT INTO profiles (user_id, scene, interests, updated_at, payload) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (user_id) DO UPDATE SET scene = excluded.scene, interests = excluded.interests,
    updated_at = excluded.updated_at, payload = excluded.payload
"""
# Same (user, version): an identical or older copy changes nothing; a newer copy replaces it.
_UPSERT_REC = """
INSERT INTO rec_history (user_id, version, generated_at, expires_at, record) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (user_id, version) DO UPDATE SET generated_at = excluded.generated_at,
    expires_at = excluded.expires_at, record = excluded.record
WHERE excluded.generated_at > rec_history.generated_at
"""
_UPSERT_ITEM = """
INSERT INTO items (item_id, category, price, available, updated_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (item_id) DO UPDATE SET category = excluded.category, price = excluded.price,
    available = excluded.available, updated_at = excluded.updated_at
"""
_LIVE = "(expires_at IS NULL OR expires_at > ?)"


class SqliteStore(Store):
    """Store on one SQLite file. Build it with ``await SqliteStore.open(path, history_ttl_s)``."""

    def __init__(
        self,
        executor: ThreadPoolExecutor,
        conn: sqlite3.Connection,
        history_ttl_s: int,
        clock: Callable[[], float],
    ) -> None:
        self._executor = executor
        self._conn = conn
        self._ttl_s = history_ttl_s
        self._clock = clock
        self._next_purge = 0.0
        self._closed = False

    @classmethod
    async def open(
        cls, path: Path | str, history_ttl_s: int, *, clock: Callable[[], float] = time.time
    ) -> SqliteStore:
        """Open (creating if needed) the file and its schema; ``clock`` is injectable for expiry tests."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamrec-sqlite")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, _connect, Path(path))
        except BaseException:
            executor.shutdown(wait=False)
            raise
        log.info("sqlite store at %s (WAL, history ttl %ss)", path, history_ttl_s)
        return cls(executor, conn, history_ttl_s, clock)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._closed:
            raise RuntimeError("store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- profiles ----------------------------------------------------------------------------------

    async def put_profiles(self, profiles: list[ProfileSnapshot]) -> None:
        if not profiles:
            return
        rows = [(p.user_id, p.scene, orjson.dumps(p.interests).decode(), p.updated_at, p.payload)
                for p in profiles]
        await self._run(self._write_many, _UPSERT_PROFILE, rows)

    async def get_profile(self, user_id: str) -> ProfileSnapshot | None:
        row = await self._run(
            self._fetch_one,
            "SELECT user_id, scene, interests, updated_at, payload FROM profiles WHERE user_id = ?",
            (user_id,),
        )
        if row is None:
            return None
        return ProfileSnapshot(user_id=row[0], scene=row[1], interests=orjson.loads(row[2]),
                               updated_at=row[3], payload=bytes(row[4]))

    # --- recommendation history --------------------------------------------------------------------

    async def put_recommendations(self, recs: list[EncodedRecommendation]) -> None:
        now = self._now_ms()
        rows = []
        for encoded in newest_copies(recs):
            rec = encoded.record
            expires = expires_at_ms(rec.generated_at, self._ttl_s)
            if expires is not None and expires <= now:
                continue  # already expired: never readable, so never written (as Cassandra's TTL)
            rows.append((rec.user_id, rec.version, rec.generated_at, expires, encoded.raw))
        if rows:
            await self._run(self._write_many, _UPSERT_REC, rows)
        if self._clock() >= self._next_purge:
            await self.purge_expired()

    async def latest_recommendation(self, user_id: str) -> Recommendation | None:
        found = await self.history(user_id, limit=1)
        return found[0] if found else None

    async def history(self, user_id: str, limit: int = 20, since_ms: int | None = None) -> list[Recommendation]:
        if limit <= 0:
            return []
        sql = f"SELECT record FROM rec_history WHERE user_id = ? AND {_LIVE}"
        params: tuple[object, ...] = (user_id, self._now_ms())
        if since_ms is not None:
            sql += " AND generated_at >= ?"
            params += (since_ms,)
        sql += " ORDER BY version DESC LIMIT ?"
        rows = await self._run(self._fetch_all, sql, params + (limit,))
        return [decode_recommendation(bytes(r[0])) for r in rows]

    async def purge_expired(self) -> int:
        """Delete expired history rows now; returns how many went."""
        self._next_purge = self._clock() + PURGE_EVERY_S
        gone = await self._run(
            self._write_one, "DELETE FROM rec_history WHERE expires_at IS NOT NULL AND expires_at <= ?",
            (self._now_ms(),),
        )
        if gone:
            log.debug("purged %d expired history rows", gone)
        return gone

    # --- items -------------------------------------------------------------------------------------

    async def put_items(self, items: list[ItemMeta]) -> None:
        if not items:
            return
        rows = [(i.item_id, i.category, i.price, int(i.available), i.updated_at) for i in items]
        await self._run(self._write_many, _UPSERT_ITEM, rows)

    async def get_item(self, item_id: str) -> ItemMeta | None:
        row = await self._run(
            self._fetch_one,
            "SELECT item_id, category, price, available, updated_at FROM items WHERE item_id = ?",
            (item_id,),
        )
        if row is None:
            return None
        return ItemMeta(item_id=row[0], category=row[1], price=row[2], available=bool(row[3]), updated_at=row[4])

    # --- privacy and lifecycle ---------------------------------------------------------------------

    async def forget_user(self, user_id: str) -> None:
        await self._run(self._forget, user_id)
        log.info("forgot user %s in the sqlite store", user_ref(user_id, log))

    async def close(self) -> None:
        if self._closed:
            return
        await self._run(self._conn.close)
        self._closed = True
        self._executor.shutdown(wait=True)

    # --- on the store thread -----------------------------------------------------------------------

    def _write_many(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        with self._conn:
            self._conn.executemany(sql, rows)

    def _write_one(self, sql: str, params: tuple[object, ...]) -> int:
        with self._conn:
            return self._conn.execute(sql, params).rowcount

    def _fetch_one(self, sql: str, params: tuple[object, ...]) -> tuple | None:
        return self._conn.execute(sql, params).fetchone()

    def _fetch_all(self, sql: str, params: tuple[object, ...]) -> list[tuple]:
        return self._conn.execute(sql, params).fetchall()

    def _forget(self, user_id: str) -> None:
        with self._conn:
            self._conn.execute("DELETE FROM profiles WHERE user_id = ?", (user_id,))
            self._conn.execute("DELETE FROM rec_history WHERE user_id = ?", (user_id,))
        # Move the zeroed pages into the main file and empty the WAL, so no old frame keeps the data.
        busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            log.warning("WAL checkpoint after forget_user was blocked by a reader; it completes later")


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # IMMEDIATE: every write transaction takes the write lock up front, so a writer from another process
    # waits out the busy timeout instead of failing on a lock upgrade; `with conn` commits or rolls back.
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False, isolation_level="IMMEDIATE"
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        conn.close()
        raise RuntimeError(f"{path} has schema version {version}, newer than this code's {SCHEMA_VERSION}")
    if version < SCHEMA_VERSION:
        conn.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
    return conn
