"""The SQL of auth_nonces: each (service id, nonce) is accepted once within its window."""

from __future__ import annotations

import asyncpg

from service.auth.signing import WINDOW_SECONDS
from service.db.connect import Executor

# A nonce must be remembered for as long as its timestamp could still pass (window
# either side of now), plus a margin for clock differences between instances.
NONCE_TTL_SECONDS = 2 * WINDOW_SECONDS + 60


# Claims (service id, nonce) unless a live claim exists; an expired one is taken over.
# Returns a row only when this request is the first to use the nonce in the window.
# The writes' own statements (db/customers.py, db/api_keys.py, db/idempotency_keys.py)
# embed the same text as a CTE, to stay one round trip.
CLAIM_NONCE_SQL = f"""
    INSERT INTO auth_nonces (service_id, nonce, expires_at)
    VALUES ($1, $2, now() + make_interval(secs => {NONCE_TTL_SECONDS}))
    ON CONFLICT (service_id, nonce) DO UPDATE SET expires_at = EXCLUDED.expires_at
        WHERE auth_nonces.expires_at < now()
    RETURNING 1
"""


class Replayed(Exception):
    """The request's nonce had been used already (raised where a write claims it)."""


async def claim_nonce(pool: Executor, service_id: str, nonce: str) -> bool:
    return await pool.fetchval(CLAIM_NONCE_SQL, service_id, nonce) is not None


async def delete_expired_nonces(pool: asyncpg.Pool, batch: int = 5000) -> int:
    status = await pool.execute(
        """DELETE FROM auth_nonces WHERE ctid = ANY (ARRAY(
               SELECT ctid FROM auth_nonces WHERE expires_at < now() LIMIT $1))""",
        batch,
    )
    return int(status.split()[-1])
