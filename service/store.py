"""The SQL of the customers and outbox tables. Each write commits a customer change and
its outbox row together; the database, not a read before the write, decides conflicts."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from service import api_keys
from service.credentials import CLAIM_NONCE_SQL

# One round trip for a registration: claim the request's nonce, insert the customer
# unless its id exists (the primary key decides, under concurrency too), and insert its
# keys and event only if the customer row was inserted. One statement is one transaction.
# With an Idempotency-Key the nonce was claimed earlier in the transaction (idempotency.py):
# then `nonce` is a constant row.
_REGISTER_TEMPLATE = """
WITH nonce AS ({nonce}),
customer AS (
    INSERT INTO customers (customer_id, status, data, created_at, updated_at)
    SELECT $3, $4, $5::jsonb, $6, $6
    WHERE EXISTS (SELECT 1 FROM nonce)
    ON CONFLICT (customer_id) DO NOTHING
    RETURNING customer_id
),
keys AS ({keys}),
event AS (
    INSERT INTO outbox (event_id, event_type, customer_id, lane, payload)
    SELECT $9, 'CustomerRegistered', customer_id, $10, $11 FROM customer
    RETURNING id
)
SELECT EXISTS (SELECT 1 FROM nonce) AS fresh_nonce, EXISTS (SELECT 1 FROM event) AS created
"""
_KEYS_CTE = api_keys.INSERT_BOTH_SQL.format(created_at="$6", primary="$7", secondary="$8")
_REGISTER_SQL = _REGISTER_TEMPLATE.format(nonce=CLAIM_NONCE_SQL, keys=_KEYS_CTE)
# Same parameters, the nonce's merely echoed.
_REGISTER_CLAIMED_SQL = _REGISTER_TEMPLATE.format(nonce="SELECT $1::text, $2::text", keys=_KEYS_CTE)


@dataclass(frozen=True, slots=True)
class NewCustomer:
    customer_id: str
    status: str
    data: dict[str, Any]
    created_at: datetime
    key_hashes: tuple[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Event:
    event_id: uuid.UUID
    lane: int
    payload: bytes


class Replayed(Exception):
    """The request's nonce had been used already."""


async def register(
    db: asyncpg.Pool | asyncpg.Connection,
    service_id: str,
    nonce: str,
    customer: NewCustomer,
    event: Event,
    *,
    nonce_claimed: bool = False,
) -> bool:
    """True when created, False when the id exists; raises Replayed for a used nonce.
    `nonce_claimed`: inside a transaction that has claimed it already."""
    row = await db.fetchrow(
        _REGISTER_CLAIMED_SQL if nonce_claimed else _REGISTER_SQL,
        service_id,
        nonce,
        customer.customer_id,
        customer.status,
        orjson.dumps(customer.data).decode(),
        customer.created_at,
        *customer.key_hashes,
        event.event_id,
        event.lane,
        event.payload,
    )
    if not row["fresh_nonce"]:
        raise Replayed
    return row["created"]


# --- Reads ---------------------------------------------------------------------------

_COLUMNS = "customer_id, status, data, created_at, updated_at, version"


GET_SQL = f"SELECT {_COLUMNS} FROM customers WHERE customer_id = $1"
EXISTING_SQL = (
    "SELECT customer_id, updated_at, version FROM customers WHERE customer_id = ANY($1::text[])"
)


async def get(pool: asyncpg.Pool, customer_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow(GET_SQL, customer_id)


# Keyset pages: each variant is one index range scan (sql/002), whatever the page number.
LIST_SQL = {
    (False, False): f"""SELECT {_COLUMNS} FROM customers
        ORDER BY created_at, customer_id LIMIT $1""",
    (False, True): f"""SELECT {_COLUMNS} FROM customers
        WHERE (created_at, customer_id) > ($2, $3)
        ORDER BY created_at, customer_id LIMIT $1""",
    (True, False): f"""SELECT {_COLUMNS} FROM customers WHERE status = $2
        ORDER BY created_at, customer_id LIMIT $1""",
    (True, True): f"""SELECT {_COLUMNS} FROM customers
        WHERE status = $2 AND (created_at, customer_id) > ($3, $4)
        ORDER BY created_at, customer_id LIMIT $1""",
}


async def list_page(
    pool: asyncpg.Pool,
    *,
    limit: int,
    status: str | None = None,
    after: tuple[datetime, str] | None = None,
) -> list[asyncpg.Record]:
    args: list[Any] = [limit]
    if status is not None:
        args.append(status)
    if after is not None:
        args.extend(after)
    return await pool.fetch(LIST_SQL[(status is not None, after is not None)], *args)


async def existing(pool: asyncpg.Pool, customer_ids: list[str]) -> dict[str, asyncpg.Record]:
    rows = await pool.fetch(EXISTING_SQL, customer_ids)
    return {r["customer_id"]: r for r in rows}


# --- Updates -------------------------------------------------------------------------

_UPDATE_SQL = """
WITH updated AS (
    UPDATE customers SET status = $2, data = $3::jsonb, updated_at = $4, version = version + 1
    WHERE customer_id = $1
    RETURNING version
)
INSERT INTO outbox (event_id, event_type, customer_id, lane, payload)
SELECT $5, 'CustomerUpdated', $1, $6, $7 FROM updated
RETURNING (SELECT version FROM updated)
"""


class LockedCustomer:
    """A customer row held under FOR UPDATE until the transaction ends. Every writer of
    a customer's events holds this lock, which makes outbox id order commit order."""

    def __init__(self, conn: asyncpg.Connection, customer_id: str, row: asyncpg.Record | None):
        self._conn = conn
        self.customer_id = customer_id
        self.row = row

    async def save(
        self, status: str, data: dict[str, Any], updated_at: datetime, event: Event
    ) -> int:
        """Write the new state and its CustomerUpdated event; return the new version."""
        return await self._conn.fetchval(
            _UPDATE_SQL,
            self.customer_id,
            status,
            orjson.dumps(data).decode(),
            updated_at,
            event.event_id,
            event.lane,
            event.payload,
        )


async def lock_customer(conn: asyncpg.Connection, customer_id: str) -> LockedCustomer:
    """The customer under FOR UPDATE (row None when unknown), in the caller's transaction,
    which has claimed the request's nonce (idempotency.write_transaction)."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM customers WHERE customer_id = $1 FOR UPDATE", customer_id
    )
    return LockedCustomer(conn, customer_id, row)


# --- The outbox, as the relay sees it ------------------------------------------------

# Pending rows of the lanes a relay holds, in id order (= commit order per customer).
FETCH_PENDING_SQL = """
SELECT id, customer_id, payload FROM outbox
WHERE published_at IS NULL AND dead_lettered_at IS NULL AND lane = ANY($1::smallint[])
  AND NOT id = ANY($2::bigint[])  -- the batch still in flight
ORDER BY id
LIMIT $3
"""

MARK_PUBLISHED_SQL = "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])"
DELETE_ACKNOWLEDGED_SQL = "DELETE FROM outbox WHERE id = ANY($1::bigint[])"

RECORD_FAILURE_SQL = """
UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = ANY($1::bigint[])
"""

DEAD_LETTER_SQL = """
UPDATE outbox SET dead_lettered_at = now(), attempts = attempts + 1, last_error = $2
WHERE id = $1
"""

# Small batches, so retention never holds long locks or builds a huge transaction.
DELETE_PUBLISHED_SQL = """
DELETE FROM outbox WHERE id = ANY(ARRAY(
    SELECT id FROM outbox
    WHERE published_at < now() - make_interval(secs => $1)
    ORDER BY published_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED))
"""
