"""`make bench`: throughput and latency as ratios against the machine's own limits.

Every figure that matters is a ratio of two measurements taken in this same run on this
same machine, because the machines here are shared and noisy:

  service/limit    best registrations/s through `xcloud serve --no-relay` vs PostgreSQL's
                   limit: pgbench at its best concurrency on the smallest durable
                   transaction writing the same rows (bench/limit.py); pgbench on the
                   service's exact SQL is reported beside it;
  relay-inside     registrations/s with `xcloud serve`'s relay process running vs
                   without, same concurrency, alternating runs;
  commit-to-publish p99 at a steady 1,000/s (or 70% of the measured maximum with the
                   relay running, when that is lower);
  relay/raw        outbox rows drained to Kafka by `xcloud relay` vs a bare aiokafka
                   producer sending the same payloads with the same settings.

Plus commit-to-publish latency under a steady registration rate, and how the costs
move as the tables grow. Results: bench/results/latest.{md,json,png}.

    python bench/run.py           # full (about 15 minutes)
    python bench/run.py --quick   # reduced (under 5 minutes)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import limit  # noqa: E402
from service.config import Limits  # noqa: E402
from service.db import customers  # noqa: E402
from service.domain import customer, events  # noqa: E402
from tests import services as test_services  # noqa: E402
from tests.helpers import DOC_EXAMPLE, free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results"
LOADGEN = ROOT / ".cache" / "bin" / "loadgen"
SECRET_KEY = "bench-secret-key-" + "b" * 32
SERVICE_ID = "bench"
# Not a fixed port: servers bind with SO_REUSEPORT, so two benches on one machine (other
# worktrees) sharing a port would each get part of the other's requests (seen: 401s).
PORT = int(os.environ.get("XCLOUD_BENCH_PORT") or free_port())
# Command prefixes, e.g. ["taskset", "-c", "0"]: bench/pinned.py keeps the load generator
# off the service's core.
PIN_SERVER: list[str] = []
PIN_LOADGEN: list[str] = []


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# --- set-up ------------------------------------------------------------------------


def build_loadgen() -> None:
    src = ROOT / "bench" / "loadgen"
    newest = max(p.stat().st_mtime for p in src.iterdir())
    if LOADGEN.exists() and LOADGEN.stat().st_mtime >= newest:
        return
    log("building the Go load generator")
    LOADGEN.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["go", "build", "-o", str(LOADGEN), "."], cwd=src, check=True)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1])
    pg = subprocess.run(["pgbench", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgres": pg.replace("pgbench (PostgreSQL) ", ""),
        "kafka": "3.9.1 (single KRaft broker, same machine)",
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


# --- the service under load -------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen
    url: str


def start_server(
    urls: dict[str, str], *, relay: bool, topic: str, retention: int = 0, workers: int = 0
) -> Server:
    env = {
        **os.environ,
        "XCLOUD_OUTBOX_RETENTION_SECONDS": str(retention),
        "DATABASE_URL": urls["db"],
        "KAFKA_BOOTSTRAP_SERVERS": urls["kafka"],
        "XCLOUD_SECRET_KEY": SECRET_KEY,
        "XCLOUD_TOPIC": topic,
        "XCLOUD_HOST": "127.0.0.1",
        "XCLOUD_PORT": str(PORT),
    }
    argv = [*PIN_SERVER, sys.executable, "-m", "service.cli", "serve"]
    argv += [] if relay else ["--no-relay"]
    if workers:
        argv += ["--workers", str(workers)]
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{PORT}"
    deadline = time.monotonic() + 60
    import urllib.request

    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as resp:  # noqa: S310
                ready = json.loads(resp.read())
            # With its relay: only once the relay holds every lane (its producer started
            # first), so no figure includes the relay's start-up.
            if not relay or ready["relays"]["lanesHeld"] == ready["relays"]["lanes"]:
                time.sleep(1.0)  # let every worker finish starting
                return Server(proc, url)
            time.sleep(0.2)
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start")


def stop_server(server: Server) -> None:
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(90)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


def loadgen(
    server: Server, secret: str, mode: str, concurrency: int, seconds: float, **extra: Any
) -> dict[str, Any]:
    body = RESULTS / "raw" / "body.json"
    body.parent.mkdir(parents=True, exist_ok=True)
    body.write_text(json.dumps(DOC_EXAMPLE))
    argv = [
        *PIN_LOADGEN,
        str(LOADGEN),
        "-url",
        server.url,
        "-service",
        SERVICE_ID,
        "-secret",
        secret,
        "-mode",
        mode,
        "-c",
        str(concurrency),
        "-d",
        f"{seconds}s",
        "-body",
        str(body),
    ]
    for key, value in extra.items():
        argv += [f"-{key}", str(value)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    result = json.loads(out)
    if result["errors"]:
        note = (
            f"{mode} c={concurrency}: {result['errors']} failed requests"
            f" ({result['requests']} answered, {result['ok']} 2xx): {result['statuses']}"
        )
        log(f"FLAGGED {note}")
        from bench.report import flag

        flag(note)
    return result


# --- pgbench: the same transaction, without the service --------------------------


def pgbench_script() -> str:
    """store's registration statement, its parameters replaced by SQL expressions
    that make a new customer, nonce and event each time (pgbench has no strings)."""
    now = customer.utc_now()
    data = customer.mutable_fields(DOC_EXAMPLE, Limits().as_json())
    representation = customer.representation(DOC_EXAMPLE["customerId"], "ACTIVE", data, now, now)
    _, payload = events.envelope(events.REGISTERED, representation, now)

    def literal(text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    # ": " rather than ":" in the JSON: pgbench reads ":name" as one of its variables.
    values = {
        1: literal(SERVICE_ID),
        2: "gen_random_uuid()::text",
        3: "'FST-12345678-' || replace(gen_random_uuid()::text, '-', '')",
        4: "'ACTIVE'",
        5: literal(json.dumps(data)),
        6: "now()",
        7: "sha256(convert_to(gen_random_uuid()::text, 'UTF8'))",
        8: "sha256(convert_to(gen_random_uuid()::text, 'UTF8'))",
        9: "gen_random_uuid()",
        10: "(random() * 31)::int",
        11: "convert_to(" + literal(json.dumps(json.loads(payload))) + ", 'UTF8')",
    }
    sql = re.sub(r"\$(\d+)(::\w+)?", lambda m: values[int(m.group(1))], customers._REGISTER_SQL)
    return " ".join(sql.split()) + ";\n"


def pgbench(urls: dict[str, str], concurrency: int, seconds: float) -> dict[str, Any]:
    script = RESULTS / "raw" / "register.sql"
    script.write_text(pgbench_script())
    host, port = re.search(r"@([^:/]+):(\d+)/", urls["db"]).groups()
    out = subprocess.run(
        [
            "pgbench",
            "-n",
            "-M",
            "prepared",
            "-h",
            host,
            "-p",
            port,
            "-U",
            "postgres",
            "-c",
            str(concurrency),
            "-j",
            "2",
            "-T",
            str(int(seconds)),
            "-r",
            "-f",
            str(script),
            "xcloud_bench",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    tps = float(re.search(r"tps = ([\d.]+)", out)[1])
    latency = float(re.search(r"latency average = ([\d.]+) ms", out)[1])
    failed = int(re.search(r"number of failed transactions: (\d+)", out)[1])
    return {"concurrency": concurrency, "tps": tps, "latency_avg_ms": latency, "failed": failed}


# --- the relay against a raw producer --------------------------------------------


async def fill_outbox(pool: asyncpg.Pool, n: int, *, published: bool = False) -> None:
    """n outbox rows holding real CustomerRegistered events of n customer."""
    now = customer.utc_now()
    data = customer.mutable_fields(DOC_EXAMPLE, Limits().as_json())
    rep = customer.representation("FST-12345678-TEMPLATE", "ACTIVE", data, now, now)
    _, payload = events.envelope(events.REGISTERED, rep, now)
    template = payload.decode()
    await pool.execute(
        """
        INSERT INTO outbox (event_id, event_type, customer_id, lane, payload, published_at)
        SELECT e.id, 'CustomerRegistered', e.cust, abs(hashtext(e.cust)) % 32,
               convert_to(replace(replace($2, 'FST-12345678-TEMPLATE', e.cust),
                                  $3, e.id::text), 'UTF8'),
               CASE WHEN $4 THEN now() END
        FROM (SELECT gen_random_uuid() AS id, 'FST-12345678-r' || i AS cust
              FROM generate_series(1, $1) AS i) e
        """,
        n,
        template,
        json.loads(payload)["id"],
        published,
    )


async def raw_producer_rate(pool: asyncpg.Pool, kafka: str, topic: str) -> float:
    rows = await pool.fetch("SELECT customer_id, payload FROM outbox ORDER BY id")
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=256 * 1024,
        request_timeout_ms=30_000,
    )
    await producer.start()
    headers = [("content-type", events.CONTENT_TYPE.encode())]
    try:
        await producer.send_and_wait(topic, b"warm-up", key=b"warm-up")
        started = time.perf_counter()
        batch = 500  # the relay's batch: send a batch, wait for it, like the relay does
        for i in range(0, len(rows), batch):
            futures = [
                await producer.send(
                    topic, r["payload"], key=r["customer_id"].encode(), headers=headers
                )
                for r in rows[i : i + batch]
            ]
            await asyncio.gather(*futures)
        return len(rows) / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def relay_rate(urls: dict[str, str], pool: asyncpg.Pool, topic: str) -> float:
    """Outbox rows per second drained by one `xcloud relay`, from its first publish (so
    start-up, topic creation and connecting are left out) until nothing is pending."""
    pending_sql = "SELECT {} FROM outbox WHERE published_at IS NULL"
    pending = await pool.fetchval(pending_sql.format("count(*)"))
    first = await pool.fetchval(pending_sql.format("min(id)"))
    env = {
        **os.environ,
        "DATABASE_URL": urls["db"],
        "KAFKA_BOOTSTRAP_SERVERS": urls["kafka"],
        "XCLOUD_SECRET_KEY": SECRET_KEY,
        "XCLOUD_TOPIC": topic,
        "XCLOUD_OUTBOX_RETENTION_SECONDS": os.environ.get("BENCH_RETENTION", "0"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "relay"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    try:
        # The first row goes out in the relay's first batch (it holds every lane alone).
        while await pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE id = $1 AND published_at IS NULL)", first
        ):
            await asyncio.sleep(0.005)
            if time.monotonic() > deadline:
                raise RuntimeError("the relay published nothing")
        started = time.perf_counter()
        while await pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE published_at IS NULL)"
        ):
            await asyncio.sleep(0.05)
            if time.monotonic() > deadline:
                raise RuntimeError("the relay did not drain the outbox")
        elapsed = time.perf_counter() - started
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return pending / elapsed


# --- the run -----------------------------------------------------------------------


@dataclass
class Report:
    machine: dict[str, Any]
    quick: bool
    registration: list[dict[str, Any]] = field(default_factory=list)
    pgbench: list[dict[str, Any]] = field(default_factory=list)
    limit: list[dict[str, Any]] = field(default_factory=list)
    with_relay: dict[str, Any] | None = None
    # Alternating runs at the best concurrency: (without, with) the relay process.
    relay_pairs: list[tuple[float, float]] = field(default_factory=list)
    latency_idle: dict[str, Any] = field(default_factory=dict)
    one_worker: dict[str, Any] | None = None
    relay: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    growth: list[dict[str, Any]] = field(default_factory=list)
    relay_growth: dict[str, float] = field(default_factory=dict)
    flagged: list[str] = field(default_factory=list)  # load runs with failed requests

    def service_ratio(self) -> float:
        """Against pgbench on the service's exact SQL (the figure before issue 16)."""
        return max(r["rps"] for r in self.registration) / max(p["tps"] for p in self.pgbench)

    def limit_ratio(self) -> float:
        return max(r["rps"] for r in self.registration) / max(p["tps"] for p in self.limit)

    def relay_inside_ratio(self) -> float:
        return sum(w for _, w in self.relay_pairs) / sum(wo for wo, _ in self.relay_pairs)

    def relay_ratio(self) -> float:
        return self.relay["relay_eps"] / self.relay["raw_eps"]


async def registration_vs_pgbench(
    report: Report, urls, secret, levels, seconds, limit_levels, pairs
) -> None:
    server = start_server(urls, relay=False, topic="bench.unused")
    try:
        for c in levels:
            log(f"registrations through the service at concurrency {c}")
            report.registration.append(loadgen(server, secret, "register", c, seconds))
            log(f"the same transaction through pgbench at concurrency {c}")
            report.pgbench.append(pgbench(urls, c, seconds))
    finally:
        stop_server(server)
    best = max(report.registration, key=lambda r: r["rps"])["concurrency"]
    log(f"registrations through one worker process, concurrency {best}")
    server = start_server(urls, relay=False, topic="bench.unused", workers=1)
    try:
        report.one_worker = loadgen(server, secret, "register", best, seconds)
    finally:
        stop_server(server)
    log(f"PostgreSQL's limit: pgbench on the minimal transaction at {limit_levels}")
    report.limit = limit.measure(urls["db"], RESULTS / "raw", SERVICE_ID, limit_levels, seconds)
    for pair in range(pairs):  # alternating, so drift on a shared machine hits both sides
        log(f"registrations without / with the relay process, concurrency {best} ({pair + 1})")
        # An empty outbox each time: the relay must publish what this load writes, not
        # drain the backlog of the runs before (which made it look 3 times as costly).
        await _empty_outbox(urls)
        server = start_server(urls, relay=False, topic="bench.unused")
        try:
            without = loadgen(server, secret, "register", best, seconds)
        finally:
            stop_server(server)
        await _empty_outbox(urls)
        server = start_server(urls, relay=True, topic=f"bench.reg.{int(time.time())}")
        try:
            report.with_relay = loadgen(server, secret, "register", best, seconds)
        finally:
            stop_server(server)
        report.relay_pairs.append((without["rps"], report.with_relay["rps"]))


async def _empty_outbox(urls: dict[str, str]) -> None:
    conn = await asyncpg.connect(urls["db"])
    try:
        await conn.execute("TRUNCATE outbox")
    finally:
        await conn.close()


async def relay_vs_raw(report: Report, urls, pool, backlog) -> None:
    await pool.execute("TRUNCATE outbox")
    await fill_outbox(pool, backlog)
    log(f"raw producer: {backlog} events")
    raw = await raw_producer_rate(pool, urls["kafka"], f"bench.raw.{int(time.time())}")
    log(f"relay: draining {backlog} outbox rows")
    relayed = await relay_rate(urls, pool, f"bench.relay.{int(time.time())}")
    report.relay = {"backlog": backlog, "raw_eps": raw, "relay_eps": relayed}


async def commit_to_publish(report: Report, urls, pool, secret, rate, seconds) -> None:
    """Outbox insert (the transaction's now(), a statement before its commit) to the
    relay's mark after the broker's acknowledgement, at a steady rate: the target
    (1,000/s, or 70% of the maximum measured with the relay running when lower), and
    nearly idle (10/s: every registration alone, the relay waiting for a wake-up)."""
    maximum = report.with_relay["rps"] if report.with_relay else rate
    if 0.7 * maximum < rate:
        rate = int(0.7 * maximum)
        basis = f"70% of the measured maximum with the relay running ({maximum:,.0f}/s)"
    else:
        basis = "the 1,000/s target"
    report.latency = await _latency(urls, pool, secret, rate, seconds)
    report.latency["basis"] = basis
    report.latency_idle = await _latency(urls, pool, secret, 10, min(seconds, 10))


async def _latency(urls, pool, secret, rate: int, seconds: float) -> dict[str, Any]:
    await pool.execute("TRUNCATE outbox")
    # Rows are kept (marked with published_at) so the latency can be read from the table.
    server = start_server(
        urls, relay=True, topic=f"bench.latency.{int(time.time())}", retention=86400
    )
    try:
        log(f"commit-to-publish latency at {rate} registrations/s")
        load = loadgen(server, secret, "register", 64, seconds, rate=rate)
        await asyncio.sleep(3)
        row = await pool.fetchrow(
            """SELECT count(*) AS n,
                 percentile_cont(0.5) WITHIN GROUP (ORDER BY published_at - created_at) AS p50,
                 percentile_cont(0.99) WITHIN GROUP (ORDER BY published_at - created_at) AS p99
               FROM outbox WHERE published_at IS NOT NULL"""
        )
    finally:
        stop_server(server)
    if not row["n"]:
        raise RuntimeError(f"nothing was published at {rate}/s: {load}")
    return {
        "rate": rate,
        "achieved_rps": load["rps"],
        "events": row["n"],
        "p50_ms": row["p50"].total_seconds() * 1000,
        "p99_ms": row["p99"].total_seconds() * 1000,
        "api_p99_ms": load["p99_ms"],
        "errors": load["errors"],
    }


async def seed_customers(pool: asyncpg.Pool, total: int) -> None:
    have = await pool.fetchval(
        "SELECT count(*) FROM customers WHERE customer_id LIKE 'FST-12345678-g%'"
    )
    data = orjson.dumps(customer.mutable_fields(DOC_EXAMPLE, Limits().as_json())).decode()
    await pool.execute(
        """INSERT INTO customers (customer_id, status, data, created_at, updated_at)
           SELECT 'FST-12345678-g' || i, (ARRAY['ACTIVE','INACTIVE','SUSPENDED'])[1 + i % 3],
                  $3::jsonb, now() - interval '30 days' + i * interval '1 ms', now()
           FROM generate_series($1 + 1, $2) AS i""",
        have,
        total,
        data,
    )
    await pool.execute("VACUUM ANALYZE customers")


async def growth(report: Report, urls, pool, secret, sizes, seconds) -> None:
    for size in sizes:
        log(f"growth: {size} customers")
        await seed_customers(pool, size)
        ids = ",".join(f"FST-12345678-g{i}" for i in range(1, size, max(1, size // 500)))
        server = start_server(urls, relay=False, topic="bench.unused")
        try:
            reg = loadgen(server, secret, "register", 64, seconds)
            get = loadgen(server, secret, "get", 16, seconds, ids=ids)
            page = loadgen(server, secret, "list", 16, seconds)
        finally:
            stop_server(server)
        report.growth.append(
            {
                "customers": size,
                "register_rps": reg["rps"],
                "get_p50_ms": get["p50_ms"],
                "get_p99_ms": get["p99_ms"],
                "get_rps": get["rps"],
                "list_p50_ms": page["p50_ms"],
                "list_p99_ms": page["p99_ms"],
                "errors": reg["errors"] + get["errors"] + page["errors"],
            }
        )


async def relay_with_history(report: Report, urls, pool, kept, backlog) -> None:
    for label, history in (("cleaned", 0), ("kept", kept)):
        await pool.execute("TRUNCATE outbox")
        if history:
            await fill_outbox(pool, history, published=True)
        await fill_outbox(pool, backlog)
        await pool.execute("VACUUM ANALYZE outbox")
        log(f"relay with {history} published rows kept")
        report.relay_growth[label] = await relay_rate(
            urls, pool, f"bench.hist.{label}.{int(time.time())}"
        )


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["debezium"], help="only the relay against Debezium")
    args = parser.parse_args()
    quick = args.quick
    from bench import debezium_compare

    if args.only == "debezium":
        await debezium_compare.compare(quick)
        return flagged_runs()
    urls = test_services.local_services("xcloud_bench")
    build_loadgen()
    secret = await test_services.fresh_database(urls, SECRET_KEY, SERVICE_ID)
    report = Report(machine=machine(), quick=quick)
    pool = await asyncpg.create_pool(urls["db"], min_size=1, max_size=4)
    try:
        await registration_vs_pgbench(
            report,
            urls,
            secret,
            [16, 64] if quick else [16, 64, 256],
            5 if quick else 15,
            [8, 16, 32, 64] if quick else [8, 16, 32, 64, 128],
            2 if quick else 3,
        )
        await relay_vs_raw(report, urls, pool, 50_000 if quick else 200_000)
        await commit_to_publish(report, urls, pool, secret, 1000, 10 if quick else 30)
        await growth(
            report,
            urls,
            pool,
            secret,
            [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000],
            4 if quick else 10,
        )
        if not quick:
            await relay_with_history(report, urls, pool, 1_000_000, 100_000)
        from bench import keys_bench  # issue 17: verify req/s, idempotency cost ratio

        keys = await keys_bench.measure(
            urls=urls,
            pool=pool,
            secret=secret,
            results=RESULTS,
            start_server=start_server,
            stop_server=stop_server,
            loadgen=loadgen,
            log=log,
            seconds=5 if quick else 10,
        )
    finally:
        await pool.close()

    from bench.report import FLAGGED, write

    report.flagged = list(FLAGGED)
    write(report, RESULTS)
    print(f"service/limit ratio: {report.limit_ratio():.2f}")
    print(f"relay-inside ratio: {report.relay_inside_ratio():.2f}")
    print(f"commit-to-publish p99 ms: {report.latency['p99_ms']:.1f}")
    print(f"relay/raw ratio: {report.relay_ratio():.2f}")
    print("\n".join(keys_bench.lines(keys)))
    await debezium_compare.compare(quick)  # prints the relay/debezium lines
    return flagged_runs()


def flagged_runs() -> int:
    """1 (and each run said) when any load run had failed requests: its figures are suspect."""
    from bench.report import FLAGGED

    for note in FLAGGED:
        print(f"FLAGGED load run with errors: {note}")
    return 1 if FLAGGED else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
