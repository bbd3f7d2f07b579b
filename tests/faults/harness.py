"""Fault injection against real processes: a cluster to break, a steady load, and the
invariant every scenario must keep.

The cluster is what production runs: `xcloud serve --workers 2 --no-relay` and two
`xcloud relay` processes, on the local PostgreSQL and Kafka of scripts/services.sh, with a
database (`xcloud_faults`) and a topic of their own. The load registers new customers and
updates registered ones at a steady rate. After the fault heals and the load stops, the
checker reads the whole topic and compares it with the database:

- every customer in the database has its CustomerRegistered event, and every such event
  names a customer in the database (nothing lost, nothing invented);
- each customer has exactly as many distinct CustomerUpdated events as committed
  updates (its row version minus one);
- deduplicated by event id, each customer's events are in commit order: the
  registration first, updatedAt never going back, the last one equal to the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import orjson

from service import customers
from service.client import XCloudClient
from tests import services as test_services
from tests.helpers import example, free_port
from tests.kafka import by_subject, first_occurrences, read_topic

ROOT = Path(__file__).resolve().parents[2]
SERVICES = str(ROOT / "scripts" / "services.sh")
SECRET_KEY = "faults-secret-key-" + "f" * 32
ALLOWED = {200, 201, 409, 503}  # what a request may get while things break
REQUEST_TIMEOUT = 15.0  # no request may hang longer than this


def local_services() -> dict[str, str]:
    return test_services.local_services("xcloud_faults")


async def fresh_database(urls: dict[str, str]) -> tuple[str, str]:
    return "faults", await test_services.fresh_database(urls, SECRET_KEY, "faults")


# --- the processes -------------------------------------------------------------------


@dataclass
class Cluster:
    urls: dict[str, str]
    topic: str
    log_dir: Path
    port: int = field(default_factory=free_port)
    server: subprocess.Popen | None = None
    relays: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.urls["db"],
            "KAFKA_BOOTSTRAP_SERVERS": self.urls["kafka"],
            "XCLOUD_SECRET_KEY": SECRET_KEY,
            "XCLOUD_TOPIC": self.topic,
            "XCLOUD_HOST": "127.0.0.1",
            "XCLOUD_PORT": str(self.port),
            "XCLOUD_RELAY_BATCH_SIZE": "100",
        }

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives with the process
        return subprocess.Popen(
            [sys.executable, "-m", "service.cli", *args],
            cwd=ROOT,
            env=self._env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    async def start(self) -> None:
        self.server = self._spawn("serve", "serve", "--workers", "2", "--no-relay")
        self.start_relay()
        self.start_relay()
        await self.wait_ready()

    def start_relay(self) -> subprocess.Popen:
        relay = self._spawn(f"relay-{len(self.relays)}", "relay")
        self.relays.append(relay)
        return relay

    async def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                try:
                    async with http.get(self.url + "/readyz") as resp:
                        if resp.status == 200 and len(self.worker_pids()) >= 2:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise RuntimeError("cluster did not become ready")

    def worker_pids(self) -> list[int]:
        pids: list[int] = []
        path = self.log_dir / "serve.log"
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("message") == "serving" and _alive(entry["pid"]):
                pids.append(entry["pid"])
        return sorted(set(pids))

    def stop(self) -> None:
        procs = [p for p in [self.server, *self.relays] if p is not None]
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)  # a frozen one must hear SIGTERM
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def services_sh(action: str, what: str) -> None:
    subprocess.run([SERVICES, action, what], check=True, capture_output=True)


# --- the load ----------------------------------------------------------------------


@dataclass
class LoadResult:
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    dropped: int = 0  # the connection died under the request (a killed worker)
    hung: int = 0  # no answer within REQUEST_TIMEOUT

    @property
    def server_errors(self) -> int:
        return sum(n for code, n in self.statuses.items() if code not in ALLOWED) + self.hung


async def steady_load(
    url: str, service_id: str, secret: str, prefix: str, stop: asyncio.Event, rate: float = 120.0
) -> LoadResult:
    """Registrations and updates (about one in three) at `rate` requests/s until stop."""
    result = LoadResult()
    registered: list[str] = []
    tasks: set[asyncio.Task] = set()
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    connector = aiohttp.TCPConnector(limit=200, force_close=True)  # spread over workers
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        xc = XCloudClient(url, service_id, secret, session=http)

        async def one(n: int) -> None:
            if registered and random.random() < 0.35:
                cid = random.choice(registered)
                body = example(customerId=cid, customerName=f"Name {n}")
                method, path = "PUT", f"/xcloud/v1/customers/{cid}"
            else:
                cid = f"{prefix}{n}"
                body = example(customerId=cid)
                method, path = "POST", "/xcloud/v1/customers"
            result.sent += 1
            try:
                resp = await xc.request(method, path, orjson.dumps(body))
            except TimeoutError:
                result.hung += 1
                return
            except aiohttp.ClientError:
                result.dropped += 1
                return
            result.statuses[resp.status] += 1
            if method == "POST" and resp.status == 201:
                registered.append(cid)

        n = 0
        started = time.monotonic()
        while not stop.is_set():
            n += 1
            task = asyncio.create_task(one(n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
        if tasks:
            await asyncio.gather(*tasks)
    return result


# --- the invariant -----------------------------------------------------------------


@dataclass
class Verdict:
    customers: int = 0
    events: int = 0
    duplicates: int = 0
    lost: int = 0
    invented: int = 0
    out_of_order: int = 0
    problems: list[str] = field(default_factory=list)


async def verify(urls: dict[str, str], topic: str, prefix: str, timeout: float = 180) -> Verdict:
    pool = await asyncpg.create_pool(urls["db"], min_size=1, max_size=2)
    try:
        deadline = time.monotonic() + timeout
        while await pool.fetchval(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL AND dead_lettered_at IS NULL"
        ):
            if time.monotonic() > deadline:
                raise AssertionError("the outbox did not drain")
            await asyncio.sleep(0.5)
        rows = await pool.fetch(
            "SELECT customer_id, status, data, created_at, updated_at, version FROM customers"
            " WHERE customer_id LIKE $1",
            prefix + "%",
        )
        dead = await pool.fetchval("SELECT count(*) FROM outbox WHERE dead_lettered_at IS NOT NULL")
    finally:
        await pool.close()
    received = [
        r
        for r in await read_topic(urls["kafka"], topic, quiet=3, timeout=120)
        if r.key.startswith(prefix)
    ]
    verdict = Verdict(customers=len(rows), events=len(received))
    verdict.duplicates = len(received) - len({r.event["id"] for r in received})
    if dead:
        verdict.problems.append(f"{dead} dead-lettered rows")
    in_db = {r["customer_id"]: r for r in rows}
    streams = {k: first_occurrences(v) for k, v in by_subject(received).items()}
    for cid in in_db.keys() - streams.keys():
        verdict.lost += 1
        verdict.problems.append(f"{cid}: no event at all")
    for cid, stream in streams.items():
        row = in_db.get(cid)
        if row is None:
            verdict.invented += len(stream)
            verdict.problems.append(f"{cid}: events for a customer not in the database")
            continue
        types = [r.event["type"] for r in stream]
        updates = types.count("CustomerUpdated")
        if types[0] != "CustomerRegistered" or types.count("CustomerRegistered") != 1:
            verdict.out_of_order += 1
            verdict.problems.append(f"{cid}: events {types}")
        if updates < row["version"] - 1:
            verdict.lost += row["version"] - 1 - updates
            verdict.problems.append(f"{cid}: {updates} update events, version {row['version']}")
        elif updates > row["version"] - 1:
            verdict.invented += updates - (row["version"] - 1)
            verdict.problems.append(f"{cid}: {updates} update events, version {row['version']}")
        stamps = [r.event["data"]["updatedAt"] for r in stream]
        truth = customers.representation(
            cid, row["status"], orjson.loads(row["data"]), row["created_at"], row["updated_at"]
        )
        if stamps != sorted(stamps) or stream[-1].event["data"] != truth:
            verdict.out_of_order += 1
            verdict.problems.append(f"{cid}: last event differs from the database or order")
    return verdict
