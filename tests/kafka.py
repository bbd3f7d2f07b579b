"""Reading what really landed on a Kafka topic, for the tests."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer


@dataclass(frozen=True)
class Received:
    key: str
    headers: dict[str, bytes]
    event: dict[str, Any]
    partition: int
    offset: int


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    until: int | None = None,
    timeout: float = 60.0,
    quiet: float = 2.0,
) -> list[Received]:
    """Everything on `topic` from the start, in partition offset order. Stops when
    `until` messages arrived, or when nothing new came for `quiet` seconds (once at
    least `until` is met or no `until` was given), or at `timeout`."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        metadata_max_age_ms=1000,
    )
    await consumer.start()
    got: list[Received] = []
    deadline = time.monotonic() + timeout
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for messages in batch.values():
                for m in messages:
                    got.append(
                        Received(
                            key=m.key.decode() if m.key else "",
                            headers={k: v for k, v in m.headers},
                            event=json.loads(m.value),
                            partition=m.partition,
                            offset=m.offset,
                        )
                    )
                    last_new = time.monotonic()
            if until is not None and len(got) >= until:
                # Give stragglers (duplicates) a moment to show up too.
                if time.monotonic() - last_new >= min(quiet, 0.5):
                    break
            elif until is None and got and time.monotonic() - last_new >= quiet:
                break
    finally:
        await consumer.stop()
    return got


def first_occurrences(received: list[Received]) -> list[Received]:
    """What a consumer that drops duplicates by event id sees, in topic order."""
    seen: set[str] = set()
    out = []
    for r in received:
        if r.event["id"] not in seen:
            seen.add(r.event["id"])
            out.append(r)
    return out


def by_subject(received: list[Received]) -> dict[str, list[Received]]:
    groups: dict[str, list[Received]] = {}
    for r in sorted(received, key=lambda r: (r.partition, r.offset)):
        groups.setdefault(r.key, []).append(r)
    return groups


async def wait_for(predicate, timeout: float = 60.0, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(interval)
    raise AssertionError("condition not met in time")
