"""Example downstream consumer of XCloud customer events: copy it and change handle().

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:29092 python examples/consumer.py --group my-service

Delivery is at least once, so the same event (same `id`) can arrive more than once:
after a relay crash, or after this consumer restarts before committing its offsets.
This consumer drops duplicates by event id and commits offsets only after handling.

The ids seen are kept in memory here (bounded), which covers redeliveries within one
run. A consumer whose effects must happen exactly once should store the ids it handled
in its own database, in the same transaction as the effect, and check them there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from collections import OrderedDict
from typing import Any

from aiokafka import AIOKafkaConsumer


class SeenIds:
    """The most recent `capacity` event ids, oldest forgotten first."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def add(self, event_id: str) -> bool:
        """True the first time an id is seen."""
        if event_id in self._ids:
            self._ids.move_to_end(event_id)
            return False
        self._ids[event_id] = None
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
        return True


def handle(event: dict[str, Any]) -> None:
    """Your logic. Events of one customer arrive in the order they were committed."""
    data = event["data"]
    line = {"id": event["id"], "type": event["type"], "customerId": event["subject"]}
    if event["type"] == "CustomerApiKeyRotated":  # data: customerId, slot, rotatedAt
        line["slot"] = data["slot"]
    else:  # CustomerRegistered, CustomerUpdated: data is the customer
        line["status"] = data["status"]
    print(json.dumps(line), flush=True)


async def consume(bootstrap: str, topic: str, group: str, max_events: int | None) -> None:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,  # commit after handling, never before
        auto_offset_reset="earliest",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    seen = SeenIds()
    handled = 0
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                for message in messages:
                    event = json.loads(message.value)
                    if seen.add(event["id"]):
                        handle(event)
                        handled += 1
            if batch:
                await consumer.commit()
            if max_events is not None and handled >= max_events:
                break
    finally:
        await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:29092")
    )
    parser.add_argument("--topic", default=os.environ.get("XCLOUD_TOPIC", "xcloud.customers"))
    parser.add_argument("--group", default="xcloud-example-consumer")
    parser.add_argument(
        "--max-events",
        type=int,
        default=None,
        help="stop after this many distinct events (for demos and tests)",
    )
    args = parser.parse_args()
    asyncio.run(consume(args.bootstrap, args.topic, args.group, args.max_events))


if __name__ == "__main__":
    main()
