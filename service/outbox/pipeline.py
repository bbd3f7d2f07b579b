"""A batch in flight and the rules for settling it. Pure: no I/O, so the ordering and
settle rules are unit-tested without a broker (tests/unit/test_relay_pipeline.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka.errors import KafkaError

from service.outbox.producer import PER_RECORD, Failure, classify


class Row(Protocol):
    """An outbox row (id, customer_id, payload): an asyncpg Record, or a dict in tests."""

    def __getitem__(self, key: str, /) -> Any: ...


# Queue one row with the producer; the future resolves on the broker's acknowledgement.
Send = Callable[[Row], Awaitable["asyncio.Future[Any]"]]


@dataclass
class Flight:
    """A batch handed to the producer in id order, not yet settled."""

    ids: list[int]
    sent: list[tuple[Row, asyncio.Future[Any]]] = field(default_factory=list)
    dead: list[tuple[int, BaseException]] = field(default_factory=list)
    # The first refusal while queueing: nothing after it was queued.
    refused: BaseException | None = None

    def forget(self) -> None:
        """Drop it without settling: its rows stay pending. Acknowledgements may still
        come; retrieve their outcome so that none is reported as never retrieved."""
        for _, future in self.sent:
            future.add_done_callback(lambda f: f.cancelled() or f.exception())


async def queue(rows: Sequence[Row], send: Send) -> Flight:
    """Hand rows to the producer (`send`) in id order; the acknowledgements come later."""
    flight = Flight(ids=[row["id"] for row in rows])
    for row in rows:
        try:
            future = await send(row)
        except PER_RECORD as exc:
            flight.dead.append((row["id"], exc))
            continue
        except KafkaError as exc:
            # Stop here: later rows may be this customer's later events.
            flight.refused = exc
            break
        flight.sent.append((row, future))
    return flight


@dataclass
class Settlement:
    acked: list[int] = field(default_factory=list)  # delete (or mark) these
    dead: list[tuple[int, BaseException]] = field(default_factory=list)  # dead-letter these
    pending: list[int] = field(default_factory=list)  # sent again later, in order
    error: BaseException | None = None  # the first failure, if any
    failure: Failure | None = None  # what it asks of the relay

    def worst(self, exc: BaseException, failure: Failure) -> None:
        if self.failure is None or failure is Failure.NEW_PRODUCER:
            self.failure = failure
        self.error = self.error or exc


def settle(flight: Flight, outcomes: Sequence[object]) -> Settlement:
    """`outcomes`: each sent record's acknowledgement, or the exception it failed with,
    in the order sent.

    A record that failed stays pending, and so does every later record of the same
    customer, even one the broker acknowledged: it is sent again after the failed one,
    so the customer's last event on the topic is its latest state (docs/relay.md)."""
    result = Settlement(dead=list(flight.dead))
    if flight.refused is not None:
        result.worst(flight.refused, classify(flight.refused, acknowledgement=False))
    failed_customers: set[str] = set()
    for (row, _), outcome in zip(flight.sent, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            failure = classify(outcome, acknowledgement=True)
            if failure is Failure.DEAD_LETTER:
                result.dead.append((row["id"], outcome))
                continue
            result.worst(outcome, failure)
        if isinstance(outcome, BaseException) or row["customer_id"] in failed_customers:
            failed_customers.add(row["customer_id"])
            result.pending.append(row["id"])
        else:
            result.acked.append(row["id"])
    return result
