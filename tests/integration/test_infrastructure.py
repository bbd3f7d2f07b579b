"""The real parts answer: PostgreSQL commits, migrations re-run, Kafka round-trips."""

from __future__ import annotations

import uuid

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from service.db import migrate


async def test_migrate_is_safe_to_run_again(settings, pool):
    assert await migrate.apply(settings.database_url) == []
    applied = {r["version"] for r in await pool.fetch("SELECT version FROM schema_migrations")}
    assert applied == {version for version, _ in migrate.migrations()}


async def test_a_committed_row_is_seen_by_another_connection(settings, clean_db):
    async with clean_db.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO service_credentials (service_id, secret_encrypted) VALUES ($1, $2)",
            "infra-check",
            b"x",
        )
    other = await asyncpg.connect(settings.database_url)
    try:
        found = await other.fetchval(
            "SELECT count(*) FROM service_credentials WHERE service_id = 'infra-check'"
        )
    finally:
        await other.close()
    assert found == 1


async def test_kafka_produces_and_consumes(services):
    topic = f"infra-check-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"k1")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=services.kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=10_000)
    finally:
        await consumer.stop()
    values = [(m.key, m.value) for msgs in batch.values() for m in msgs]
    assert values == [(b"k1", b"hello")]
