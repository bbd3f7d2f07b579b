"""`make attack`: two attacks by strangers on a real `xcloud serve`, with their figures.

- slow headers: many connections (300) that send their request headers a byte at a
  time, for a bounded time (60 s; 5 s in the fast form), on loopback only, while a
  legitimate caller sends signed GETs. Its p99 is compared with its p99 just before,
  in the same run.
- bad signatures: 10,000 signed POSTs from random service ids, none known. Counted:
  the answers, the database transactions (pg_stat_database) and the server's CPU per
  request, against a legitimate signed GET measured in the same run.

`python -m tests.attack [--full]` prints a Markdown block for docs/reliability.md
(`make attack` runs the full form and writes it there); the fast form also runs in
`make test` (tests/integration/test_attacks.py), with assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from service.auth import signing
from service.tools.client import XCloudClient
from tests.helpers import DOC_EXAMPLE, free_port, spawn_xcloud, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
START, END = "<!-- attack:start -->", "<!-- attack:end -->"
SECRET_KEY = "attack-secret-key-" + "a" * 32
PATH = "/xcloud/v1/customers"
LOOPBACK = "127.0.0.1"  # never anything else: this is a load attack
WARM_UP = 50  # requests before each measured run


@dataclass
class Server:
    """`xcloud serve --workers 1 --no-relay` on loopback."""

    database_url: str
    secret_key: str
    log_path: Path
    metrics_port: int | None = None
    proc: subprocess.Popen | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def start(self) -> Server:
        self.port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "XCLOUD_SECRET_KEY": self.secret_key,
            "XCLOUD_HOST": LOOPBACK,
            "XCLOUD_PORT": str(self.port),
        }
        env.pop("XCLOUD_METRICS_PORT", None)
        if self.metrics_port is not None:
            env["XCLOUD_METRICS_PORT"] = str(self.metrics_port)
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = spawn_xcloud(
            "serve",
            "--workers",
            "1",
            "--no-relay",
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        health_port = self.metrics_port or self.port
        await wait_healthy(f"http://{LOOPBACK}:{health_port}")
        return self

    def worker_pid(self) -> int:
        return self.proc.pid  # with --workers 1, serve is its one worker itself

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self._log.close()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def transactions(database_url: str) -> int:
    """Transactions of the working database so far, from a fresh connection. A backend
    reports its counts when it ends (or now and then), so stop the server first."""
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database"
            " WHERE datname = current_database()"
        )
    finally:
        await conn.close()


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


# --- slow headers ----------------------------------------------------------------------


@dataclass
class SlowHeaders:
    connections: int
    seconds: float
    opened: int
    held_at_end: int  # slow connections the server still kept open when the time was up
    baseline_p99_ms: float
    baseline_requests: int
    attack_p99_ms: float
    attack_requests: int
    attack_errors: int

    @property
    def ratio(self) -> float:
        return self.attack_p99_ms / self.baseline_p99_ms


async def _legitimate_gets(client: XCloudClient, seconds: float) -> tuple[list[float], int]:
    customer_id = DOC_EXAMPLE["customerId"]
    latencies, errors = [], 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            resp = await client.request("GET", f"{PATH}/{customer_id}")
            ok = resp.status == 200
        except Exception:
            ok = False
        latencies.append(time.perf_counter() - started)
        errors += not ok
    return latencies, errors


async def _slow_connection(port: int, until: float, opened: list[int]) -> bool:
    """Sends a request's headers one byte a second until `until`; True when the server
    still holds the connection then."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    opened.append(1)
    try:
        writer.write(f"GET {PATH} HTTP/1.1\r\nHost: {LOOPBACK}\r\nX-Slow: ".encode())
        await writer.drain()
        while time.monotonic() < until:
            await asyncio.sleep(min(1.0, max(0.0, until - time.monotonic())))
            if reader.at_eof():
                return False
            writer.write(b"a")
            await writer.drain()
        try:
            closed = await asyncio.wait_for(reader.read(1), 0.05) == b""
        except TimeoutError:
            closed = False
        return not closed
    except ConnectionError:
        return False
    finally:
        writer.close()


async def slow_headers(
    url: str, credential: tuple[str, str], *, connections: int, seconds: float
) -> SlowHeaders:
    port = int(url.rsplit(":", 1)[1])
    async with XCloudClient(url, *credential) as client:
        await client.request("GET", f"{PATH}/{DOC_EXAMPLE['customerId']}")  # warm up
        baseline, _ = await _legitimate_gets(client, min(seconds, 20.0))
        until = time.monotonic() + seconds
        opened: list[int] = []
        slow = [
            asyncio.create_task(_slow_connection(port, until, opened)) for _ in range(connections)
        ]
        await asyncio.sleep(0.5)  # let them connect
        during, errors = await _legitimate_gets(client, max(0.0, until - time.monotonic()))
        held = await asyncio.gather(*slow, return_exceptions=True)
    return SlowHeaders(
        connections=connections,
        seconds=seconds,
        opened=len(opened),
        held_at_end=sum(1 for h in held if h is True),
        baseline_p99_ms=p99(baseline) * 1000,
        baseline_requests=len(baseline),
        attack_p99_ms=p99(during) * 1000,
        attack_requests=len(during),
        attack_errors=errors,
    )


# --- bad signatures --------------------------------------------------------------------


@dataclass
class BadSignatures:
    requests: int
    statuses: dict[str, int]  # "401 INVALID_SIGNATURE": count
    transactions: int
    cpu_ms_per_request: float
    legit_requests: int
    legit_transactions: int
    legit_cpu_ms_per_request: float

    @property
    def transactions_per_request(self) -> float:
        return self.transactions / self.requests

    @property
    def cpu_ratio(self) -> float:
        return self.cpu_ms_per_request / self.legit_cpu_ms_per_request


async def _load(url: str, send, count: int, concurrency: int = 32) -> dict[str, int]:
    import aiohttp

    statuses: dict[str, int] = {}
    slots = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(url) as http:

        async def one(i: int) -> None:
            async with slots, await send(http, i) as resp:
                body = await resp.read()
            code = json.loads(body)["error"] if resp.status >= 400 and body else ""
            key = f"{resp.status} {code}".strip()
            statuses[key] = statuses.get(key, 0) + 1

        await asyncio.gather(*(one(i) for i in range(count)))
    return statuses


async def bad_signatures(
    database_url: str, secret_key: str, credential: tuple[str, str], log_dir: Path, count: int
) -> BadSignatures:
    body = json.dumps(DOC_EXAMPLE).encode()
    get_path = f"{PATH}/{DOC_EXAMPLE['customerId']}"

    async def legit(http, _i):
        headers = signing.sign_request(
            service_id=credential[0], secret=credential[1], method="GET", path_and_query=get_path
        )
        return http.get(get_path, headers=headers)

    async def stranger(http, _i):
        headers = signing.sign_request(
            service_id="svc-" + secrets.token_hex(8),  # a new made-up id every time
            secret=secrets.token_urlsafe(32),
            method="POST",
            path_and_query=PATH,
            body=body,
            content_type="application/json",
        )
        return http.post(PATH, data=body, headers=headers)

    figures = {}
    for name, send, n in (("legit", legit, max(500, count // 5)), ("bad", stranger, count)):
        server = await Server(database_url, secret_key, log_dir / f"serve-{name}.log").start()
        try:
            await _load(server.url, send, WARM_UP)  # pool, caches, code paths
            pid = server.worker_pid()
            xacts, cpu = await transactions(database_url), cpu_seconds(pid)
            statuses = await _load(server.url, send, n)
            cpu = cpu_seconds(pid) - cpu
        finally:
            server.stop()
        await asyncio.sleep(0.5)  # the ended backends' counts reach pg_stat_database
        figures[name] = (n, statuses, await transactions(database_url) - xacts - 1, cpu)
    n_legit, _, x_legit, cpu_legit = figures["legit"]
    n_bad, statuses, x_bad, cpu_bad = figures["bad"]
    return BadSignatures(
        requests=n_bad,
        statuses=statuses,
        transactions=x_bad,
        cpu_ms_per_request=cpu_bad / n_bad * 1000,
        legit_requests=n_legit,
        legit_transactions=x_legit,
        legit_cpu_ms_per_request=cpu_legit / n_legit * 1000,
    )


# --- make attack ---------------------------------------------------------------------


def report(slow: SlowHeaders, bad: BadSignatures, *, full: bool) -> str:
    form = "`make attack`" if full else "`python -m tests.attack` (fast form)"
    return "\n".join(
        [
            f"Run {datetime.now(UTC):%Y-%m-%d %H:%M UTC}: {form}, `xcloud serve --workers 1"
            " --no-relay` on loopback, local PostgreSQL; the machine's 2 cores shared"
            " with the load generator.",
            "",
            "| attack | what was sent | legitimate caller / baseline | figure |",
            "|---|---|---|---|",
            f"| slow headers | {slow.opened} connections sending headers at 1 byte/s for"
            f" {slow.seconds:.0f} s | GET p99 {slow.baseline_p99_ms:.1f} ms before"
            f" ({slow.baseline_requests} requests), {slow.attack_p99_ms:.1f} ms during"
            f" ({slow.attack_requests} requests, {slow.attack_errors} failed) | p99 ratio"
            f" {slow.ratio:.2f}; {slow.held_at_end} of {slow.opened} slow connections still"
            " held by the server at the end |",
            f"| bad signatures | {bad.requests} signed POSTs from random service ids"
            f" ({', '.join(f'{k}: {v}' for k, v in sorted(bad.statuses.items()))})"
            f" | signed GET: {bad.legit_transactions / bad.legit_requests:.2f} transactions"
            f" and {bad.legit_cpu_ms_per_request:.2f} ms CPU per request"
            f" ({bad.legit_requests} requests) | {bad.transactions} database transactions in"
            f" all ({bad.transactions_per_request:.4f} per request);"
            f" {bad.cpu_ms_per_request:.2f} ms server CPU per request"
            f" ({bad.cpu_ratio:.2f} of a GET's) |",
            "",
        ]
    )


async def main() -> int:
    from tests import services as test_services

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="60 s of slow headers; write docs")
    args = parser.parse_args()
    urls = test_services.local_services("xcloud_attack")
    secret = await test_services.fresh_database(urls, SECRET_KEY, "attack")
    credential = ("attack", secret)
    log_dir = ROOT / ".cache" / "attack"
    log_dir.mkdir(parents=True, exist_ok=True)

    server = await Server(urls["db"], SECRET_KEY, log_dir / "serve-slow.log").start()
    try:
        async with XCloudClient(server.url, *credential) as client:
            await client.register_customer(DOC_EXAMPLE)
        print("attack: slow headers ...", file=sys.stderr, flush=True)
        slow = await slow_headers(
            server.url, credential, connections=300, seconds=60.0 if args.full else 5.0
        )
    finally:
        server.stop()
    print("attack: bad signatures ...", file=sys.stderr, flush=True)
    bad = await bad_signatures(urls["db"], SECRET_KEY, credential, log_dir, 10_000)
    block = report(slow, bad, full=args.full)
    print(block)
    if args.full:
        text = DOC.read_text()
        DOC.write_text(
            re.sub(
                re.escape(START) + ".*?" + re.escape(END),
                lambda _: f"{START}\n{block}{END}",
                text,
                flags=re.S,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
