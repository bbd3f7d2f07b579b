"""Published rows kept for `XCLOUD_OUTBOX_RETENTION_SECONDS`, deleted in small batches so
retention never holds long locks or builds a huge transaction."""

from __future__ import annotations

import asyncio

import asyncpg

from service.db import outbox as outbox_table

BATCH = 1000


async def delete_expired(
    conn: asyncpg.Connection, retention_seconds: float, stopping: asyncio.Event
) -> int:
    deleted = 0
    while not stopping.is_set():
        status = await conn.execute(outbox_table.DELETE_PUBLISHED_SQL, retention_seconds, BATCH)
        count = int(status.split()[-1])
        deleted += count
        if count < BATCH:
            break
    return deleted
