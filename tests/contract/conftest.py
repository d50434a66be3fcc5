"""Fixtures for the store contract suite: every test runs on SQLite, and on Cassandra when
STREAMREC_CASSANDRA_HOSTS points at a cluster (skipped with the reason otherwise).

"cassandra-emulated" runs the Cassandra store over tests/contract/cql_emulator.py on every run: it
prepares the store's CQL text, checked with cqlsh's grammar against the migrations' schema, and executes
what that text says. There is no async test plugin here: tests drive their coroutines with
``asyncio.run`` and get a ``StoreFactory``, an async callable that opens a fresh store handle on the
shared backend (a temp SQLite file, or a throwaway Cassandra keyspace), so a test can open several
handles as several writers would. Handles are closed by the test's own ``async with``.

Every handle of a test reads time from the test's ``clock``: virtual on SQLite and the emulator (a test
moves it with ``await clock.advance(s)`` instead of sleeping), the wall clock on a real cluster, whose
TTLs expire by the nodes' own time (there ``advance`` sleeps).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from app.runtime.settings import Settings
from app.store.base import Store

StoreFactory = Callable[..., Awaitable[Store]]

CASSANDRA_SKIP = (
    "Cassandra contract run needs a cluster: set STREAMREC_CASSANDRA_HOSTS (and optionally "
    "STREAMREC_CASSANDRA_PORT/_USERNAME/_PASSWORD/_LOCAL_DC/_SSL_CAFILE) to run it"
)


@pytest.fixture(scope="session")
def cassandra_keyspace() -> Iterator[tuple[Settings, str]]:
    """A fresh keyspace migrated with the shipped migrations, dropped after the session."""
    if not os.environ.get("STREAMREC_CASSANDRA_HOSTS"):
        pytest.skip(CASSANDRA_SKIP)
    from cassandra.cluster import Cluster

    from app.store.cassandra import apply_migrations, cluster_options

    settings = Settings()
    keyspace = f"streamrec_contract_{uuid.uuid4().hex[:12]}"
    cluster = Cluster(**cluster_options(settings))
    session = cluster.connect()
    try:
        apply_migrations(session, keyspace, replication_factor=1, local_dc=settings.cassandra_local_dc)
        yield settings, keyspace
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
        cluster.shutdown()


class Clock:
    """The stores' clock in one contract test: epoch seconds, virtual or the wall clock."""

    def __init__(self, virtual: bool) -> None:
        self.virtual = virtual
        self._now = float(int(time.time()))  # a virtual clock starts on a whole second, as a TTL counts

    def __call__(self) -> float:
        return self._now if self.virtual else time.time()

    def ms(self) -> int:
        return int(self() * 1000)

    async def advance(self, seconds: float) -> None:
        if self.virtual:
            self._now += seconds
        else:
            await asyncio.sleep(seconds)


@pytest.fixture(params=["sqlite", "cassandra-emulated", "cassandra"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def clock(backend: str) -> Clock:
    return Clock(virtual=backend != "cassandra")


@pytest.fixture
def store_factory(backend: str, clock: Clock, request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """``await store_factory(history_ttl_s=...)`` opens a store handle on this test's backend."""
    if backend == "sqlite":
        from app.store.sqlite import SqliteStore

        path = tmp_path / "store.db"

        async def open_sqlite(history_ttl_s: int = 86_400) -> Store:
            return await SqliteStore.open(path, history_ttl_s, clock=clock)

        return open_sqlite

    if backend == "cassandra-emulated":
        from app.store.cassandra import CassandraStore, _prepare_all
        from tests.contract.cql_emulator import EmulatedCluster, EmulatedSession

        session = EmulatedSession(clock)  # shared by every handle of this test, as a cluster would be

        async def open_emulated(history_ttl_s: int = 86_400) -> Store:
            prepared = _prepare_all(session)  # type: ignore[arg-type]  # the store's own statements, as open() does
            return CassandraStore(EmulatedCluster(), session, prepared, history_ttl_s, clock)  # type: ignore[arg-type]

        return open_emulated

    settings, keyspace = request.getfixturevalue("cassandra_keyspace")
    from app.store.cassandra import CassandraStore

    async def open_cassandra(history_ttl_s: int = 86_400) -> Store:
        return await CassandraStore.open(settings.model_copy(update={"history_ttl_s": history_ttl_s}),
                                         keyspace=keyspace, clock=clock)

    return open_cassandra
