"""The relay's recovery (issue 12) against real PostgreSQL and Kafka: the broker's
producer-state refusals are injected at the producer boundary, because a real broker
gives them only after crashes that cannot be timed in a test (tests/faults has those)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from aiokafka.errors import KafkaTimeoutError, OutOfOrderSequenceNumber

from service.outbox import producer as kafka
from service.outbox import relay
from tests.integration.test_relay import (
    assert_in_commit_order,
    fill_outbox,
    pending,
    relay_config,
    running,
)
from tests.kafka import read_topic, wait_for


class Broker:
    """Refuses every send of the producers it poisons, as a broker whose idempotence state
    no longer matches the producer's does: one failure, then all later sends fail too."""

    def __init__(self, error: type[Exception]) -> None:
        self.error = error
        # The producers themselves, not their id(): a closed producer's id can be reused by
        # its successor once it is garbage-collected, which would poison that one too.
        self.poisoned: list[object] = []
        self.poison_all = False
        self.sent = 0
        self.refused = 0
        self._real = kafka.send

    async def send(self, producer, topic, key, value):
        self.sent += 1
        if self.poison_all or any(producer is p for p in self.poisoned):
            self.refused += 1
            future = asyncio.get_running_loop().create_future()
            future.set_exception(self.error())
            return future
        return await self._real(producer, topic, key, value)


async def test_after_producer_state_errors_a_new_producer_sends_everything_in_order(
    topic_settings, clean_db, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="xcloud.relay")
    broker = Broker(OutOfOrderSequenceNumber)
    monkeypatch.setattr(kafka, "send", broker.send)
    total, batch = 20_000, 200
    await fill_outbox(clean_db, total, 100)
    async with running(relay_config(topic_settings, batch_size=batch)) as outbox_relay:
        await wait_for(lambda: _sent_at_least(broker, 3000), 60, 0.01)
        broker.poisoned.append(outbox_relay._producer)  # from now on it refuses everything
        await wait_for(lambda: _none_pending(clean_db), timeout=120)
    assert outbox_relay.stats.producers == 2, "one new producer, not one per attempt"
    received = await read_topic(
        topic_settings.kafka_bootstrap_servers, topic_settings.topic, until=total
    )
    assert len({r.event["id"] for r in received}) == total
    assert len(received) - total <= 2 * batch  # the bound docs/relay.md states
    assert_in_commit_order(received)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "OutOfOrderSequenceNumber" in warnings[0].getMessage()
    assert any("publishing again after 1 attempts" in r.getMessage() for r in caplog.records)


async def test_backoff_is_not_shortened_by_new_rows_while_failing(
    topic_settings, clean_db, monkeypatch
):
    broker = Broker(KafkaTimeoutError)
    monkeypatch.setattr(kafka, "send", broker.send)
    config = relay_config(topic_settings, batch_size=50, backoff_base=0.2, backoff_cap=1.0)
    async with running(config) as outbox_relay:
        await fill_outbox(clean_db, 10, 10)
        await wait_for(lambda: _published(outbox_relay, 10), 30, 0.01)
        broker.poison_all = True
        started = time.monotonic()
        while time.monotonic() - started < 4:
            await fill_outbox(clean_db, 5, 5)  # every insert NOTIFYs the relay
            await asyncio.sleep(0.01)
        failures = outbox_relay.stats.failures
        broker.poison_all = False
        await wait_for(lambda: _none_pending(clean_db), timeout=60)
        assert outbox_relay.stats.state == "publishing"
    # 0.2 + 0.4 + 0.8 + 1.0 + 1.0 ... (jitter 0.8-1): about 6 attempts in 4 s, never
    # the hundreds that wake-ups used to cause.
    assert 3 <= failures <= 8, failures


@pytest.mark.parametrize("error", [KafkaTimeoutError, OutOfOrderSequenceNumber])
async def test_state_is_publishing_only_after_an_acknowledged_batch(
    topic_settings, clean_db, monkeypatch, error
):
    broker = Broker(error)
    monkeypatch.setattr(kafka, "send", broker.send)
    broker.poison_all = True
    config = relay_config(topic_settings, batch_size=50, backoff_base=0.1, backoff_cap=0.3)
    async with running(config) as outbox_relay:
        await fill_outbox(clean_db, 20, 5)
        await wait_for(lambda: _failed_at_least(outbox_relay, 5), 30, 0.01)
        assert outbox_relay.stats.state == "broker unavailable"
        assert outbox_relay.stats.published == 0
        broker.poison_all = False
        await wait_for(lambda: _published(outbox_relay, 20), 30, 0.01)
        assert outbox_relay.stats.state == "publishing"


async def _sent_at_least(broker: Broker, n: int) -> bool:
    return broker.sent >= n


async def _published(outbox_relay: relay.Relay, n: int) -> bool:
    return outbox_relay.stats.published >= n


async def _failed_at_least(outbox_relay: relay.Relay, n: int) -> bool:
    return outbox_relay.stats.failures >= n


async def _none_pending(pool) -> bool:
    return await pending(pool) == 0
