"""The Kafka side of the relay: the topic, one idempotent producer at a time, and what a
failed send asks of the relay."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    IllegalStateError,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    InvalidTimestampError,
    InvalidTxnState,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
    UnknownProducerId,
    for_code,
)

from service.domain.events import CONTENT_TYPE

log = logging.getLogger("xcloud.relay")

HEADERS = [("content-type", CONTENT_TYPE.encode())]


class Failure(enum.Enum):
    """What a Kafka error asks of the relay."""

    RETRY = "retry"  # the producer is intact: send again, same producer, after a backoff
    NEW_PRODUCER = "new producer"  # its sequence state is unknown: replace it, then resend
    DEAD_LETTER = "dead letter"  # this one record can never be published


# The broker will never take these records, however often they are sent.
PER_RECORD = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidTimestampError,
)
# The producer's idempotence state (producer id, epoch, sequence numbers) no longer
# matches the broker's: every later send through it would fail the same way.
PRODUCER_STATE = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    ProducerFenced,
    InvalidProducerIdMapping,
    InvalidTxnState,
    ProducerClosed,
    IllegalStateError,
)


def classify(exc: BaseException, *, acknowledgement: bool) -> Failure:
    """`acknowledgement`: the error came from a record's acknowledgement, not from
    handing the record to the producer.

    A failed acknowledgement always means a new producer. Its batch had been given
    sequence numbers (aiokafka may even expire such a batch when a partition has no
    leader), so the broker now expects numbers that the producer has moved past, and
    every later batch to that partition would fail with OutOfOrderSequenceNumber: the
    loop of issue 12. A refusal before anything was queued leaves the producer intact."""
    if isinstance(exc, PER_RECORD):
        return Failure.DEAD_LETTER
    if acknowledgement or isinstance(exc, PRODUCER_STATE):
        return Failure.NEW_PRODUCER
    return Failure.RETRY


def unreachable(exc: BaseException) -> bool:
    """A broker that is not there (yet), as opposed to a configuration mistake."""
    return isinstance(exc, OSError | KafkaTimeoutError) or getattr(exc, "retriable", False)


async def ensure_topic(bootstrap: str, topic: str, partitions: int, replication: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        response = await admin.create_topics([NewTopic(topic, partitions, replication)])
    finally:
        await admin.close()
    # The answer carries an error code per topic rather than raising.
    for _topic, code, *_ in response.topic_errors:
        if code == TopicAlreadyExistsError.errno:
            continue
        if code:
            raise for_code(code)(f"cannot create topic {topic}")
        log.info("created topic %s with %d partitions", topic, partitions)


async def start_producer(bootstrap: str, linger_ms: int) -> AIOKafkaProducer:
    """A new idempotent producer: a new producer id, sequence numbers from zero."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,  # per-partition order survives the producer's own retries
        linger_ms=linger_ms,
        max_batch_size=256 * 1024,
        request_timeout_ms=30_000,
    )
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise
    return producer


async def close_producer(producer: AIOKafkaProducer, wait: float) -> None:
    """Stop it before a successor sends, so it cannot go on retrying old batches. What it
    could not deliver in `wait` seconds is abandoned; those rows are still pending and are sent
    again (any copy it did deliver is a duplicate, never a reordering: docs/relay.md)."""
    try:
        await asyncio.wait_for(producer.stop(), wait)
    except Exception:
        # stop() flushes first, and a broker that is down keeps it waiting; aiokafka has
        # no way to close without flushing, so end its sender rather than leak a task
        # that retries those batches for ever.
        task = getattr(getattr(producer, "_sender", None), "sender_task", None)
        if task is not None:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.client.close(), 5)


async def send(
    producer: AIOKafkaProducer, topic: str, key: str, value: bytes
) -> asyncio.Future[object]:
    """Queue one record; the returned future resolves on the broker's acknowledgement."""
    return await producer.send(topic, value, key=key.encode("utf-8"), headers=HEADERS)
