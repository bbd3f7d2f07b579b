"""The SQL of the customers table. Each write commits a customer change and its outbox
row together; the database, not a read before the write, decides conflicts."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from service.db import api_keys, idempotency_keys
from service.db.connect import Connection
from service.db.nonces import CLAIM_NONCE_SQL, Replayed
from service.domain import events

# One round trip for a registration: claim the request's nonce, insert the customer
# unless its id exists (the primary key decides, under concurrency too), and insert its
# keys and event only if the customer row was inserted. One statement is one transaction.
# Event types are formatted in from domain/events.py (fixed names, no quote in them): the
# statement text stays constant, so asyncpg prepares it once.
_REGISTER_TEMPLATE = """
WITH nonce AS ({nonce}),{prior}
customer AS (
    INSERT INTO customers (customer_id, status, data, created_at, updated_at)
    SELECT $3, $4, $5::jsonb, $6, $6
    WHERE {guard}
    ON CONFLICT (customer_id) DO NOTHING
    RETURNING customer_id
),
keys AS ({keys}),
event AS (
    INSERT INTO outbox (event_id, event_type, customer_id, lane, payload)
    SELECT $9, '{event_type}', customer_id, $10, $11 FROM customer
    RETURNING id
){answer}
SELECT EXISTS (SELECT 1 FROM nonce) AS fresh_nonce, EXISTS (SELECT 1 FROM event) AS created
{answer_columns}"""
_KEYS_CTE = api_keys.INSERT_BOTH_SQL.format(created_at="$6", primary="$7", secondary="$8")
_REGISTER_SQL = _REGISTER_TEMPLATE.format(
    event_type=events.REGISTERED,
    nonce=CLAIM_NONCE_SQL,
    prior="",
    guard="EXISTS (SELECT 1 FROM nonce)",
    keys=_KEYS_CTE,
    answer="",
    answer_columns="",
)
# With an Idempotency-Key, inside the transaction that claimed the nonce and holds the
# key's lock (usecases/unit_of_work.py): the same statement also looks the key up,
# writes nothing when an answer is stored, and else stores its own (201 or 409), sealed
# ahead for both outcomes. $12 key, $13 request hash, $14 201's headers, $15 201's body,
# $16 409's body, $17 time to live.
_CREATED = "EXISTS (SELECT 1 FROM customer)"
_REGISTER_KEYED_SQL = _REGISTER_TEMPLATE.format(
    event_type=events.REGISTERED,
    nonce="SELECT $1::text, $2::text",  # claimed already: only echoed
    prior=f"\nprior AS ({idempotency_keys.prior_sql('$1', '$12')}),",
    guard="NOT EXISTS (SELECT 1 FROM prior)",
    keys=_KEYS_CTE,
    answer=",\nanswer AS ("
    + idempotency_keys.store_sql(
        "$1",
        "$12",
        "$13",
        f"CASE WHEN {_CREATED} THEN 201 ELSE 409 END",
        f"CASE WHEN {_CREATED} THEN $14 ELSE '{{}}' END",
        f"CASE WHEN {_CREATED} THEN $15::bytea ELSE $16::bytea END",
        "$17",
        where="WHERE NOT EXISTS (SELECT 1 FROM prior)",
    )
    + ")",
    answer_columns=""", EXISTS (SELECT 1 FROM answer) AS stored,
       p.request_hash, p.status, p.headers, p.body_sealed
FROM (SELECT 1) AS one LEFT JOIN prior AS p ON true""",
)


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


async def register(
    pool: asyncpg.Pool, service_id: str, nonce: str, customer: NewCustomer, event: Event
) -> bool:
    """True when created, False when the id exists; raises Replayed for a used nonce."""
    row = await pool.fetchrow(_REGISTER_SQL, service_id, nonce, *_register_args(customer, event))
    assert row is not None  # the statement always returns one row
    if not row["fresh_nonce"]:
        raise Replayed
    return row["created"]


def _register_args(customer: NewCustomer, event: Event) -> tuple[object, ...]:
    return (
        customer.customer_id,
        customer.status,
        orjson.dumps(customer.data).decode(),
        customer.created_at,
        *customer.key_hashes,
        event.event_id,
        event.lane,
        event.payload,
    )


@dataclass(frozen=True, slots=True)
class KeyedAnswers:
    """What register_keyed stores: the 201's headers and sealed body, the 409's body."""

    key: str
    request_hash: bytes
    created_headers: str
    created_body: bytes
    exists_body: bytes
    ttl_seconds: int


async def register_keyed(
    conn: Connection,
    service_id: str,
    nonce: str,
    customer: NewCustomer,
    event: Event,
    answers: KeyedAnswers,
) -> asyncpg.Record:
    """Registration with an Idempotency-Key, in the transaction holding the key's lock:
    the row has `created`, and the stored answer's columns (request_hash ...) when one
    was live (then nothing was written)."""
    row = await conn.fetchrow(
        _REGISTER_KEYED_SQL,
        service_id,
        nonce,
        *_register_args(customer, event),
        answers.key,
        answers.request_hash,
        answers.created_headers,
        answers.created_body,
        answers.exists_body,
        float(answers.ttl_seconds),
    )
    assert row is not None  # the statement always returns one row
    if row["request_hash"] is None and not row["stored"]:
        # A live answer appeared despite the lock: never overwrite one.
        raise RuntimeError("a live stored answer exists for a key whose lock was held")
    return row


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
    args: list[object] = [limit]
    if status is not None:
        args.append(status)
    if after is not None:
        args.extend(after)
    return await pool.fetch(LIST_SQL[(status is not None, after is not None)], *args)


async def existing(pool: asyncpg.Pool, customer_ids: list[str]) -> dict[str, asyncpg.Record]:
    rows = await pool.fetch(EXISTING_SQL, customer_ids)
    return {r["customer_id"]: r for r in rows}


# --- Updates -------------------------------------------------------------------------

_UPDATE_SQL = f"""
WITH updated AS (
    UPDATE customers SET status = $2, data = $3::jsonb, updated_at = $4, version = version + 1
    WHERE customer_id = $1
    RETURNING version
)
INSERT INTO outbox (event_id, event_type, customer_id, lane, payload)
SELECT $5, '{events.UPDATED}', $1, $6, $7 FROM updated
RETURNING (SELECT version FROM updated)
"""


class LockedCustomer:
    """A customer row held under FOR UPDATE until the transaction ends. Every writer of
    a customer's events holds this lock, which makes outbox id order commit order."""

    def __init__(self, conn: Connection, customer_id: str, row: asyncpg.Record | None):
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


async def lock_customer(conn: Connection, customer_id: str) -> LockedCustomer:
    """The customer under FOR UPDATE (row None when unknown), in the caller's transaction,
    which has claimed the request's nonce (usecases/unit_of_work.py)."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM customers WHERE customer_id = $1 FOR UPDATE", customer_id
    )
    return LockedCustomer(conn, customer_id, row)
