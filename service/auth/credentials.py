"""Service credentials (encrypted at rest) and request nonces: the SQL of auth's tables.

A secret is sealed with AES-GCM under a key derived from XCLOUD_SECRET_KEY, with the
service id as associated data, so a dumped row is useless without the key and cannot
be moved to another service id.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from cachetools import TTLCache
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from service.auth.signing import WINDOW_SECONDS

log = logging.getLogger("xcloud.credentials")

# A nonce must be remembered for as long as its timestamp could still pass (window
# either side of now), plus a margin for clock differences between instances.
NONCE_TTL_SECONDS = 2 * WINDOW_SECONDS + 60


class SecretBox:
    # `info` separates the keys of different uses (service secrets, stored answers):
    # one derived key never seals two kinds of data.
    def __init__(self, secret_key: str, *, info: bytes = b"xcloud service secrets v1") -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(
            secret_key.encode("utf-8")
        )
        self._aead = AESGCM(key)

    def seal(self, service_id: str, secret: str) -> bytes:
        return self.seal_bytes(service_id.encode(), secret.encode("utf-8"))

    def open(self, service_id: str, sealed: bytes) -> bytes:
        return self.open_bytes(service_id.encode(), sealed)

    def seal_bytes(self, associated: bytes, data: bytes) -> bytes:
        """nonce || ciphertext; opening needs the same associated data."""
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, data, associated)

    def open_bytes(self, associated: bytes, sealed: bytes) -> bytes:
        return self._aead.decrypt(sealed[:12], sealed[12:], associated)


@dataclass(frozen=True)
class Credential:
    service_id: str
    created_at: datetime
    revoked_at: datetime | None


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
        row = await self._pool.fetchrow(
            "SELECT secret_encrypted FROM service_credentials"
            " WHERE service_id = $1 AND revoked_at IS NULL",
            service_id,
        )
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
            rows = await self._pool.fetch(
                "SELECT service_id FROM service_credentials WHERE revoked_at IS NULL"
            )
            self._known = frozenset(r["service_id"] for r in rows)
            self._known_at = time.monotonic()


async def add(conn: asyncpg.Connection, box: SecretBox, service_id: str) -> str:
    """Create (or re-activate with a new secret) a credential; return the secret."""
    secret = secrets.token_urlsafe(32)
    await conn.execute(
        """INSERT INTO service_credentials (service_id, secret_encrypted) VALUES ($1, $2)
           ON CONFLICT (service_id) DO UPDATE
           SET secret_encrypted = EXCLUDED.secret_encrypted,
               created_at = now(), revoked_at = NULL""",
        service_id,
        box.seal(service_id, secret),
    )
    return secret


async def list_all(conn: asyncpg.Connection) -> list[Credential]:
    rows = await conn.fetch(
        "SELECT service_id, created_at, revoked_at FROM service_credentials ORDER BY service_id"
    )
    return [Credential(r["service_id"], r["created_at"], r["revoked_at"]) for r in rows]


async def revoke(conn: asyncpg.Connection, service_id: str) -> bool:
    status = await conn.execute(
        "UPDATE service_credentials SET revoked_at = now()"
        " WHERE service_id = $1 AND revoked_at IS NULL",
        service_id,
    )
    return status.endswith(" 1")


# Claims (service id, nonce) unless a live claim exists; an expired one is taken over.
# Returns a row only when this request is the first to use the nonce in the window.
# The POST statement in store.py embeds the same text as a CTE, to stay one round trip.
CLAIM_NONCE_SQL = f"""
    INSERT INTO auth_nonces (service_id, nonce, expires_at)
    VALUES ($1, $2, now() + make_interval(secs => {NONCE_TTL_SECONDS}))
    ON CONFLICT (service_id, nonce) DO UPDATE SET expires_at = EXCLUDED.expires_at
        WHERE auth_nonces.expires_at < now()
    RETURNING 1
"""


class Replayed(Exception):
    """The request's nonce had been used already (raised where a write claims it)."""


async def claim_nonce(pool: asyncpg.Pool, service_id: str, nonce: str) -> bool:
    return await pool.fetchval(CLAIM_NONCE_SQL, service_id, nonce) is not None


async def delete_expired_nonces(pool: asyncpg.Pool, batch: int = 5000) -> int:
    status = await pool.execute(
        """DELETE FROM auth_nonces WHERE ctid = ANY (ARRAY(
               SELECT ctid FROM auth_nonces WHERE expires_at < now() LIMIT $1))""",
        batch,
    )
    return int(status.split()[-1])
