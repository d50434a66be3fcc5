"""The at-scale store on Cassandra (cassandra-driver).

Prepared statements only; token-aware routing over a DC-aware round robin, so each request goes
straight to a replica in the local data centre; the configured consistency (LOCAL_QUORUM by default)
for reads and writes, so a read after a write sees it; statements are marked idempotent so the driver
may retry them after a timeout. Requests run with ``execute_async`` and their callbacks (on the
driver's IO thread) complete asyncio futures, so the event loop never blocks; a batch of writes is
sent concurrently, bounded, rather than as a multi-partition BATCH (an anti-pattern in Cassandra).

Schema and partitioning: app/store/migrations/*.cql and docs/STORAGE.md.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cassandra import ConsistencyLevel
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, ResponseFuture, Session
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    RetryPolicy,
    TokenAwarePolicy,
)
from cassandra.query import PreparedStatement

from app.runtime.logs import user_ref
from app.runtime.settings import Settings
from app.store.base import (
    ItemMeta,
    ProfileSnapshot,
    Store,
    decode_recommendation,
    expires_at_ms,
    newest_copies,
)
from app.store.migrations import Migration, load_migrations
from schemas.events import EncodedRecommendation, Recommendation

log = logging.getLogger(__name__)

BUCKET_MS = 3600 * 1000
"""History partition width: one hour of a user's lists (bounds partition size; see 002_rec_history.cql)."""
REQUEST_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0
MAX_IN_FLIGHT = 256
"""Requests one write call keeps in flight at once."""

_STATEMENTS = {
    "put_profile": "INSERT INTO profiles (user_id, scene, interests, updated_at, payload) VALUES (?, ?, ?, ?, ?)",
    "get_profile": "SELECT user_id, scene, interests, updated_at, payload FROM profiles WHERE user_id = ?",
    "put_history": (
        "INSERT INTO rec_history (user_id, bucket, version, generated_at, record) VALUES (?, ?, ?, ?, ?) "
        "USING TTL ? AND TIMESTAMP ?"
    ),
    "put_bucket": "INSERT INTO rec_buckets (user_id, bucket) VALUES (?, ?) USING TTL ?",
    "put_latest": (
        "INSERT INTO rec_latest (user_id, version, generated_at, record) VALUES (?, ?, ?, ?) "
        "USING TTL ? AND TIMESTAMP ?"
    ),
    "get_latest": "SELECT version, generated_at, record FROM rec_latest WHERE user_id = ?",
    "get_buckets": "SELECT bucket FROM rec_buckets WHERE user_id = ? AND bucket >= ?",
    "get_history": (
        "SELECT version, generated_at, record FROM rec_history WHERE user_id = ? AND bucket = ? LIMIT ?"
    ),
    "put_item": "INSERT INTO items (item_id, category, price, available, updated_at) VALUES (?, ?, ?, ?, ?)",
    "get_item": "SELECT item_id, category, price, available, updated_at FROM items WHERE item_id = ?",
    "del_profile": "DELETE FROM profiles USING TIMESTAMP ? WHERE user_id = ?",
    "del_history": "DELETE FROM rec_history USING TIMESTAMP ? WHERE user_id = ? AND bucket = ?",
    "del_buckets": "DELETE FROM rec_buckets USING TIMESTAMP ? WHERE user_id = ?",
    "del_latest": "DELETE FROM rec_latest USING TIMESTAMP ? WHERE user_id = ?",
}


def consistency_level(name: str) -> int:
    """The driver's value for a consistency name such as ``LOCAL_QUORUM`` (case-insensitive)."""
    try:
        return ConsistencyLevel.name_to_value[name.strip().upper()]
    except KeyError:
        known = ", ".join(sorted(ConsistencyLevel.name_to_value))
        raise ValueError(f"unknown Cassandra consistency {name!r}; one of {known}") from None


def contact_points(hosts: str) -> list[str]:
    points = [h.strip() for h in hosts.split(",") if h.strip()]
    if not points:
        raise ValueError("STREAMREC_CASSANDRA_HOSTS is empty: set it to host[,host...] to use Cassandra")
    return points


def cluster_options(settings: Settings, request_timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
    """Keyword arguments for ``cassandra.cluster.Cluster`` from the settings (auth, TLS, routing, CL)."""
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(
            DCAwareRoundRobinPolicy(local_dc=settings.cassandra_local_dc or None)
        ),
        retry_policy=RetryPolicy(),
        consistency_level=consistency_level(settings.cassandra_consistency),
        request_timeout=request_timeout_s,
    )
    options: dict[str, Any] = {
        "contact_points": contact_points(settings.cassandra_hosts),
        "port": settings.cassandra_port,
        "execution_profiles": {EXEC_PROFILE_DEFAULT: profile},
        "reconnection_policy": ExponentialReconnectionPolicy(base_delay=1.0, max_delay=60.0),
        "connect_timeout": CONNECT_TIMEOUT_S,
    }
    if settings.cassandra_username:
        options["auth_provider"] = PlainTextAuthProvider(
            username=settings.cassandra_username,
            password=settings.cassandra_password.get_secret_value(),
        )
    if settings.cassandra_ssl_cafile:
        # Verifies the server certificate against the CA, host names included.
        options["ssl_context"] = ssl.create_default_context(cafile=settings.cassandra_ssl_cafile)
    return options


def history_bucket(generated_at: int) -> int:
    return generated_at // BUCKET_MS


def write_ttl_s(generated_at: int, ttl_s: int, now_ms: int) -> int | None:
    """TTL in whole seconds so a row expires ``ttl_s`` after ``generated_at``; 0 = never (Cassandra's
    "no TTL", overriding the table default); None when it has already expired and must not be written."""
    expires = expires_at_ms(generated_at, ttl_s)
    if expires is None:
        return 0
    left_ms = expires - now_ms
    return math.ceil(left_ms / 1000) if left_ms > 0 else None


def create_keyspace_cql(keyspace: str, replication_factor: int, local_dc: str) -> str:
    """NetworkTopologyStrategy in the named data centre, or SimpleStrategy for a one-DC dev cluster."""
    if not keyspace.isidentifier():
        raise ValueError(f"keyspace name {keyspace!r} is not a plain identifier")
    if local_dc:
        replication = f"{{'class': 'NetworkTopologyStrategy', '{local_dc}': {replication_factor}}}"
    else:
        replication = f"{{'class': 'SimpleStrategy', 'replication_factor': {replication_factor}}}"
    return f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}"


def apply_migrations(
    session: Session, keyspace: str, replication_factor: int, local_dc: str,
    migrations: Sequence[Migration] | None = None,
) -> list[Migration]:
    """Create the keyspace and apply the pending migrations in order; returns those applied now.

    Blocking (schema changes wait for agreement): for the CLI, not for the event loop.
    """
    session.execute(create_keyspace_cql(keyspace, replication_factor, local_dc))
    session.set_keyspace(keyspace)
    session.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version int PRIMARY KEY, name text, checksum text, applied_at timestamp)"
    )
    applied = {row.version: row.checksum for row in session.execute(
        "SELECT version, checksum FROM schema_migrations")}
    done: list[Migration] = []
    for migration in migrations if migrations is not None else load_migrations():
        if migration.version in applied:
            if applied[migration.version] != migration.checksum:
                raise RuntimeError(
                    f"migration {migration.version:03d}_{migration.name} changed after it was applied")
            continue
        for statement in migration.statements:
            session.execute(statement)
        session.execute(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at) "
            "VALUES (%s, %s, %s, toTimestamp(now()))",
            (migration.version, migration.name, migration.checksum),
        )
        log.info("applied migration %03d_%s to %s", migration.version, migration.name, keyspace)
        done.append(migration)
    return done


def _settle(future: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # cancelled while the request was in flight
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class CassandraStore(Store):
    """Store on a Cassandra keyspace migrated by `streamrec store migrate`.

    Build it with ``await CassandraStore.open(settings)``.
    """

    def __init__(self, cluster: Cluster, session: Session, prepared: dict[str, PreparedStatement],
                 history_ttl_s: int, clock: Callable[[], float] = time.time) -> None:
        self._cluster = cluster
        self._session = session
        self._ps = prepared
        self._ttl_s = history_ttl_s
        self._clock = clock  # epoch seconds: TTLs and delete stamps; injectable for expiry tests

    @classmethod
    async def open(cls, settings: Settings, *, keyspace: str | None = None,
                   request_timeout_s: float = REQUEST_TIMEOUT_S,
                   clock: Callable[[], float] = time.time) -> CassandraStore:
        """Connect and prepare every statement (blocking driver calls run on a worker thread)."""
        cluster = Cluster(**cluster_options(settings, request_timeout_s))
        name = keyspace or settings.cassandra_keyspace
        try:
            session = await asyncio.to_thread(cluster.connect, name)
            prepared = await asyncio.to_thread(_prepare_all, session)
        except BaseException:
            await asyncio.to_thread(cluster.shutdown)
            raise
        log.info("cassandra store: keyspace %s on %s, consistency %s", name, settings.cassandra_hosts,
                 settings.cassandra_consistency)
        return cls(cluster, session, prepared, settings.history_ttl_s, clock)

    # --- bridge ------------------------------------------------------------------------------------

    def _execute(self, name: str, params: Sequence[Any]) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        response: ResponseFuture = self._session.execute_async(self._ps[name], params)
        response.add_callbacks(
            callback=lambda rows: loop.call_soon_threadsafe(_settle, future, rows),
            errback=lambda exc: loop.call_soon_threadsafe(_settle, future, None, exc),
        )
        return future

    async def _rows(self, name: str, params: Sequence[Any]) -> list[Any]:
        return list(await self._execute(name, params) or [])

    async def _write_all(self, requests: Iterable[tuple[str, Sequence[Any]]]) -> None:
        """Send every write concurrently, at most MAX_IN_FLIGHT at a time; raise the first failure."""
        gate = asyncio.Semaphore(MAX_IN_FLIGHT)

        async def one(name: str, params: Sequence[Any]) -> None:
            async with gate:
                await self._execute(name, params)

        await asyncio.gather(*(one(name, params) for name, params in requests))

    # --- profiles ----------------------------------------------------------------------------------

    async def put_profiles(self, profiles: list[ProfileSnapshot]) -> None:
        await self._write_all(
            ("put_profile", (p.user_id, p.scene, p.interests, p.updated_at, p.payload)) for p in profiles
        )

    async def get_profile(self, user_id: str) -> ProfileSnapshot | None:
        rows = await self._rows("get_profile", (user_id,))
        if not rows:
            return None
        row = rows[0]
        return ProfileSnapshot(user_id=row.user_id, scene=row.scene, interests=dict(row.interests or {}),
                               updated_at=row.updated_at, payload=bytes(row.payload or b"{}"))

    # --- recommendation history --------------------------------------------------------------------

    async def put_recommendations(self, recs: list[EncodedRecommendation]) -> None:
        now = int(self._clock() * 1000)
        requests: list[tuple[str, Sequence[Any]]] = []
        for encoded in newest_copies(recs):
            rec, record = encoded.record, encoded.raw
            ttl = write_ttl_s(rec.generated_at, self._ttl_s, now)
            if ttl is None:
                continue
            stamp = rec.generated_at * 1000  # microseconds: newer generated_at wins, same copy is a no-op
            bucket = history_bucket(rec.generated_at)
            requests.append(("put_history", (rec.user_id, bucket, rec.version, rec.generated_at, record,
                                             ttl, stamp)))
            requests.append(("put_bucket", (rec.user_id, bucket, ttl)))
            requests.append(("put_latest", (rec.user_id, rec.version, rec.generated_at, record, ttl, stamp)))
        await self._write_all(requests)

    async def latest_recommendation(self, user_id: str) -> Recommendation | None:
        rows = await self._rows("get_latest", (user_id,))
        return decode_recommendation(rows[0].record) if rows else None

    async def history(self, user_id: str, limit: int = 20, since_ms: int | None = None) -> list[Recommendation]:
        if limit <= 0:
            return []
        since = since_ms if since_ms is not None else 0
        buckets = [row.bucket for row in await self._rows("get_buckets", (user_id, history_bucket(since)))]
        found: dict[int, tuple[int, bytes]] = {}
        for bucket in buckets:  # newest first
            for row in await self._rows("get_history", (user_id, bucket, limit)):
                if row.generated_at < since:
                    continue
                kept = found.get(row.version)
                if kept is None or row.generated_at > kept[0]:  # a version re-written into another hour
                    found[row.version] = (row.generated_at, row.record)
            if len(found) >= limit:
                break
        newest = sorted(found.items(), key=lambda kv: kv[0], reverse=True)[:limit]
        return [decode_recommendation(record) for _, (_, record) in newest]

    # --- items -------------------------------------------------------------------------------------

    async def put_items(self, items: list[ItemMeta]) -> None:
        await self._write_all(
            ("put_item", (i.item_id, i.category, i.price, i.available, i.updated_at)) for i in items
        )

    async def get_item(self, item_id: str) -> ItemMeta | None:
        rows = await self._rows("get_item", (item_id,))
        if not rows:
            return None
        row = rows[0]
        return ItemMeta(item_id=row.item_id, category=row.category, price=row.price,
                        available=row.available, updated_at=row.updated_at)

    # --- privacy and lifecycle ---------------------------------------------------------------------

    async def forget_user(self, user_id: str) -> None:
        latest = await self._rows("get_latest", (user_id,))
        buckets = [row.bucket for row in await self._rows("get_buckets", (user_id, 0))]
        # The tombstones must outrank every list of the user, including one stamped with a generated_at
        # slightly ahead of this machine's clock (lists are written with generated_at as their timestamp).
        stamp = int(self._clock() * 1_000_000)
        if latest:
            stamp = max(stamp, latest[0].generated_at * 1000 + 1)
        requests: list[tuple[str, Sequence[Any]]] = [
            ("del_profile", (stamp, user_id)),
            ("del_latest", (stamp, user_id)),
            *(("del_history", (stamp, user_id, bucket)) for bucket in buckets),
        ]
        await self._write_all(requests)
        await self._write_all([("del_buckets", (stamp, user_id))])  # last: a retry can still find them
        log.info("forgot user %s in the cassandra store (%d history buckets)", user_ref(user_id, log), len(buckets))

    async def close(self) -> None:
        await asyncio.to_thread(self._cluster.shutdown)


def _prepare_all(session: Session) -> dict[str, PreparedStatement]:
    prepared = {}
    for name, cql in _STATEMENTS.items():
        statement = session.prepare(cql)
        statement.is_idempotent = True  # upserts and deletes with fixed timestamps: safe to retry
        prepared[name] = statement
    return prepared
