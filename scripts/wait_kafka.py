"""Wait until a Kafka broker answers a metadata request: `wait_kafka.py HOST:PORT SECONDS`."""

import asyncio
import logging
import sys
import time

from aiokafka.admin import AIOKafkaAdminClient


async def answers(bootstrap: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await admin.start()
        await admin.list_topics()
        return True
    except Exception:
        return False
    finally:
        await admin.close()


def main() -> int:
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # refusals are expected here
    bootstrap, seconds = sys.argv[1], float(sys.argv[2])
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if asyncio.run(answers(bootstrap)):
            return 0
        time.sleep(0.5)
    return 1


if __name__ == "__main__":
    sys.exit(main())
