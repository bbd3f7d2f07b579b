"""examples/consumer.py, run as downstream teams would run it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid

from aiokafka import AIOKafkaProducer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def test_it_reads_with_a_group_and_drops_duplicates(services):
    topic = f"xcloud.example.{uuid.uuid4().hex[:8]}"
    events = [
        {
            "id": str(uuid.uuid4()),
            "type": "CustomerRegistered",
            "subject": f"FST-12345678-e{i}",
            "data": {"status": "ACTIVE"},
        }
        for i in range(5)
    ]
    events[4] = {  # a rotation's data is no customer: the example copes
        "id": str(uuid.uuid4()),
        "type": "CustomerApiKeyRotated",
        "subject": "FST-12345678-e4",
        "data": {"customerId": "FST-12345678-e4", "slot": "primary", "rotatedAt": "x"},
    }
    producer = AIOKafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        # The first three are delivered twice, all before the last distinct one.
        for event in [
            events[0],
            events[0],
            events[1],
            events[1],
            events[2],
            events[2],
            *events[3:],
        ]:
            await producer.send_and_wait(
                topic, json.dumps(event).encode(), key=event["subject"].encode()
            )
    finally:
        await producer.stop()

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        os.path.join(ROOT, "examples", "consumer.py"),
        "--bootstrap",
        services.kafka_bootstrap,
        "--topic",
        topic,
        "--group",
        f"g-{uuid.uuid4().hex[:6]}",
        "--max-events",
        "5",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    handled = [json.loads(line) for line in out.decode().splitlines()]
    # Once each (the topic has several partitions, so no global order to check).
    assert sorted(h["id"] for h in handled) == sorted(e["id"] for e in events)
    rotated = [h for h in handled if h["type"] == "CustomerApiKeyRotated"]
    assert [h["slot"] for h in rotated] == ["primary"]
