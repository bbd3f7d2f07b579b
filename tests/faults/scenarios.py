"""The fault scenarios: each breaks things under a steady load of registrations and
numbered updates, heals them, and hands the result to the checker (harness.verify)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tests.faults import backends, harness
from tests.helpers import TcpProxy

RELAYS = 2


@dataclass
class Stage:
    """What a fault can reach: the service's processes and the deployment under them."""

    cluster: harness.Cluster
    kafka: backends.KafkaCluster | None = None
    pg: backends.PostgresPair | None = None
    proxy: TcpProxy | None = None  # relay 0 reaches PostgreSQL through it


Fault = Callable[[Stage], Awaitable[str]]


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: Fault
    fast: bool = False  # also part of `make test`
    deployment: str = "local"  # local | kafka-cluster | pg-failover | relay-proxy
    faults: int = 1  # how many faults it injects: the duplicates bound scales with it
    repeat: int = 1  # how many times `make faults` runs it
    min_acknowledged: int = 300


@dataclass
class Outcome:
    name: str
    fault: str
    load: harness.LoadResult
    verdict: harness.Verdict
    seconds: float
    duplicates_bound: int
    min_acknowledged: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def duplicates_bound(batch_size: int, relays: int = RELAYS) -> int:
    """What one fault may duplicate at most: every relay's two batches in flight
    (docs/relay.md)."""
    return relays * 2 * batch_size


# --- the faults ------------------------------------------------------------------------


async def kill_a_worker(stage: Stage) -> str:
    await asyncio.sleep(2)
    os.kill(stage.cluster.worker_pids()[0], signal.SIGKILL)
    await asyncio.sleep(4)
    return "SIGKILL of one of two API workers (the supervisor starts another)"


async def kill_a_relay(stage: Stage) -> str:
    await asyncio.sleep(2)
    stage.cluster.relays[0].send_signal(signal.SIGKILL)
    await asyncio.sleep(2)
    stage.cluster.start_relay()
    await asyncio.sleep(2)
    return "SIGKILL of one of two relays, a new one started 2 s later"


async def freeze_a_worker(stage: Stage) -> str:
    await asyncio.sleep(2)
    victim = stage.cluster.worker_pids()[0]
    os.kill(victim, signal.SIGSTOP)
    await asyncio.sleep(4)
    os.kill(victim, signal.SIGCONT)
    await asyncio.sleep(2)
    return "SIGSTOP of one API worker for 4 s, then SIGCONT"


async def freeze_a_relay(stage: Stage) -> str:
    await asyncio.sleep(2)
    victim = stage.cluster.relays[0]
    os.kill(victim.pid, signal.SIGSTOP)
    await asyncio.sleep(5)
    os.kill(victim.pid, signal.SIGCONT)
    await asyncio.sleep(2)
    return "SIGSTOP of one relay for 5 s (its lanes wait), then SIGCONT"


async def restart_the_broker(stage: Stage) -> str:
    await asyncio.sleep(2)
    await asyncio.to_thread(harness.services_sh, "stop", "kafka")
    await asyncio.sleep(5)
    await asyncio.to_thread(harness.services_sh, "start", "kafka")
    await asyncio.sleep(2)
    return "Kafka broker stopped for 5 s, then started"


async def restart_postgres(stage: Stage) -> str:
    await asyncio.sleep(2)
    await asyncio.to_thread(harness.services_sh, "stop", "postgres")
    await asyncio.sleep(3)
    await asyncio.to_thread(harness.services_sh, "start", "postgres")
    await asyncio.sleep(3)
    return "PostgreSQL stopped (fast shutdown) for 3 s, then started"


async def cut_a_relay_off_postgres(stage: Stage) -> str:
    assert stage.proxy is not None
    for _ in range(2):
        await asyncio.sleep(3)
        # Its connection drops mid-batch: PostgreSQL releases its lanes, the other relay
        # takes them, and the batch it still has at the broker becomes duplicates.
        await stage.proxy.cut()
        await asyncio.sleep(5)
        await stage.proxy.restore()
    await asyncio.sleep(3)
    log = (stage.cluster.log_dir / "relay-0.log").read_text(errors="replace")
    assert "relay database unavailable" in log, "the cut relay never noticed"
    return "one relay's line to PostgreSQL cut twice for 5 s (it loses its lanes mid-batch)"


def _mark(started: float, what: str) -> None:
    print(f"faults:     {time.monotonic() - started:5.1f} s {what}", file=sys.stderr, flush=True)


async def combined(stage: Stage) -> str:
    """Issue 12's operator run: six faults in sequence within 100 s."""
    cluster = stage.cluster
    t0 = time.monotonic()
    await asyncio.sleep(3)
    _mark(t0, "relay SIGKILL")
    cluster.relays[0].send_signal(signal.SIGKILL)
    await asyncio.sleep(2)
    cluster.start_relay()
    await asyncio.sleep(5)
    _mark(t0, "serve SIGKILL")
    cluster.kill_server()
    await asyncio.sleep(2)
    cluster.start_server()
    await cluster.wait_ready()
    await asyncio.sleep(5)
    _mark(t0, "broker SIGTERM")
    await asyncio.to_thread(harness.services_sh, "stop", "kafka")  # SIGTERM
    await asyncio.sleep(5)
    await asyncio.to_thread(harness.services_sh, "start", "kafka")
    await asyncio.sleep(8)
    _mark(t0, "broker SIGKILL")
    await asyncio.to_thread(harness.kill_local_kafka)
    await asyncio.sleep(5)
    await asyncio.to_thread(harness.services_sh, "start", "kafka")
    await asyncio.sleep(8)
    _mark(t0, "relay SIGSTOP")
    victim = cluster.relays[-1]
    os.kill(victim.pid, signal.SIGSTOP)
    await asyncio.sleep(5)
    os.kill(victim.pid, signal.SIGCONT)
    await asyncio.sleep(5)
    _mark(t0, "PostgreSQL stop")
    await asyncio.to_thread(harness.services_sh, "stop", "postgres")  # fast shutdown
    await asyncio.sleep(3)
    await asyncio.to_thread(harness.services_sh, "start", "postgres")
    _mark(t0, "PostgreSQL started")
    await asyncio.sleep(8)
    return (
        "in one run: relay SIGKILL + restart, serve SIGKILL (supervisor and workers) + "
        "restart, broker SIGTERM + start, broker SIGKILL + start, relay SIGSTOP 5 s, "
        "PostgreSQL fast restart"
    )


async def lose_two_of_three_brokers(stage: Stage) -> str:
    assert stage.kafka is not None
    await asyncio.sleep(4)
    leader = await stage.kafka.leader_of(stage.cluster.topic, 0)
    stage.kafka.kill_node(leader)
    await asyncio.sleep(6)
    second = next(n for n in stage.kafka.procs if n != leader)
    stage.kafka.kill_node(second)  # below min.insync.replicas: the relay must pause
    await asyncio.sleep(8)
    stage.kafka.start_node(leader)
    stage.kafka.start_node(second)
    await stage.kafka.wait_all_up()
    await asyncio.sleep(5)
    return (
        f"3 brokers, RF 3, min ISR 2: SIGKILL of broker {leader} (leader of partition 0), "
        f"6 s later of broker {second}, both started 8 s later"
    )


async def fail_over_postgres(stage: Stage) -> str:
    assert stage.pg is not None
    await asyncio.sleep(4)
    stage.pg.kill_primary()
    await asyncio.sleep(2)
    await asyncio.to_thread(stage.pg.promote_standby)
    await asyncio.sleep(8)
    return "SIGKILL of the PostgreSQL primary; its synchronous standby promoted 2 s later"


SCENARIOS: list[Scenario] = [
    Scenario("worker SIGKILL", kill_a_worker, fast=True),
    Scenario("relay SIGKILL", kill_a_relay, fast=True),
    Scenario("worker SIGSTOP", freeze_a_worker, fast=True),
    Scenario("relay cut off PostgreSQL", cut_a_relay_off_postgres, fast=True,
             deployment="relay-proxy", faults=2),
    Scenario("relay SIGSTOP", freeze_a_relay),
    Scenario("broker restart", restart_the_broker),
    Scenario("PostgreSQL restart", restart_postgres),
    Scenario("combined", combined, fast=True, faults=6, repeat=5, min_acknowledged=1000),
    Scenario("Kafka cluster: 2 of 3 brokers lost", lose_two_of_three_brokers,
             deployment="kafka-cluster", faults=2),
    Scenario("PostgreSQL failover", fail_over_postgres, deployment="pg-failover"),
]  # fmt: skip


# --- running one -----------------------------------------------------------------------


async def run(scenario: Scenario, *, rate: float = 120.0) -> Outcome:
    local = harness.local_services()
    urls = dict(local)
    kafka = pg = None
    proxy = None
    extra_env: dict[str, str] = {}
    try:
        if scenario.deployment == "kafka-cluster":
            kafka = backends.KafkaCluster()
            await kafka.start()
            urls["kafka"] = kafka.bootstrap
            extra_env["XCLOUD_TOPIC_REPLICATION_FACTOR"] = "3"
        elif scenario.deployment == "pg-failover":
            pg = backends.PostgresPair()
            await asyncio.to_thread(pg.start)
            urls["base"], urls["db"] = pg.primary_base, pg.url("xcloud_faults")
        service_id, secret = await harness.fresh_database(urls)
        topic = f"xcloud.faults.{uuid.uuid4().hex[:8]}"
        prefix = f"FST-12345678-f{uuid.uuid4().hex[:6]}x"
        log_dir = Path(tempfile.mkdtemp(prefix="xcloud-faults-"))
        cluster = harness.Cluster(urls, topic, log_dir, extra_env)
        stage = Stage(cluster, kafka, pg)
        started = time.monotonic()
        if scenario.deployment == "relay-proxy":
            target = urlsplit(urls["db"])
            proxy = await TcpProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
            stage.proxy = proxy
            cluster.start_server()
            cluster.start_relay(DATABASE_URL=urls["db"].replace(target.netloc, _via(target, proxy)))
            cluster.start_relay()
            await cluster.wait_ready()
        else:
            await cluster.start(relays=RELAYS)
        try:
            stop = asyncio.Event()
            load = asyncio.create_task(
                harness.steady_load(cluster.url, service_id, secret, prefix, stop, rate)
            )
            try:
                described = await scenario.fault(stage)
            finally:
                stop.set()
                result = await load
            verdict = await harness.verify(urls, topic, prefix, result)
        finally:
            cluster.stop()
    finally:
        if proxy is not None:
            await proxy.cut()
        if kafka is not None:
            kafka.stop()
        if pg is not None:
            await asyncio.to_thread(pg.stop)
        await asyncio.to_thread(harness.services_sh, "start", "all")  # what a fault stopped
    bound = scenario.faults * duplicates_bound(cluster.batch_size)
    outcome = Outcome(
        scenario.name, described, result, verdict, time.monotonic() - started, bound,
        scenario.min_acknowledged,
    )  # fmt: skip
    outcome.problems = judge(outcome)
    return outcome


def _via(target, proxy: TcpProxy) -> str:
    user = f"{target.username}@" if target.username else ""
    return f"{user}127.0.0.1:{proxy.port}"


def judge(o: Outcome) -> list[str]:
    """Everything wrong with an outcome; empty when it held."""
    v, load = o.verdict, o.load
    problems = list(v.problems)
    if load.server_errors:
        problems.append(f"server errors: {dict(load.statuses)}, {load.hung} hung")
    if load.hung_at:
        problems.append(
            f"requests without an answer in {harness.REQUEST_TIMEOUT:.0f} s were sent "
            f"{min(load.hung_at):.1f}-{max(load.hung_at):.1f} s into the load"
        )
    if load.acknowledged < o.min_acknowledged:
        problems.append(f"only {load.acknowledged} writes acknowledged (< {o.min_acknowledged})")
    if v.duplicates > o.duplicates_bound:
        problems.append(f"{v.duplicates} duplicates, above the bound of {o.duplicates_bound}")
    if v.lost or v.invented or v.out_of_order or v.dead_lettered:
        problems.append(
            f"lost {v.lost}, invented {v.invented}, out of order {v.out_of_order}, "
            f"dead-lettered {v.dead_lettered}"
        )
    return problems
