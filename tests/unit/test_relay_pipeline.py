"""The relay's pure rules: error classification, settling a batch, backoff, and the
per-customer order and settle rules of the pipeline against a fake producer."""

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
from hypothesis import given
from hypothesis import strategies as st

from service.outbox.pipeline import Flight, queue, settle
from service.outbox.producer import Failure, classify
from service.outbox.relay import Backoff
from tests.helpers import PROPERTY


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


# --- the pipeline against a fake producer ---------------------------------------------
# The relay's loop without its I/O: fetch the oldest pending rows, queue them with the
# producer in id order, settle on the acknowledgements, again until nothing is pending.
# The fake producer acknowledges, fails or refuses each send as scripted; what it
# acknowledged is "on the topic", in acknowledgement order (duplicates included, as a
# real resend leaves them).

ACK, FAIL_ACK, REFUSE, TOO_LARGE = "ack", "fail ack", "refuse", "too large"


class FakeProducer:
    def __init__(self, script: list[str], too_large: set[int]) -> None:
        self.script = list(script)  # one outcome per send; acknowledge once it runs out
        self.too_large = too_large  # row ids the broker can never take
        self.topic: list[tuple[str, int]] = []  # (key, row id), as acknowledged
        self.acknowledged: set[int] = set()
        self._loop = asyncio.get_running_loop()

    async def send(self, row) -> asyncio.Future:
        if row["id"] in self.too_large:
            raise MessageSizeTooLargeError()
        what = self.script.pop(0) if self.script else ACK
        if what == REFUSE:
            raise KafkaConnectionError()
        future = self._loop.create_future()
        if what == FAIL_ACK:
            future.set_exception(OutOfOrderSequenceNumber())
        else:
            future.set_result(object())
            self.topic.append((row["customer_id"], row["id"]))
            self.acknowledged.add(row["id"])
        return future


def _outcome(future: asyncio.Future) -> object:
    return future.exception() or future.result()


async def _relay(rows, producer: FakeProducer, batch: int, settle_rule=settle):
    """Run the pipeline until the outbox holds nothing pending; (settled, dead-lettered)."""
    pending = {row["id"]: row for row in rows}
    settled: list[int] = []
    dead: list[int] = []
    for _ in range(1000):
        if not pending:
            return settled, dead
        oldest = [pending[i] for i in sorted(pending)][:batch]
        flight = await queue(oldest, producer.send)
        result = settle_rule(flight, [_outcome(f) for _, f in flight.sent])
        for row_id in result.acked:
            assert row_id in producer.acknowledged, f"row {row_id} settled unacknowledged"
            settled.append(pending.pop(row_id)["id"])
        for row_id, _ in result.dead:
            dead.append(pending.pop(row_id)["id"])
        unsettled = set(flight.ids) - set(result.acked) - {i for i, _ in result.dead}
        assert set(result.pending) <= unsettled
    raise AssertionError("the outbox never drained")


def _rows(customers: list[str]) -> list[dict]:
    return [{"id": i + 1, "customer_id": c, "payload": b"{}"} for i, c in enumerate(customers)]


def _check(rows, producer: FakeProducer, settled: list[int], dead: list[int]) -> None:
    by_id = {row["id"]: row for row in rows}
    # Nothing lost: each row settled or dead-lettered exactly once; dead only if too large.
    assert sorted(settled + dead) == sorted(by_id)
    assert set(dead) == producer.too_large & set(by_id)
    # Every settled row is on the topic.
    assert set(settled) <= {row_id for _, row_id in producer.topic}
    # Per customer: the last copy of each event comes in commit (id) order, so the
    # customer's last event on the topic is its latest one.
    for customer in {row["customer_id"] for row in rows}:
        on_topic = [row_id for key, row_id in producer.topic if key == customer]
        last_copy = {row_id: position for position, row_id in enumerate(on_topic)}
        assert sorted(last_copy, key=last_copy.__getitem__) == sorted(last_copy), on_topic
        expected = [i for i, row in by_id.items() if row["customer_id"] == customer]
        live = [i for i in expected if i not in dead]
        if live:
            assert on_topic[-1] == max(live), f"{customer}: {on_topic}"


def test_an_acknowledged_event_after_its_customers_failed_one_is_sent_again_after_it():
    async def run():
        rows = _rows(["a", "b", "a"])
        producer = FakeProducer([FAIL_ACK, ACK, ACK], set())
        settled, dead = await _relay(rows, producer, batch=10)
        assert producer.topic == [("b", 2), ("a", 3), ("a", 1), ("a", 3)]
        assert settled == [2, 1, 3] and dead == []
        _check(rows, producer, settled, dead)

    asyncio.run(run())


def test_a_refused_send_stops_the_batch_there_and_the_rest_follows_in_order():
    async def run():
        rows = _rows(["a", "b", "a", "b"])
        producer = FakeProducer([ACK, REFUSE], set())
        settled, dead = await _relay(rows, producer, batch=10)
        assert producer.topic == [("a", 1), ("b", 2), ("a", 3), ("b", 4)]
        assert settled == [1, 2, 3, 4]
        _check(rows, producer, settled, dead)

    asyncio.run(run())


def test_a_record_too_large_is_dead_lettered_and_its_customers_next_goes_on():
    async def run():
        rows = _rows(["a", "a", "b"])
        producer = FakeProducer([], {1})
        settled, dead = await _relay(rows, producer, batch=10)
        assert dead == [1] and settled == [2, 3]
        _check(rows, producer, settled, dead)

    asyncio.run(run())


def test_the_checks_catch_a_settle_rule_that_forgets_the_customers_later_events():
    """The invariants above can fail: settling an acknowledged event after its customer's
    failed one (what `settle` must not do) leaves a stale state last on the topic."""

    def careless_settle(flight, outcomes):
        result = settle(flight, outcomes)
        sent = [row["id"] for row, _ in flight.sent]
        acked = {i for i, o in zip(sent, outcomes, strict=True) if not isinstance(o, Exception)}
        result.acked = sorted(acked)
        result.pending = [i for i in result.pending if i not in acked]
        return result

    async def run():
        rows = _rows(["a", "b", "a"])
        producer = FakeProducer([FAIL_ACK, ACK, ACK], set())
        settled, dead = await _relay(rows, producer, batch=10, settle_rule=careless_settle)
        assert producer.topic == [("b", 2), ("a", 3), ("a", 1)]  # a's last event: its first
        with pytest.raises(AssertionError):
            _check(rows, producer, settled, dead)

    asyncio.run(run())


@given(
    customers=st.lists(st.sampled_from("abcd"), min_size=1, max_size=40),
    script=st.lists(st.sampled_from([ACK, ACK, ACK, FAIL_ACK, REFUSE]), max_size=120),
    too_large=st.sets(st.integers(1, 40), max_size=3),
    batch=st.integers(1, 12),
)
@PROPERTY
def test_any_mix_of_acks_failures_and_refusals_keeps_each_customers_order(
    customers, script, too_large, batch
):
    async def run():
        rows = _rows(customers)
        producer = FakeProducer(script, too_large)
        settled, dead = await _relay(rows, producer, batch)
        _check(rows, producer, settled, dead)

    asyncio.run(run())
