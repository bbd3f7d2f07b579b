"""The credential cache against the real database: made-up ids cost no query, the LRU is
bounded and keeps the ids in use, a new credential works within a second."""

from __future__ import annotations

import asyncio
import secrets

from service.auth.credentials import CredentialStore
from service.auth.secretbox import SecretBox
from service.db import credentials


class CountingPool:
    """The real pool, counting the queries that reach it."""

    def __init__(self, pool) -> None:
        self._pool = pool
        self.queries = 0

    async def fetch(self, *args):
        self.queries += 1
        return await self._pool.fetch(*args)

    async def fetchrow(self, *args):
        self.queries += 1
        return await self._pool.fetchrow(*args)


async def add(pool, box, service_id: str) -> bytes:
    async with pool.acquire() as conn:
        return (await credentials.add(conn, box, service_id)).encode()


async def test_made_up_ids_cost_at_most_one_query_a_second(clean_db, settings):
    box = SecretBox(settings.secret_key)
    secret = await add(clean_db, box, "known")
    pool = CountingPool(clean_db)
    store = CredentialStore(pool, box)
    assert await store.secret_for("known") == secret
    assert pool.queries == 2  # the set of ids, then the secret
    for _ in range(2000):
        assert await store.secret_for("svc-" + secrets.token_hex(8)) is None
    assert await store.secret_for("known") == secret
    assert pool.queries == 2, "neither made-up ids nor a cached secret reached the database"


async def test_a_new_credential_works_within_the_miss_interval(clean_db, settings):
    box = SecretBox(settings.secret_key)
    await add(clean_db, box, "first")
    store = CredentialStore(clean_db, box, miss_interval=0.3)
    assert await store.secret_for("later") is None
    secret = await add(clean_db, box, "later")
    assert await store.secret_for("later") is None  # not looked for again at once
    await asyncio.sleep(0.35)
    assert await store.secret_for("later") == secret


async def test_revoked_ones_stop_within_the_ttl(clean_db, settings):
    box = SecretBox(settings.secret_key)
    secret = await add(clean_db, box, "svc")
    store = CredentialStore(clean_db, box, ttl=0.3)
    assert await store.secret_for("svc") == secret
    async with clean_db.acquire() as conn:
        assert await credentials.revoke(conn, "svc")
    await asyncio.sleep(0.35)
    assert await store.secret_for("svc") is None


async def test_the_cache_is_a_bounded_lru_not_emptied_when_full(clean_db, settings):
    box = SecretBox(settings.secret_key)
    ids = [f"svc-{n}" for n in range(8)]
    for service_id in ids:
        await add(clean_db, box, service_id)
    pool = CountingPool(clean_db)
    store = CredentialStore(pool, box, max_entries=4)
    for service_id in ids:
        assert await store.secret_for(service_id) is not None
        assert await store.secret_for(ids[0]) is not None  # kept in use: stays cached
    queries = pool.queries
    assert await store.secret_for(ids[0]) is not None
    assert await store.secret_for(ids[-1]) is not None
    assert pool.queries == queries, "the most recently used stay"
    assert await store.secret_for(ids[1]) is not None  # long unused: evicted, read again
    assert pool.queries == queries + 1
