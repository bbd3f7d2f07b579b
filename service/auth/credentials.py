"""Which secret signs a service id's requests: looked up without a database round trip on
the hot path (in-process caches over the service_credentials table)."""

from __future__ import annotations

import asyncio
import logging
import math
import time

import asyncpg
from cachetools import TTLCache
from cryptography.exceptions import InvalidTag

from service.auth.secretbox import SecretBox
from service.db import credentials

log = logging.getLogger("xcloud.credentials")


class CredentialStore:
    """Looks up secrets without a database round trip on the hot path.

    Two in-process caches, both refreshed from the database at most every `ttl` seconds,
    which bounds how long a revoked credential keeps working in a running process:

    - the set of active service ids (one per calling service: tens, not millions, so
      all of them fit in memory). An id outside it is answered "unknown" from memory,
      so made-up ids (a new one per request, as an attacker would send) cost no query.
      An id created after the last refresh is looked for by refreshing the set, at most
      once per `miss_interval` seconds whatever the number of unknown ids, so a new
      credential works within that time.
    - the secrets of the ids in use, in a bounded LRU: ids outside the set never enter
      it, so strangers cannot push the real callers' secrets out.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        box: SecretBox,
        *,
        ttl: float = 5.0,
        miss_interval: float = 1.0,
        max_entries: int = 10_000,
    ) -> None:
        self._pool = pool
        self._box = box
        self._ttl = ttl
        self._miss_interval = miss_interval
        self._secrets: TTLCache[str, bytes | None] = TTLCache(
            max_entries, ttl, timer=time.monotonic
        )
        self._known: frozenset[str] = frozenset()
        self._known_at = -math.inf
        self._refreshing = asyncio.Lock()

    async def secret_for(self, service_id: str) -> bytes | None:
        """The secret of an active service id, or None (unknown or revoked)."""
        try:
            return self._secrets[service_id]
        except KeyError:
            pass
        if not await self._is_known(service_id):
            return None
        row = await self._pool.fetchrow(credentials.SECRET_SQL, service_id)
        secret = None
        if row is not None:
            try:
                secret = self._box.open(service_id, row["secret_encrypted"])
            except InvalidTag:  # sealed under another XCLOUD_SECRET_KEY: unusable, not a 500
                log.error("credential of %s cannot be opened with this key", service_id)
        self._secrets[service_id] = secret
        return secret

    async def _is_known(self, service_id: str) -> bool:
        age = time.monotonic() - self._known_at
        if age >= self._ttl or (service_id not in self._known and age >= self._miss_interval):
            await self._refresh_known()
        return service_id in self._known

    async def _refresh_known(self) -> None:
        started = time.monotonic()
        async with self._refreshing:  # one query however many requests wait for it
            if self._known_at >= started:
                return  # refreshed by another request while this one waited
            rows = await self._pool.fetch(credentials.ACTIVE_IDS_SQL)
            self._known = frozenset(r["service_id"] for r in rows)
            self._known_at = time.monotonic()
