"""The fault scenarios: each breaks one thing under a steady load, then heals it."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from tests.faults import harness

Fault = Callable[[harness.Cluster], Awaitable[str]]


@dataclass
class Outcome:
    name: str
    fault: str
    load: harness.LoadResult
    verdict: harness.Verdict
    seconds: float

    @property
    def ok(self) -> bool:
        v = self.verdict
        return self.load.server_errors == 0 and v.lost == v.invented == v.out_of_order == 0


async def kill_a_worker(cluster: harness.Cluster) -> str:
    await asyncio.sleep(2)
    victim = cluster.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    await asyncio.sleep(4)
    return "SIGKILL of one of two API workers (the supervisor starts another)"


async def kill_a_relay(cluster: harness.Cluster) -> str:
    await asyncio.sleep(2)
    cluster.relays[0].send_signal(signal.SIGKILL)
    await asyncio.sleep(2)
    cluster.start_relay()
    await asyncio.sleep(2)
    return "SIGKILL of one of two relays, a new one started 2 s later"


async def freeze_a_worker(cluster: harness.Cluster) -> str:
    await asyncio.sleep(2)
    victim = cluster.worker_pids()[0]
    os.kill(victim, signal.SIGSTOP)
    await asyncio.sleep(4)
    os.kill(victim, signal.SIGCONT)
    await asyncio.sleep(2)
    return "SIGSTOP of one API worker for 4 s, then SIGCONT"


async def freeze_a_relay(cluster: harness.Cluster) -> str:
    await asyncio.sleep(2)
    victim = cluster.relays[0]
    os.kill(victim.pid, signal.SIGSTOP)
    await asyncio.sleep(5)
    os.kill(victim.pid, signal.SIGCONT)
    await asyncio.sleep(2)
    return "SIGSTOP of one relay for 5 s (its lanes wait), then SIGCONT"


async def restart_the_broker(cluster: harness.Cluster) -> str:
    await asyncio.sleep(2)
    await asyncio.to_thread(harness.services_sh, "stop", "kafka")
    await asyncio.sleep(5)
    await asyncio.to_thread(harness.services_sh, "start", "kafka")
    await asyncio.sleep(2)
    return "Kafka broker stopped for 5 s, then started"


async def restart_postgres(cluster: harness.Cluster) -> str:
    await asyncio.sleep(2)
    await asyncio.to_thread(harness.services_sh, "stop", "postgres")
    await asyncio.sleep(3)
    await asyncio.to_thread(harness.services_sh, "start", "postgres")
    await asyncio.sleep(3)
    return "PostgreSQL stopped (fast shutdown) for 3 s, then started"


# (name, fault, fast): the fast ones also run in `make test`.
SCENARIOS: list[tuple[str, Fault, bool]] = [
    ("worker SIGKILL", kill_a_worker, True),
    ("relay SIGKILL", kill_a_relay, True),
    ("worker SIGSTOP", freeze_a_worker, True),
    ("relay SIGSTOP", freeze_a_relay, False),
    ("broker restart", restart_the_broker, False),
    ("PostgreSQL restart", restart_postgres, False),
]


async def run(name: str, fault: Fault, *, rate: float = 120.0) -> Outcome:
    urls = harness.local_services()
    service_id, secret = await harness.fresh_database(urls)
    topic = f"xcloud.faults.{uuid.uuid4().hex[:8]}"
    prefix = f"FST-12345678-f{uuid.uuid4().hex[:6]}x"
    log_dir = Path(tempfile.mkdtemp(prefix="xcloud-faults-"))
    cluster = harness.Cluster(urls, topic, log_dir)
    started = time.monotonic()
    await cluster.start()
    try:
        stop = asyncio.Event()
        load = asyncio.create_task(
            harness.steady_load(cluster.url, service_id, secret, prefix, stop, rate)
        )
        try:
            described = await fault(cluster)
        finally:
            stop.set()
            result = await load
        verdict = await harness.verify(urls, topic, prefix)
    finally:
        cluster.stop()
        harness.services_sh("start", "all")  # whatever a scenario stopped is back
    return Outcome(name, described, result, verdict, time.monotonic() - started)
