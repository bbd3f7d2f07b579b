"""The relay's pure rules: error classification, settling a batch, backoff."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    LeaderNotAvailableError,
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RecordTooLargeError,
    UnknownProducerId,
)

from service.outbox.pipeline import Flight, settle
from service.outbox.producer import Failure, classify
from service.outbox.relay import Backoff


@pytest.mark.parametrize(
    ("exc", "acknowledgement", "expected"),
    [
        (OutOfOrderSequenceNumber(), True, Failure.NEW_PRODUCER),
        (UnknownProducerId(), True, Failure.NEW_PRODUCER),
        (ProducerFenced(), False, Failure.NEW_PRODUCER),
        # A batch that expired with no leader had burnt its sequence numbers.
        (LeaderNotAvailableError(), True, Failure.NEW_PRODUCER),
        (KafkaTimeoutError(), True, Failure.NEW_PRODUCER),
        (NotEnoughReplicasError(), True, Failure.NEW_PRODUCER),
        # Refused before anything was queued: the producer is intact.
        (KafkaTimeoutError(), False, Failure.RETRY),
        (KafkaConnectionError(), False, Failure.RETRY),
        (MessageSizeTooLargeError(), True, Failure.DEAD_LETTER),
        (RecordTooLargeError(), False, Failure.DEAD_LETTER),
    ],
)
def test_classify(exc, acknowledgement, expected):
    assert classify(exc, acknowledgement=acknowledgement) is expected


def _flight(*customers: str) -> Flight:
    loop = asyncio.new_event_loop()
    try:
        rows = [{"id": i + 1, "customer_id": c, "payload": b"{}"} for i, c in enumerate(customers)]
        return Flight(ids=[r["id"] for r in rows], sent=[(r, loop.create_future()) for r in rows])
    finally:
        loop.close()


def test_everything_acknowledged():
    result = settle(_flight("a", "b", "a"), [object(), object(), object()])
    assert result.acked == [1, 2, 3]
    assert result.pending == [] and result.error is None and result.failure is None


def test_a_failed_event_keeps_its_customers_later_events_pending_even_when_acknowledged():
    err = OutOfOrderSequenceNumber()
    result = settle(_flight("a", "b", "a", "c"), [err, object(), object(), object()])
    assert result.acked == [2, 4]
    assert result.pending == [1, 3]  # 3 was acknowledged but must follow 1 again
    assert result.error is err and result.failure is Failure.NEW_PRODUCER


def test_a_record_the_broker_never_takes_is_dead_lettered_and_the_rest_goes_on():
    big = MessageSizeTooLargeError()
    result = settle(_flight("a", "a"), [big, object()])
    assert [row_id for row_id, _ in result.dead] == [1]
    assert result.acked == [2] and result.error is None


def test_a_refusal_while_queueing_is_a_retry_with_the_same_producer():
    flight = _flight("a", "b")
    flight.refused = KafkaTimeoutError()
    result = settle(flight, [object(), object()])
    assert result.acked == [1, 2]
    assert result.failure is Failure.RETRY


def test_a_producer_state_failure_outranks_a_retry():
    flight = _flight("a", "b")
    flight.refused = KafkaTimeoutError()
    result = settle(flight, [object(), UnknownProducerId()])
    assert result.failure is Failure.NEW_PRODUCER
    assert isinstance(result.error, KafkaTimeoutError)  # the first one seen is reported


def test_backoff_doubles_up_to_its_cap_and_counts_attempts():
    backoff = Backoff(0.2, 5.0)
    delays = [backoff.next() for _ in range(10)]
    assert 0.16 <= delays[0] <= 0.2
    assert all(b >= a * 1.6 for a, b in itertools.pairwise(delays[:5]))
    assert max(delays) <= 5.0 and delays[-1] >= 4.0
    attempts, seconds = backoff.reset()
    assert attempts == 10 and seconds >= 0
    assert backoff.next() <= 0.2
