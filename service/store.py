"""The SQL of the customers and outbox tables. Each write commits a customer change and
its outbox row together; the database, not a read before the write, decides conflicts."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from service.credentials import CLAIM_NONCE_SQL

# One round trip for a registration: claim the request's nonce, insert the customer
# unless its id exists (the primary key decides, under concurrency too), and insert its
# event only if the customer row was inserted. One statement is one transaction.
_REGISTER_SQL = f"""
WITH nonce AS ({CLAIM_NONCE_SQL}),
customer AS (
    INSERT INTO customers (customer_id, status, data, created_at, updated_at,
                           primary_key_hash, secondary_key_hash)
    SELECT $3, $4, $5::jsonb, $6, $6, $7, $8
    WHERE EXISTS (SELECT 1 FROM nonce)
    ON CONFLICT (customer_id) DO NOTHING
    RETURNING customer_id
),
event AS (
    INSERT INTO outbox (event_id, event_type, customer_id, lane, payload)
    SELECT $9, 'CustomerRegistered', customer_id, $10, $11 FROM customer
    RETURNING id
)
SELECT EXISTS (SELECT 1 FROM nonce) AS fresh_nonce, EXISTS (SELECT 1 FROM event) AS created
"""


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
    pool: asyncpg.Pool, service_id: str, nonce: str, customer: NewCustomer, event: Event
) -> bool:
    """True when created, False when the id exists; raises Replayed for a used nonce."""
    row = await pool.fetchrow(
        _REGISTER_SQL,
        service_id,
        nonce,
        customer.customer_id,
        customer.status,
        json.dumps(customer.data, ensure_ascii=False, separators=(",", ":")),
        customer.created_at,
        *customer.key_hashes,
        event.event_id,
        event.lane,
        event.payload,
    )
    if not row["fresh_nonce"]:
        raise Replayed
    return row["created"]


# --- The outbox, as the relay sees it ------------------------------------------------

# Pending rows of the lanes a relay holds, in id order (= commit order per customer).
FETCH_PENDING_SQL = """
SELECT id, customer_id, payload FROM outbox
WHERE published_at IS NULL AND dead_lettered_at IS NULL AND lane = ANY($1::smallint[])
ORDER BY id
LIMIT $2
"""

MARK_PUBLISHED_SQL = "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])"

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
