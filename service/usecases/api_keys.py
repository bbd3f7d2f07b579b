"""Rotating and verifying customers' API keys (contract section 13)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from service.db import api_keys as api_key_rows
from service.db import customers
from service.db.connect import Connection
from service.domain import api_keys, customer, events
from service.usecases.customers import NotFound
from service.usecases.unit_of_work import UnitOfWork


@dataclass(frozen=True, slots=True)
class Rotated:
    customer_id: str
    slot: str
    api_key: str  # shown in this answer only
    rotated_at: str


def rotate(customer_id: str, slot: str) -> Callable[[Connection], Awaitable[Rotated | NotFound]]:
    """The unit of work's effects: a new key for `slot` under the customer's row lock
    (the old one stops matching in the same commit) and its CustomerApiKeyRotated event,
    which never carries a key."""

    async def effects(conn: Connection) -> Rotated | NotFound:
        if (await customers.lock_customer(conn, customer_id)).row is None:
            return NotFound(customer_id)
        now = customer.utc_now()
        new_key = api_keys.new_key()
        data = {"customerId": customer_id, "slot": slot, "rotatedAt": customer.rfc3339(now)}
        event_id, payload = events.envelope(events.KEY_ROTATED, data, now)
        lane = customer.lane_of(customer_id)
        await api_key_rows.rotate(
            conn, customer_id, slot, new_key, now, (event_id, lane, events.KEY_ROTATED, payload)
        )
        return Rotated(customer_id, slot, new_key, data["rotatedAt"])

    return effects


async def verify(uow: UnitOfWork, key: str) -> api_key_rows.Verified | None:
    """The key's owner, or None. Claims the nonce in the same statement: one round trip."""
    return await uow.statement(
        lambda pool, service_id, nonce: api_key_rows.verify(pool, service_id, nonce, key),
        adds_events=False,
    )
