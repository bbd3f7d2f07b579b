"""Connecting to PostgreSQL: waiting for it when it is not up yet, and the pool."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

log = logging.getLogger("xcloud.db")
T = TypeVar("T")


# Errors that mean "the database is not there (yet)", as opposed to a bad request.
# A connection as asyncpg.connect gives it or as the pool lends it (a proxy): the db/
# functions that run inside a caller's transaction take either. `Executor` is anything
# that runs a statement, a pool included.
Connection = asyncpg.Connection | PoolConnectionProxy
Executor = asyncpg.Connection | PoolConnectionProxy | asyncpg.Pool

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


async def wait_for(
    connect: Callable[[], Awaitable[T]],
    what: str,
    *,
    attempts: int | None = None,
    delay: float = 1.0,
) -> T:
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
