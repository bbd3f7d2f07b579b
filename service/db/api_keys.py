"""The SQL of the api_keys table (sql/003): rotation and verification."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from service.db.connect import Connection
from service.db.nonces import CLAIM_NONCE_SQL, Replayed
from service.domain.api_keys import key_hash

# Registration inserts both rows in its own statement (db/customers.py); this is its CTE body.
INSERT_BOTH_SQL = """
    INSERT INTO api_keys (key_hash, customer_id, slot, created_at)
    SELECT k.key_hash, customer.customer_id, k.slot, {created_at}
    FROM customer, (VALUES ({primary}::bytea, 'primary'), ({secondary}::bytea, 'secondary'))
         AS k (key_hash, slot)
"""

# The slot's row is replaced: the old hash stops matching in the same commit. An upsert,
# so a customer whose row is missing (written by hand) still gets a key.
_ROTATE_SQL = """
WITH rotated AS (
    INSERT INTO api_keys (key_hash, customer_id, slot, created_at) VALUES ($3, $1, $2, $4)
    ON CONFLICT (customer_id, slot)
    DO UPDATE SET key_hash = EXCLUDED.key_hash, created_at = EXCLUDED.created_at
    RETURNING 1
)
INSERT INTO outbox (event_id, event_type, customer_id, lane, payload)
SELECT $5, $6, $1, $7, $8 FROM rotated
"""

# One round trip on the hot path: the nonce claim and one index lookup on api_keys' primary
# key (plus the customer's, by its primary key, for the status).
VERIFY_SQL = f"""
WITH nonce AS ({CLAIM_NONCE_SQL})
SELECT EXISTS (SELECT 1 FROM nonce) AS fresh_nonce, k.customer_id, k.slot, c.status
FROM (SELECT 1) AS one
LEFT JOIN (api_keys k JOIN customers c ON c.customer_id = k.customer_id)
       ON k.key_hash = $3
"""


@dataclass(frozen=True, slots=True)
class Verified:
    customer_id: str
    slot: str
    status: str


async def rotate(
    conn: Connection,
    customer_id: str,
    slot: str,
    key: str,
    rotated_at: datetime,
    event: tuple[object, int, str, bytes],
) -> None:
    """Replace the key of `slot` and add its event; the caller holds the customer's lock."""
    event_id, lane, event_type, payload = event
    await conn.execute(
        _ROTATE_SQL,
        customer_id,
        slot,
        key_hash(key),
        rotated_at,
        event_id,
        event_type,
        lane,
        payload,
    )


async def verify(pool: asyncpg.Pool, service_id: str, nonce: str, key: str) -> Verified | None:
    """The key's owner, or None; raises Replayed for a used nonce."""
    row = await pool.fetchrow(VERIFY_SQL, service_id, nonce, key_hash(key))
    assert row is not None  # the statement always returns one row
    if not row["fresh_nonce"]:
        raise Replayed
    if row["customer_id"] is None:
        return None
    return Verified(row["customer_id"], row["slot"], row["status"])
