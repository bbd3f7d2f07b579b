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
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import orjson

from service.domain import customer
from service.tools.client import XCloudClient, signing_session
from tests import services as test_services
from tests.helpers import example, free_port, spawn_xcloud
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
    extra_env: dict[str, str] = field(default_factory=dict)
    batch_size: int = 100
    port: int = field(default_factory=free_port)
    server: subprocess.Popen | None = None
    relays: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self, **overrides: str) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.urls["db"],
            "KAFKA_BOOTSTRAP_SERVERS": self.urls["kafka"],
            "XCLOUD_SECRET_KEY": SECRET_KEY,
            "XCLOUD_TOPIC": self.topic,
            "XCLOUD_HOST": "127.0.0.1",
            "XCLOUD_PORT": str(self.port),
            "XCLOUD_RELAY_BATCH_SIZE": str(self.batch_size),
            **self.extra_env,
            **overrides,
        }

    def _spawn(self, name: str, *args: str, **env: str) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives with the process
        return spawn_xcloud(
            *args,
            env=self._env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    async def start(self, relays: int = 2) -> None:
        self.start_server()
        for _ in range(relays):
            self.start_relay()
        await self.wait_ready()

    def start_server(self) -> None:
        self.server = self._spawn("serve", "serve", "--workers", "2", "--no-relay")

    def kill_server(self) -> None:
        """SIGKILL of the supervisor and every worker at once: the host died."""
        assert self.server is not None
        victims = [self.server.pid, *self.worker_pids()]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.server.wait()

    def start_relay(self, **env: str) -> subprocess.Popen:
        relay = self._spawn(f"relay-{len(self.relays)}", "relay", **env)
        self.relays.append(relay)
        return relay

    def relay_logs(self) -> str:
        return "".join(
            path.read_text(errors="replace") for path in sorted(self.log_dir.glob("relay-*.log"))
        )

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


def kill_local_kafka() -> None:
    """SIGKILL of the local broker of scripts/services.sh (services_sh start brings it back)."""
    pid = int((ROOT / ".cache" / "kafka" / "kafka.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    while _alive(pid):
        time.sleep(0.05)


# --- the load ----------------------------------------------------------------------

UPDATES_PER_CUSTOMER = 4


def numbered(cid: str, k: int) -> dict:
    """Write k of a customer (0: its registration): k travels in `description`, so the
    order of its events is judged by what the load wrote, which cannot tie."""
    return example(customerId=cid, customerName=f"Load {k}", description=f"write {k}")


def write_number(data: dict) -> int:
    return int(data["description"].split()[-1])


@dataclass
class LoadResult:
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    dropped: int = 0  # the connection died under the request (a killed worker)
    hung: int = 0  # no answer within REQUEST_TIMEOUT
    hung_at: list[float] = field(default_factory=list)  # when each was sent, from the start
    # Every write answered 201 or 200, by customer: the numbers acknowledged.
    acked: dict[str, list[int]] = field(default_factory=dict)

    @property
    def server_errors(self) -> int:
        return sum(n for code, n in self.statuses.items() if code not in ALLOWED) + self.hung

    @property
    def acknowledged(self) -> int:
        return sum(len(v) for v in self.acked.values())


async def steady_load(
    url: str, service_id: str, secret: str, prefix: str, stop: asyncio.Event, rate: float = 120.0
) -> LoadResult:
    """New customers at `rate` / 5 per second, each registered and then updated four
    times in sequence (write 1..4), each write sent after the previous one answered: about
    `rate` requests/s in all, until stop."""
    result = LoadResult()
    started = time.monotonic()
    tasks: set[asyncio.Task] = set()
    # The server's time, not the load generator's own queue: on a starved machine the
    # generator falls behind its rate, and waiting for one of its connections is not the
    # server hanging. 300 connections at most, each answer within REQUEST_TIMEOUT.
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=REQUEST_TIMEOUT, sock_read=REQUEST_TIMEOUT
    )
    connector = aiohttp.TCPConnector(limit=300, force_close=True)  # spread over workers
    async with signing_session(timeout=timeout, connector=connector) as http:
        xc = XCloudClient(url, service_id, secret, session=http)

        async def write(method: str, path: str, cid: str, k: int) -> int | None:
            result.sent += 1
            sent_at = time.monotonic() - started
            try:
                resp = await xc.request(method, path, orjson.dumps(numbered(cid, k)))
            except TimeoutError:
                result.hung += 1
                result.hung_at.append(sent_at)
                return None
            except aiohttp.ClientError:
                result.dropped += 1
                return None
            result.statuses[resp.status] += 1
            if resp.status in (200, 201):
                result.acked.setdefault(cid, []).append(k)
            return resp.status

        async def customer(n: int) -> None:
            cid = f"{prefix}{n}"
            if await write("POST", "/xcloud/v1/customers", cid, 0) != 201:
                return  # not known to exist: no updates
            for k in range(1, UPDATES_PER_CUSTOMER + 1):
                if stop.is_set():
                    return
                await asyncio.sleep(random.uniform(0.05, 0.3))
                await write("PUT", f"/xcloud/v1/customers/{cid}", cid, k)

        n = 0
        per_customer = 1 + UPDATES_PER_CUSTOMER
        while not stop.is_set():
            n += 1
            task = asyncio.create_task(customer(n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(max(0.0, started + n * per_customer / rate - time.monotonic()))
        if tasks:
            await asyncio.gather(*tasks)
    return result


# --- the invariant -----------------------------------------------------------------


@dataclass
class Verdict:
    customers: int = 0
    events: int = 0
    acknowledged: int = 0
    duplicates: int = 0
    lost: int = 0
    invented: int = 0
    out_of_order: int = 0
    dead_lettered: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 200:
            self.problems.append(text)


async def verify(
    urls: dict[str, str], topic: str, prefix: str, load: LoadResult, timeout: float = 240
) -> Verdict:
    """Compare what the load saw acknowledged, the database and the topic:

    - nothing lost: every customer in the database has its events, and every write
      answered 201/200 is both in the database and on the topic;
    - nothing invented: no event for a customer or a write the database does not have;
    - order: deduplicated by event id, each customer's events carry the write numbers in
      strictly increasing order, registration (0) first, and the last one equals what GET
      returns (the representation of the database row);
    - nothing dead-lettered."""
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
        for r in await read_topic(urls["kafka"], topic, quiet=3, timeout=180)
        if r.key.startswith(prefix)
    ]
    verdict = Verdict(customers=len(rows), events=len(received), acknowledged=load.acknowledged)
    verdict.duplicates = len(received) - len({r.event["id"] for r in received})
    verdict.dead_lettered = dead
    if dead:
        verdict.problem(f"{dead} dead-lettered rows")
    in_db = {r["customer_id"]: r for r in rows}
    streams = {k: first_occurrences(v) for k, v in by_subject(received).items()}
    for cid, numbers in load.acked.items():
        if cid not in in_db:
            verdict.lost += len(numbers)
            verdict.problem(f"{cid}: acknowledged writes {numbers}, not in the database")
        elif max(numbers) > write_number(orjson.loads(in_db[cid]["data"])):
            verdict.lost += 1
            verdict.problem(f"{cid}: acknowledged write {max(numbers)} not in the database")
    for cid in in_db.keys() - streams.keys():
        verdict.lost += 1 + in_db[cid]["version"] - 1
        verdict.problem(f"{cid}: no event at all")
    for cid, stream in streams.items():
        row = in_db.get(cid)
        if row is None:
            verdict.invented += len(stream)
            verdict.problem(f"{cid}: events for a customer not in the database")
            continue
        _check_stream(verdict, cid, stream, row, load.acked.get(cid, []))
    return verdict


def _check_stream(verdict: Verdict, cid: str, stream: list, row, acked: list[int]) -> None:
    types = [r.event["type"] for r in stream]
    numbers = [write_number(r.event["data"]) for r in stream]
    if types[0] != "CustomerRegistered" or types.count("CustomerRegistered") != 1:
        verdict.out_of_order += 1
        verdict.problem(f"{cid}: events {types}")
    if numbers != sorted(set(numbers)) or numbers[0] != 0:
        verdict.out_of_order += 1
        verdict.problem(f"{cid}: write numbers in topic order {numbers}")
    missing = sorted(set(acked) - set(numbers))
    if missing:
        verdict.lost += len(missing)
        verdict.problem(f"{cid}: acknowledged writes {missing} have no event")
    updates = types.count("CustomerUpdated")
    if updates < row["version"] - 1:
        verdict.lost += row["version"] - 1 - updates
        verdict.problem(f"{cid}: {updates} update events, version {row['version']}")
    elif updates > row["version"] - 1:
        verdict.invented += updates - (row["version"] - 1)
        verdict.problem(f"{cid}: {updates} update events, version {row['version']}")
    truth = customer.representation(
        cid, row["status"], orjson.loads(row["data"]), row["created_at"], row["updated_at"]
    )
    if stream[-1].event["data"] != truth:
        verdict.out_of_order += 1
        verdict.problem(f"{cid}: the last event differs from what GET returns")
