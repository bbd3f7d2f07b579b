"""Connecting to PostgreSQL (waiting for it when it is not up yet) and migrating it."""

from __future__ import annotations

import asyncio
import logging
import sys
from importlib import resources
from importlib.resources.abc import Traversable

import asyncpg

log = logging.getLogger("xcloud.db")

# The migrations travel inside the package: a wheel carries sql/ as service/sql, and in
# the source tree service/sql is a symlink to the top-level sql/ (editable installs).
SQL_DIR: Traversable = resources.files("service") / "sql"
_MIGRATION_LOCK = 7_310_001  # advisory lock key: one migrator at a time

# Errors that mean "the database is not there (yet)", as opposed to a bad request.
UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    # A pooled connection caught mid-operation by a server shutdown reports this until
    # its socket's end arrives and the pool replaces it (seen in `make faults`).
    asyncpg.InternalClientError,
)


async def wait_for(connect, what: str, *, attempts: int | None = None, delay: float = 1.0):
    """Call `connect()` until it succeeds (for ever, unless `attempts` says otherwise),
    saying so on stderr meanwhile: a database that is not up yet is waited for."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await connect()
        except UNAVAILABLE as exc:
            if attempts is not None and attempt >= attempts:
                raise
            print(
                f"xcloud: waiting for {what} ({type(exc).__name__}); attempt {attempt}",
                file=sys.stderr,
                flush=True,
            )
            await asyncio.sleep(min(delay * attempt, 5.0))


async def _no_session_state(conn: asyncpg.Connection) -> None:
    """Replaces asyncpg's reset query (UNLISTEN, RESET ALL, advisory unlock...) on release:
    a round trip per request that buys nothing here, because nothing run through the pool
    sets session state (the relay's locks and LISTEN live on its own connection). asyncpg
    still rolls back an open transaction before this is called."""


async def create_pool(dsn: str, *, size: int = 20, attempts: int | None = None) -> asyncpg.Pool:
    return await wait_for(
        lambda: asyncpg.create_pool(
            dsn,
            min_size=min(2, size),
            max_size=size,
            command_timeout=30,
            # Statements are few and fixed: keep them prepared on every connection.
            statement_cache_size=256,
            reset=_no_session_state,
        ),
        "PostgreSQL",
        attempts=attempts,
    )


class NoMigrations(RuntimeError):
    """The package holds no migration files: a broken install, not an up-to-date database."""


def migrations(sql_dir: Traversable = SQL_DIR) -> list[tuple[str, str]]:
    """The numbered files of sql/ (NNN_name.sql), in order, as (version, text)."""
    found = sql_dir.iterdir() if sql_dir.is_dir() else ()
    files = sorted(
        (p for p in found if p.name.endswith(".sql") and p.name[:3].isdigit()),
        key=lambda p: p.name,
    )
    if not files:
        raise NoMigrations(f"no migration files (NNN_*.sql) in {sql_dir}")
    return [(p.name.removesuffix(".sql"), p.read_text(encoding="utf-8")) for p in files]


async def migrate(dsn: str, *, attempts: int | None = None) -> list[str]:
    """Apply each migration not applied yet, each in its own transaction; return them."""
    pending = migrations()  # before connecting: a broken install fails fast
    conn: asyncpg.Connection = await wait_for(
        lambda: asyncpg.connect(dsn), "PostgreSQL", attempts=attempts
    )
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version text PRIMARY KEY,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, text in pending:
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(text)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            log.info("applied migration %s", version)
            applied_now.append(version)
    finally:
        await conn.close()  # also releases the advisory lock
    return applied_now
