"""A batch in flight and the rules for settling it. Pure: no I/O, so the ordering and
settle rules are unit-tested without a broker (tests/unit/test_relay_pipeline.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.outbox.producer import Failure, classify

Row = Mapping[str, Any]  # an outbox row: id, customer_id, payload


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
