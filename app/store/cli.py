"""`streamrec store ...`: schema migrations and operator reads of the store.

The lead's main CLI mounts ``store_app`` (``app.add_typer(store_app, name="store")``) and its
`streamrec forget-user` awaits ``forget_user_store``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import msgspec
import typer

from app.runtime.settings import Settings, get_settings
from app.store import open_store

log = logging.getLogger(__name__)

store_app = typer.Typer(help="Storage: schema migrations and reads (SQLite by default, Cassandra at scale).",
                        no_args_is_help=True)


async def forget_user_store(user_id: str, settings: Settings) -> None:
    """Remove the user's profile and whole recommendation history from the configured store."""
    store = await open_store(settings)
    try:
        await store.forget_user(user_id)
    finally:
        await store.close()


def migrate_store(settings: Settings, replication_factor: int) -> list[str]:
    """Bring the configured store's schema up to date; returns the migrations applied now."""
    if settings.store == "sqlite":
        async def touch() -> None:
            store = await open_store(settings)  # opening creates or upgrades the schema
            await store.close()

        asyncio.run(touch())
        return []
    from cassandra.cluster import Cluster

    from app.store.cassandra import apply_migrations, cluster_options

    cluster = Cluster(**cluster_options(settings))
    try:
        session = cluster.connect()
        done = apply_migrations(session, settings.cassandra_keyspace, replication_factor,
                                settings.cassandra_local_dc)
    finally:
        cluster.shutdown()
    return [f"{m.version:03d}_{m.name}" for m in done]


@store_app.command()
def migrate(
    replication_factor: Annotated[int, typer.Option(
        min=1, help="Cassandra: replicas per data centre when the keyspace is created (3 in production).",
    )] = 3,
) -> None:
    """Create or upgrade the store's schema (Cassandra: keyspace + numbered CQL migrations)."""
    settings = get_settings()
    applied = migrate_store(settings, replication_factor)
    if settings.store == "sqlite":
        typer.echo(f"sqlite schema up to date at {settings.sqlite_path}")
    elif applied:
        typer.echo(f"applied to {settings.cassandra_keyspace}: {', '.join(applied)}")
    else:
        typer.echo(f"{settings.cassandra_keyspace} already up to date")


@store_app.command()
def history(
    user_id: str,
    limit: Annotated[int, typer.Option(min=1, help="At most this many lists, newest first.")] = 10,
) -> None:
    """Print a user's stored recommendation lists as JSON lines, newest first."""
    async def read() -> list:
        store = await open_store(get_settings())
        try:
            return await store.history(user_id, limit=limit)
        finally:
            await store.close()

    for rec in asyncio.run(read()):
        typer.echo(msgspec.json.encode(rec).decode())


@store_app.command("forget-user")
def forget_user(user_id: str) -> None:
    """Remove the user's profile and history from the store only (the full command also clears tables)."""
    asyncio.run(forget_user_store(user_id, get_settings()))
    typer.echo(f"forgot {user_id} in the {get_settings().store} store")
