"""Registering and updating a customer: the state and its event, through a unit of work.

Each use case says what happened as a result type; the caller renders it into the
answer (the unit of work stores that answer with the write when a key is given).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from service.db import customers
from service.db.connect import Connection
from service.domain import customer, events
from service.usecases.unit_of_work import Answer, UnitOfWork


@dataclass(frozen=True, slots=True)
class Registered:
    representation: dict[str, Any]
    keys: customer.ApiKeys  # shown in this answer only
    created: bool  # False: a customer with this id exists, nothing was written


@dataclass(frozen=True, slots=True)
class Updated:
    representation: dict[str, Any]
    etag: str


@dataclass(frozen=True, slots=True)
class NotFound:
    customer_id: str


@dataclass(frozen=True, slots=True)
class PreconditionFailed:
    """If-Match named another version."""


UpdateResult = Updated | NotFound | PreconditionFailed


async def register(
    uow: UnitOfWork,
    valid: dict[str, Any],
    limits: dict[str, int],
    render: Callable[[Registered], Answer],
) -> Answer:
    """Insert the customer, its keys and its CustomerRegistered event, unless its id
    exists (the primary key decides, under concurrency too): one statement."""
    customer_id, status = valid["customerId"], valid["status"]
    now = customer.utc_now()
    data = customer.mutable_fields(valid, limits)
    keys = customer.ApiKeys.generate()
    shown = customer.representation(customer_id, status, data, now, now)
    event_id, payload = events.envelope(events.REGISTERED, shown, now)
    new = customers.NewCustomer(customer_id, status, data, now, keys.hashes())
    event = customers.Event(event_id, customer.lane_of(customer_id), payload)
    created, exists = Registered(shown, keys, True), Registered(shown, keys, False)
    if uow.key is None:
        done = await uow.statement(
            lambda pool, service_id, nonce: customers.register(pool, service_id, nonce, new, event)
        )
        return render(created if done else exists)
    request = uow.request
    return await uow.keyed_statement(
        (render(created), render(exists)),
        lambda conn, stored: customers.register_keyed(
            conn, request.service_id, request.nonce, new, event, stored
        ),
    )


def update(
    customer_id: str, valid: dict[str, Any], matches: Callable[[str], bool] | None
) -> Callable[[Connection], Awaitable[UpdateResult]]:
    """The unit of work's effects: replace the customer's fields under its row lock and
    add a CustomerUpdated event, unless nothing changed. `matches` is If-Match's test of
    the current ETag."""

    async def effects(conn: Connection) -> UpdateResult:
        locked = await customers.lock_customer(conn, customer_id)
        row = locked.row
        if row is None:
            return NotFound(customer_id)
        current = customer.etag(customer_id, row["version"], row["updated_at"])
        if matches is not None and not matches(current):
            return PreconditionFailed()
        old = orjson.loads(row["data"])
        data = customer.mutable_fields(valid, old["limits"])
        if data == old and valid["status"] == row["status"]:  # nothing changed: no event
            return Updated(represent(row), current)
        now = max(customer.utc_now(), row["updated_at"])
        shown = customer.representation(customer_id, valid["status"], data, row["created_at"], now)
        event_id, payload = events.envelope(events.UPDATED, shown, now)
        version = await locked.save(
            valid["status"],
            data,
            now,
            customers.Event(event_id, customer.lane_of(customer_id), payload),
        )
        return Updated(shown, customer.etag(customer_id, version, now))

    return effects


def represent(row: asyncpg.Record) -> dict[str, Any]:
    """A customers row as contract section 4 shows it."""
    return customer.representation(
        row["customer_id"],
        row["status"],
        orjson.loads(row["data"]),
        row["created_at"],
        row["updated_at"],
    )
