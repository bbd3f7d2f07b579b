"""The SQL of idempotency_keys (sql/003): the stored answers of writes sent with an
Idempotency-Key, and the key's lock (a transaction-level advisory lock)."""

from __future__ import annotations

import hashlib

import asyncpg

from service.db.connect import Executor
from service.db.nonces import CLAIM_NONCE_SQL

# A write's first statement: claim the nonce and, only when it was fresh, try the key's
# lock. Not getting the lock means another request with that key is running.
BEGIN_SQL = f"""
WITH nonce AS ({CLAIM_NONCE_SQL})
SELECT EXISTS (SELECT 1 FROM nonce) AS fresh,
       CASE WHEN EXISTS (SELECT 1 FROM nonce) THEN pg_try_advisory_xact_lock($3) END AS locked
"""


def lock_id(service_id: str, key: str) -> int:
    # PostgreSQL's one-bigint advisory lock space (the relay's lane locks use the
    # two-int space, a separate one). Two keys sharing 64 bits only ever meet as a 409.
    digest = hashlib.blake2b(f"{service_id}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def prior_sql(service_id: str = "$1", key: str = "$2") -> str:
    """The live stored answer of a key; alone, or as a CTE of a write's own statement."""
    return (
        "SELECT request_hash, status, headers, body_sealed FROM idempotency_keys"
        f" WHERE service_id = {service_id} AND idem_key = {key} AND expires_at > now()"
    )


def store_sql(
    service_id: str = "$1",
    key: str = "$2",
    request_hash: str = "$3",
    status: str = "$4",
    headers: str = "$5",
    body: str = "$6",
    ttl: str = "$7",
    where: str = "",
) -> str:
    """Insert an answer. Under the key's lock no live row can exist; an expired one not
    swept yet is replaced, and a live one never (RETURNING then gives no row)."""
    return f"""
    INSERT INTO idempotency_keys (service_id, idem_key, request_hash, status, headers,
                                  body_sealed, expires_at)
    SELECT {service_id}, {key}, {request_hash}, {status}, {headers}::jsonb, {body},
           now() + make_interval(secs => {ttl})
    {where}
    ON CONFLICT (service_id, idem_key) DO UPDATE
    SET request_hash = EXCLUDED.request_hash, status = EXCLUDED.status,
        headers = EXCLUDED.headers, body_sealed = EXCLUDED.body_sealed,
        created_at = now(), expires_at = EXCLUDED.expires_at
    WHERE idempotency_keys.expires_at <= now()
    RETURNING 1"""


PRIOR_SQL = prior_sql()
STORE_SQL = store_sql()
_USED_SQL = f"SELECT EXISTS ({PRIOR_SQL})"


async def used(conn: Executor, service_id: str, key: str) -> bool:
    """Whether a live answer is stored under the key."""
    return bool(await conn.fetchval(_USED_SQL, service_id, key))


async def delete_expired(pool: asyncpg.Pool, batch: int = 1000) -> int:
    # Small batches, like the nonces: no long lock, no huge transaction.
    status = await pool.execute(
        """DELETE FROM idempotency_keys WHERE ctid = ANY (ARRAY(
               SELECT ctid FROM idempotency_keys WHERE expires_at <= now() LIMIT $1))""",
        batch,
    )
    return int(status.split()[-1])
