"""Durable storage for what others read: profiles, recommendation history, item metadata (issue 4).

``open_store(settings)`` picks the implementation named by ``STREAMREC_STORE``: the embedded SQLite
file (default) or Cassandra. Both pass the contract suite in tests/contract/.
"""

from __future__ import annotations

import logging

from app.runtime.settings import Settings
from app.store.base import ItemMeta, ProfileSnapshot, Store

log = logging.getLogger(__name__)

__all__ = ["ItemMeta", "ProfileSnapshot", "Store", "open_store"]


async def open_store(settings: Settings) -> Store:
    """Open the configured store; the caller closes it (``await store.close()`` or ``async with``)."""
    if settings.store == "cassandra":
        from app.store.cassandra import CassandraStore  # the driver is only loaded when chosen

        return await CassandraStore.open(settings)
    from app.store.sqlite import SqliteStore

    return await SqliteStore.open(settings.sqlite_path, settings.history_ttl_s)
