"""The outbox relay against real PostgreSQL and a real Kafka broker (contract section 9)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg

from service.api.app import create_app
from service.api.keys import WAKER
from service.domain import customer
from service.outbox import relay
from service.outbox.wakeup import NOTIFY_CHANNEL, Waker
from service.tools.client import XCloudClient, make_customer_id
from tests import services as test_services
from tests.helpers import DOC_EXAMPLE, SECRET_KEY, example, spawn_xcloud
from tests.kafka import by_subject, first_occurrences, read_topic, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def relay_config(s, **kw) -> relay.RelayConfig:
    return dataclasses.replace(relay.config_from(s), **kw)


@contextlib.asynccontextmanager
async def running(config: relay.RelayConfig) -> AsyncIterator[relay.Relay]:
    """A relay in this process for the block; stopped gracefully after it."""
    outbox_relay = relay.Relay(config)
    task = asyncio.create_task(outbox_relay.run())
    try:
        yield outbox_relay
    finally:
        outbox_relay.stop()
        await task


async def fill_outbox(pool, n: int, customers_count: int, *, payload_pad: int = 0) -> None:
    """n events for `customers_count` customers, each customer's in increasing `seq`,
    inserted in id order: what many registrations and updates leave behind."""
    await pool.execute(
        """
        INSERT INTO outbox (event_id, event_type, customer_id, lane, payload)
        SELECT e.id, 'CustomerUpdated', e.cust, 0,
               convert_to(json_build_object('id', e.id, 'subject', e.cust,
                                            'seq', e.i / $2, 'pad', repeat('x', $3))::text,
                          'UTF8')
        FROM (SELECT gen_random_uuid() AS id, i, 'FST-12345678-c' || (i % $2) AS cust
              FROM generate_series(0, $1 - 1) AS i) e
        ORDER BY e.i
        """,
        n,
        customers_count,
        payload_pad,
    )
    # Lanes as the application computes them.
    for cust in {f"FST-12345678-c{i}" for i in range(customers_count)}:
        await pool.execute(
            "UPDATE outbox SET lane = $1 WHERE customer_id = $2", customer.lane_of(cust), cust
        )


async def pending(pool) -> int:
    return await pool.fetchval(
        "SELECT count(*) FROM outbox WHERE published_at IS NULL AND dead_lettered_at IS NULL"
    )


def assert_in_commit_order(received) -> None:
    for subject, events in by_subject(received).items():
        seqs = [r.event["seq"] for r in first_occurrences(events)]
        assert seqs == sorted(seqs), f"{subject} out of order: {seqs}"


def relay_process(s, **env_extra) -> subprocess.Popen:
    env = {
        **os.environ,
        "DATABASE_URL": s.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
        "XCLOUD_SECRET_KEY": SECRET_KEY,
        "XCLOUD_TOPIC": s.topic,
        **env_extra,
    }
    return spawn_xcloud(
        "relay",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


# --- end to end ------------------------------------------------------------------


async def test_a_registration_arrives_as_a_cloudevent(
    aiohttp_client, topic_settings, credential, clean_db
):
    client = await aiohttp_client(create_app(topic_settings))
    async with running(relay_config(topic_settings)):
        async with XCloudClient(str(client.make_url("")), *credential) as xc:
            created = await xc.register_customer(DOC_EXAMPLE)
        received = await read_topic(
            topic_settings.kafka_bootstrap_servers, topic_settings.topic, until=1
        )
    assert len(received) == 1
    msg = received[0]
    assert msg.key == DOC_EXAMPLE["customerId"]
    assert msg.headers["content-type"] == b"application/cloudevents+json; charset=UTF-8"
    event = msg.event
    assert set(event) == {
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "datacontenttype",
        "data",
    }
    assert event["specversion"] == "1.0"
    assert uuid.UUID(event["id"])
    assert event["source"] == "/xcloud/v1/customers"
    assert event["type"] == "CustomerRegistered"
    assert event["subject"] == DOC_EXAMPLE["customerId"]
    assert event["time"].endswith("Z")
    assert event["datacontenttype"] == "application/json"
    assert event["data"]["customerId"] == DOC_EXAMPLE["customerId"]
    assert event["data"]["createdAt"] == created["createdAt"]
    raw = json.dumps(event)
    for key in created["apiKeys"].values():
        assert key not in raw
    assert "hash" not in raw.lower()
    # With no retention configured, the acknowledged row leaves the outbox (a graceful
    # stop settles the batch in flight).
    await wait_for(lambda: _outbox_empty(clean_db), timeout=10)


async def _outbox_empty(pool) -> bool:
    return await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_notify_wakes_the_relay_long_before_its_poll(
    aiohttp_client, topic_settings, credential, clean_db
):
    """A relay idle in a 30-second poll publishes a registration at once: the API
    process's coalesced NOTIFY (sent after the commit, not by a trigger) woke it."""
    client = await aiohttp_client(create_app(topic_settings))
    config = relay_config(topic_settings, idle_poll_min=30, poll_interval=60)
    async with running(config) as outbox_relay:
        await wait_for(lambda: _async(outbox_relay.stats.lanes == customer.LANES), 30)
        # Proven idle, not assumed after a sleep: inside its wait, with most of it left.
        await wait_for(lambda: _async(outbox_relay.stats.idle_until - time.monotonic() > 25), 30)
        idle_until, fetches = outbox_relay.stats.idle_until, outbox_relay.stats.fetches
        async with XCloudClient(str(client.make_url("")), *credential) as xc:
            await xc.register_customer(DOC_EXAMPLE)
        await wait_for(lambda: _async(outbox_relay.stats.published == 1), timeout=10)
        assert time.monotonic() < idle_until, "published only when the poll came round"
        assert outbox_relay.stats.fetches > fetches
    assert client.app[WAKER].sent >= 1


async def _async(value):
    return value


async def test_a_rolled_back_transaction_publishes_nothing(topic_settings, clean_db):
    async with clean_db.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.execute(
            "INSERT INTO outbox (event_id, event_type, customer_id, lane, payload)"
            " VALUES (gen_random_uuid(), 'CustomerRegistered', 'FST-12345678-rolledback', 1,"
            ' convert_to(\'{"id": "rolled-back", "seq": 0}\', \'UTF8\'))'
        )
        await tx.rollback()
    await clean_db.execute(
        "INSERT INTO outbox (event_id, event_type, customer_id, lane, payload)"
        " VALUES (gen_random_uuid(), 'CustomerRegistered', 'FST-12345678-committed', 1,"
        ' convert_to(\'{"id": "committed", "seq": 0}\', \'UTF8\'))'
    )
    async with running(relay_config(topic_settings)):
        received = await read_topic(
            topic_settings.kafka_bootstrap_servers, topic_settings.topic, until=1, quiet=3
        )
    assert [r.event["id"] for r in received] == ["committed"]


async def test_an_unpublishable_row_is_dead_lettered_and_does_not_block(topic_settings, clean_db):
    lane = customer.lane_of("FST-12345678-big")
    await clean_db.execute(
        """INSERT INTO outbox (event_id, event_type, customer_id, lane, payload) VALUES
           (gen_random_uuid(), 'CustomerUpdated', 'FST-12345678-big', $1,
            convert_to('{"id": "too-big", "pad": "' || repeat('x', 2000000) || '"}', 'UTF8')),
           (gen_random_uuid(), 'CustomerUpdated', 'FST-12345678-big', $1,
            convert_to('{"id": "after-big", "seq": 1}', 'UTF8'))""",
        lane,
    )
    async with running(relay_config(topic_settings)) as outbox_relay:
        received = await read_topic(
            topic_settings.kafka_bootstrap_servers, topic_settings.topic, until=1, quiet=3
        )
    assert [r.event["id"] for r in received] == ["after-big"]
    dead = await clean_db.fetchrow(
        "SELECT dead_lettered_at, last_error FROM outbox WHERE dead_lettered_at IS NOT NULL"
    )
    assert dead is not None and "TooLarge" in dead["last_error"]
    assert outbox_relay.stats.dead_lettered == 1
    assert await pending(clean_db) == 0


async def test_published_rows_are_deleted_after_the_retention_age(topic_settings, clean_db):
    await fill_outbox(clean_db, 50, 5)
    await clean_db.execute(
        "UPDATE outbox SET published_at = now() - interval '2 hours' WHERE id <= 30"
    )
    async with running(relay_config(topic_settings, retention_seconds=3600)):
        await wait_for(lambda: _count(clean_db), 30)
    # The 30 old ones are gone; the 20 just published are kept until they are old too.
    assert await clean_db.fetchval("SELECT count(*) FROM outbox") == 20
    assert await clean_db.fetchval("SELECT min(id) FROM outbox") == 31


async def _count(pool) -> bool:
    return await pool.fetchval("SELECT count(*) FROM outbox") == 20 and await pending(pool) == 0


# --- several relays, crashes, graceful stops --------------------------------------


async def test_three_relays_keep_each_customers_order(topic_settings, clean_db):
    await fill_outbox(clean_db, 6000, 150)  # 40 events per customer
    relays = [
        relay.Relay(relay_config(topic_settings, batch_size=20, rebalance_interval=0.3))
        for _ in range(3)
    ]
    tasks = []
    for r in relays:  # join one after another, so lanes move between them mid-backlog
        tasks.append(asyncio.create_task(r.run()))
        await asyncio.sleep(0.3)
    try:
        await wait_for(lambda: _none_pending(clean_db), timeout=120)
    finally:
        for r in relays:
            r.stop()
        await asyncio.gather(*tasks)
    assert sum(r.stats.published for r in relays) >= 6000
    assert sum(1 for r in relays if r.stats.published > 0) >= 2, "lanes were never shared"
    received = await read_topic(
        topic_settings.kafka_bootstrap_servers, topic_settings.topic, until=6000
    )
    assert len({r.event["id"] for r in received}) == 6000
    assert_in_commit_order(received)


async def _none_pending(pool) -> bool:
    return await pending(pool) == 0


async def test_sigkill_mid_backlog_loses_nothing(topic_settings, clean_db):
    total, batch = 20_000, 50  # small batches: the kill lands mid-backlog
    await fill_outbox(clean_db, total, 500)
    proc = relay_process(topic_settings, XCLOUD_RELAY_BATCH_SIZE=str(batch))
    try:
        await wait_for(lambda: _published_at_least(clean_db, total, total // 4), 120, 0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        left = await pending(clean_db)
        assert 0 < left < total, "kill the relay mid-backlog, not before or after it"
        proc = relay_process(topic_settings, XCLOUD_RELAY_BATCH_SIZE=str(batch))
        await wait_for(lambda: _none_pending(clean_db), timeout=180)
    finally:
        proc.terminate()
        proc.wait(30)
    received = await read_topic(
        topic_settings.kafka_bootstrap_servers, topic_settings.topic, until=total
    )
    ids = [r.event["id"] for r in received]
    assert len(set(ids)) == total, "every committed event arrives"
    # Only what the killed process had sent but not yet settled: at most its two
    # batches in flight (the one being acknowledged, the one being sent).
    assert len(ids) - total <= 2 * batch, len(ids) - total
    assert_in_commit_order(received)


async def _published_at_least(pool, total: int, n: int) -> bool:
    """At least n of the total rows are published (deleted, or marked when retained)."""
    return total - await pending(pool) >= n


async def test_sigterm_finishes_the_batch_and_settles_only_what_was_acknowledged(
    topic_settings, clean_db
):
    total = 20_000
    await fill_outbox(clean_db, total, 100)
    everything = {str(r["event_id"]) for r in await clean_db.fetch("SELECT event_id FROM outbox")}
    proc = relay_process(topic_settings, XCLOUD_RELAY_BATCH_SIZE="100")
    await wait_for(lambda: _published_at_least(clean_db, total, 2000), 120, 0.02)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()
    still_pending = {
        str(r["event_id"])
        for r in await clean_db.fetch("SELECT event_id FROM outbox WHERE published_at IS NULL")
    }
    settled = everything - still_pending  # deleted (or marked) once the broker acknowledged
    assert 0 < len(settled) < total
    # The relay is gone: the topic holds all it will ever hold. Read all of it (until it has
    # been quiet a while), not just as many as were settled.
    received = await read_topic(
        topic_settings.kafka_bootstrap_servers, topic_settings.topic, quiet=3.0
    )
    on_topic = {r.event["id"] for r in received}
    assert settled <= on_topic, "settled but never published"
    # And the batch in flight was finished, not dropped: everything the broker has was settled.
    assert on_topic <= settled, f"{len(on_topic - settled)} events on the topic left unsettled"


async def test_broker_down_writes_go_on_and_events_arrive_after(
    aiohttp_client, topic_settings, credential, clean_db
):
    # Always the local broker of scripts/services.sh, whatever the suite runs against:
    # this test stops and starts it.
    local_kafka = test_services.local_services("xcloud")["kafka"]
    topic_settings = dataclasses.replace(topic_settings, kafka_bootstrap_servers=local_kafka)
    client = await aiohttp_client(create_app(topic_settings))
    services_sh = os.path.join(ROOT, "scripts", "services.sh")
    sent: list[str] = []
    async with (
        running(relay_config(topic_settings)),
        XCloudClient(str(client.make_url("")), *credential) as xc,
    ):

        async def register(i: int) -> None:
            cid = make_customer_id(f"Broker{i}")
            resp = await xc.request(
                "POST", "/xcloud/v1/customers", json.dumps(example(customerId=cid)).encode()
            )
            assert resp.status == 201, resp.body
            sent.append(cid)

        for i in range(5):
            await register(i)
        await asyncio.to_thread(subprocess.run, [services_sh, "stop", "kafka"], check=True)
        try:
            for i in range(5, 40):
                await register(i)
                await asyncio.sleep(0.05)
        finally:
            await asyncio.to_thread(subprocess.run, [services_sh, "start", "kafka"], check=True)
        for i in range(40, 45):
            await register(i)
        await wait_for(lambda: _none_pending(clean_db), timeout=120, interval=0.5)
    received = await read_topic(
        topic_settings.kafka_bootstrap_servers, topic_settings.topic, until=len(sent)
    )
    assert {r.event["subject"] for r in received} == set(sent)


async def test_an_event_that_commits_late_still_goes_before_its_customers_next(
    topic_settings, clean_db
):
    """A smaller id can commit after larger ones were sent: a relay that only looks past
    the last id it sent would publish the customer's next event first."""
    late = "FST-12345678-late"
    insert = (
        "INSERT INTO outbox (event_id, event_type, customer_id, lane, payload)"
        " VALUES (gen_random_uuid(), 'CustomerUpdated', $1, $2,"
        " convert_to(json_build_object('id', gen_random_uuid(), 'subject', $1::text,"
        " 'seq', $3::int)::text, 'UTF8'))"
    )
    lane = customer.lane_of(late)
    async with clean_db.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.execute(insert, late, lane, 0)  # the smallest id, not yet committed
        await fill_outbox(clean_db, 20_000, 50)
        outbox_relay = relay.Relay(relay_config(topic_settings, batch_size=100))
        task = asyncio.create_task(outbox_relay.run())
        try:
            await wait_for(lambda: _published_at_least(clean_db, 20_000, 3000), 60, 0.01)
            await tx.commit()
            await clean_db.execute(insert, late, lane, 1)  # the customer's next event
            await wait_for(lambda: _none_pending(clean_db), timeout=120)
        finally:
            outbox_relay.stop()
            await task
    received = await read_topic(
        topic_settings.kafka_bootstrap_servers, topic_settings.topic, until=20_002
    )
    mine = [r.event["seq"] for r in first_occurrences(by_subject(received)[late])]
    assert mine == [0, 1]


# --- relay wake-ups (service/outbox/wakeup.py) ---------------------------------------------
# The API's relay wake-ups (service/outbox/wakeup.py) against a real PostgreSQL: sent
# after commits, coalesced, and never able to fail a request.


async def test_many_pokes_make_few_notifications(settings, clean_db):
    received: list[float] = []
    listener = await asyncpg.connect(settings.database_url)
    await listener.add_listener(NOTIFY_CHANNEL, lambda *_: received.append(1.0))
    waker = Waker(settings.database_url, interval=0.5)
    waker.start()
    try:
        for _ in range(200):  # 200 commits within about 0.2 s
            waker.poke()
            await asyncio.sleep(0.001)
        await asyncio.sleep(1.0)
    finally:
        await waker.stop()
        await listener.close()
    # At most one NOTIFY per 0.5 s interval: a burst of 200 commits wakes relays once or twice.
    assert 1 <= len(received) <= 2
    assert waker.sent == len(received)


async def test_a_database_it_cannot_reach_fails_nothing(caplog):
    waker = Waker("postgresql://nobody@127.0.0.1:1/none", interval=0.005)
    waker.start()
    try:
        for _ in range(50):
            waker.poke()  # never raises, never blocks
        await asyncio.sleep(0.5)
        assert waker.sent == 0
        assert waker._task is not None and not waker._task.done()  # still trying
    finally:
        await waker.stop()
    assert sum("cannot wake the relays" in r.getMessage() for r in caplog.records) == 1
