"""Running it like a production service: health, readiness, metrics, logs, workers,
graceful stop. The server runs as a real `xcloud serve` subprocess where it matters."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from service.tools.client import XCloudClient, make_customer_id
from tests.helpers import (
    DOC_EXAMPLE,
    SECRET_KEY,
    example,
    free_port,
    signed_json,
    spawn_xcloud,
    wait_healthy,
)

BASE = "/xcloud/v1/customers"


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log_path: str

    def log_lines(self) -> list[dict]:
        with open(self.log_path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    async def serving_pids(self, count: int, timeout: float = 30) -> set[int]:
        """Wait until `count` workers logged that they serve; their pids."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = {e["pid"] for e in self.log_lines() if e.get("message") == "serving"}
            if len(pids) >= count:
                return pids
            await asyncio.sleep(0.1)
        raise AssertionError(f"fewer than {count} workers serving")

    def raw_log(self) -> str:
        with open(self.log_path, encoding="utf-8") as f:
            return f.read()


@pytest.fixture
async def start_server(settings, tmp_path) -> AsyncIterator:
    started: list[Server] = []

    async def start(*args: str) -> Server:
        port = free_port()
        log_path = str(tmp_path / f"serve-{port}.log")
        env = {
            **os.environ,
            "DATABASE_URL": settings.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "XCLOUD_SECRET_KEY": SECRET_KEY,
            "XCLOUD_TOPIC": settings.topic,
            "XCLOUD_HOST": "127.0.0.1",
            "XCLOUD_PORT": str(port),
        }
        with open(log_path, "w") as log:
            proc = spawn_xcloud(
                "serve",
                *args,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = Server(proc, f"http://127.0.0.1:{port}", log_path)
        started.append(server)
        await wait_healthy(server.url)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.terminate()  # the supervisor stops its workers too
            try:
                server.proc.wait(60)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait()


# --- in-process: health, readiness, metrics --------------------------------------


async def test_healthz_and_readyz(api):
    health = await api.get("/healthz")
    assert (health.status, await health.json()) == (200, {"status": "ok"})
    ready = await api.get("/readyz")
    body = await ready.json()
    assert ready.status == 200
    assert body["database"] == "ok"
    # Relays run in processes of their own: a worker reports what PostgreSQL sees of them.
    assert body["relays"] == {"live": 0, "lanesHeld": 0, "lanes": 32}


async def test_readyz_is_503_when_the_database_is_gone(proxied_api):
    proxy, xc = proxied_api
    ok = await xc.request("GET", "/readyz")
    assert ok.status == 200
    await proxy.cut()
    down = await xc.request("GET", "/readyz")
    assert down.status == 503
    assert down.body["error"] == "SERVICE_UNAVAILABLE"
    await proxy.restore()
    assert (await xc.request("GET", "/readyz")).status == 200


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text format (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def scrape_until(api, done, timeout: float = 15) -> str:
    """/metrics once `done(text)` holds (the database figures lag by one refresh)."""
    deadline = time.monotonic() + timeout
    while True:
        text = await (await api.get("/metrics")).text()
        if done(text):
            return text
        assert time.monotonic() < deadline, "the metrics never showed it"
        await asyncio.sleep(0.2)


async def test_metrics_count_requests_and_read_the_outbox(xc, api, clean_db):
    text_before = await (await api.get("/metrics")).text()
    for i in range(3):
        body = example(customerId=make_customer_id(f"M{i}"))
        assert (await xc.request("POST", BASE, json.dumps(body).encode())).status == 201
    assert (await xc.request("GET", f"{BASE}/FST-12345678-None")).status == 404
    await clean_db.execute("UPDATE outbox SET created_at = now() - interval '90 seconds'")
    resp = await api.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    route = "/xcloud/v1/customers"
    posts = sample(text, "xcloud_http_requests_total", method="POST", route=route, status="201")
    posts_before = sample(
        text_before, "xcloud_http_requests_total", method="POST", route=route, status="201"
    )
    assert posts - posts_before == 3
    assert (
        sample(
            text,
            "xcloud_http_requests_total",
            method="GET",
            route="/xcloud/v1/customers/{customerId}",
            status="404",
        )
        >= 1
    )
    assert (
        sample(
            text,
            "xcloud_http_request_duration_seconds_count",
            method="POST",
            route=route,
            status="201",
        )
        >= 3
    )
    # The outbox figures come from a background refresh, not from the scrape.
    text = await scrape_until(
        api, lambda t: sample(t, "xcloud_outbox_oldest_pending_age_seconds") >= 90
    )
    assert sample(text, "xcloud_outbox_pending_rows") == 3
    assert sample(text, "xcloud_outbox_dead_lettered_rows") == 0
    assert "xcloud_db_pool_connections" in text
    assert "xcloud_relay_published_total" in text


# --- a real server process ---------------------------------------------------------


async def test_two_workers_share_the_port_and_their_metrics(start_server, credential, clean_db):
    server = await start_server("--workers", "2", "--no-relay")
    await server.serving_pids(2)
    secrets_seen: list[str] = [credential[1], SECRET_KEY]
    connector = aiohttp.TCPConnector(force_close=True)  # a new connection per request
    async with aiohttp.ClientSession(connector=connector) as http:
        xc = XCloudClient(server.url, *credential, session=http)
        for i in range(40):
            created = await xc.register_customer(example(customerId=make_customer_id(f"W{i}")))
            secrets_seen.extend(created["apiKeys"].values())
        async with http.get(server.url + "/metrics") as resp:
            text = await resp.text()
    served = sample(
        text,
        "xcloud_http_requests_total",
        method="POST",
        route="/xcloud/v1/customers",
        status="201",
    )
    assert served == 40, "every worker's requests are counted, whichever answers the scrape"

    lines = server.log_lines()  # every line is JSON
    requests = [
        entry
        for entry in lines
        if entry.get("message") == "request" and entry.get("route") == "/xcloud/v1/customers"
    ]
    assert len(requests) == 40
    assert {entry["pid"] for entry in requests}.__len__() == 2, "both workers served"
    for entry in requests:
        assert entry["service_id"] == credential[0]
        assert entry["status"] == 201
        assert re.fullmatch(r"[0-9a-f]{32}", entry["request_id"])
        assert entry["duration_ms"] > 0
    raw = server.raw_log()
    for secret in secrets_seen:
        assert secret not in raw


async def test_a_replay_sent_to_the_other_worker_process_is_refused(
    start_server, credential, clean_db
):

    server = await start_server("--workers", "2", "--no-relay")
    await server.serving_pids(2)
    body = json.dumps(example(customerId=make_customer_id("ReplayTwo"))).encode()
    headers = signed_json(credential, body, BASE)
    statuses = []
    for _ in range(12):  # a fresh connection each time: the kernel spreads them over workers
        connector = aiohttp.TCPConnector(force_close=True)
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.post(server.url + BASE, data=body, headers=headers) as resp,
        ):
            statuses.append((resp.status, (await resp.json()).get("error")))
    assert statuses.count((201, None)) == 1
    assert statuses.count((401, "REPLAYED_REQUEST")) == 11
    pids = {
        e["pid"]
        for e in server.log_lines()
        if e.get("message") == "request" and e.get("route") == BASE
    }
    assert len(pids) == 2, "the replays reached both worker processes"
    assert await clean_db.fetchval("SELECT count(*) FROM outbox") == 1


async def _relays(url: str) -> dict:
    async with aiohttp.ClientSession() as http, http.get(url + "/readyz") as resp:
        return (await resp.json())["relays"]


async def _until(check, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_serve_runs_one_relay_process_beside_its_workers(start_server, credential, clean_db):
    server = await start_server("--workers", "1")
    workers = await server.serving_pids(1)
    supervisor = next(e for e in server.log_lines() if e.get("message") == "supervising workers")
    relay_pid = supervisor["relay_pid"]
    assert relay_pid not in workers, "the relay has a process of its own"
    assert supervisor["pids"] == [*workers, relay_pid]
    await _until(lambda: _match(_relays(server.url), {"live": 1, "lanesHeld": 32, "lanes": 32}))
    async with XCloudClient(server.url, *credential) as xc:
        await xc.register_customer(example(customerId=make_customer_id("Beside")))
    await _until(lambda: _outbox_empty(clean_db))  # published (and deleted) by that relay

    os.kill(relay_pid, signal.SIGKILL)  # the supervisor starts another
    await _until(lambda: _restarted(server, relay_pid))
    await _until(lambda: _match(_relays(server.url), {"live": 1, "lanesHeld": 32, "lanes": 32}))
    async with XCloudClient(server.url, *credential) as xc:
        await xc.register_customer(example(customerId=make_customer_id("Again")))
    await _until(lambda: _outbox_empty(clean_db))
    async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as resp:
        text = await resp.text()
    # The relay process writes its metrics where the workers' /metrics reads them.
    assert sample(text, "xcloud_relay_published_total") == 2

    server.proc.send_signal(signal.SIGTERM)  # stops the workers and the relay, gracefully
    assert server.proc.wait(60) == 0
    assert "relay stopped" in server.raw_log()
    assert not _alive(relay_pid)


async def _match(value, expected) -> bool:
    return await value == expected


async def _outbox_empty(pool) -> bool:
    return await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def _restarted(server, pid: int) -> bool:
    return any(
        e.get("message") == "relay died; restarting" and e.get("worker") == "relay"
        for e in server.log_lines()
    )


async def test_a_killed_worker_is_replaced(start_server, credential, clean_db):
    server = await start_server("--workers", "2", "--no-relay")
    pids = await server.serving_pids(2)
    os.kill(min(pids), signal.SIGKILL)
    after = await server.serving_pids(3)  # the supervisor started a replacement
    assert len(after - pids) == 1
    async with XCloudClient(server.url, *credential) as xc:
        for i in range(5):
            await xc.register_customer(example(customerId=make_customer_id(f"K{i}")))
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(60) == 0


async def test_sigterm_finishes_the_request_in_flight(start_server, credential, clean_db):
    server = await start_server("--workers", "1")
    cid = make_customer_id("Graceful")
    async with XCloudClient(server.url, *credential) as xc:
        await xc.register_customer(example(customerId=cid))
        async with clean_db.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            await conn.execute("SELECT 1 FROM customers WHERE customer_id = $1 FOR UPDATE", cid)
            # This PUT waits for our row lock: it is in flight when SIGTERM lands.
            put = asyncio.create_task(
                xc.request(
                    "PUT",
                    f"{BASE}/{cid}",
                    json.dumps(example(customerId=cid, customerName="Still Served")).encode(),
                )
            )
            await asyncio.sleep(0.5)
            server.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(1.0)
            with pytest.raises(aiohttp.ClientConnectionError):  # no longer accepting
                async with aiohttp.ClientSession() as http:
                    await http.get(server.url + "/healthz")
            await tx.rollback()
        resp = await put
    assert resp.status == 200
    assert resp.body["customerName"] == "Still Served"
    assert server.proc.wait(60) == 0
    assert (
        await clean_db.fetchval(
            "SELECT data->>'customerName' FROM customers WHERE customer_id = $1", cid
        )
        == "Still Served"
    )


async def test_workers_do_not_outlive_a_killed_supervisor(start_server):
    server = await start_server("--workers", "2", "--no-relay")
    pids = await server.serving_pids(2)
    server.proc.kill()
    server.proc.wait()
    deadline = time.monotonic() + 20
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if _alive(pid)}
        await asyncio.sleep(0.2)
    assert not alive, "orphaned workers still running"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited already
        return f.read().split()[2] != "Z"


async def test_serve_waits_for_a_database_that_is_not_up_yet(settings, tmp_path):
    port = free_port()
    dead_db = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    env = {
        **os.environ,
        "DATABASE_URL": dead_db,
        "XCLOUD_SECRET_KEY": SECRET_KEY,
        "XCLOUD_PORT": str(port),
    }
    proc = spawn_xcloud(
        "serve",
        "--workers",
        "1",
        "--no-relay",
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        await asyncio.sleep(4)
        assert proc.poll() is None, "it waits rather than crashing"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "waiting for PostgreSQL" in err


async def test_openapi_describes_exactly_the_running_routes(api, settings):
    from service.api.app import create_app
    from service.api.openapi import documented_operations

    resp = await api.get("/openapi.json")
    assert resp.status == 200
    spec = await resp.json()
    assert spec["openapi"].startswith("3.")
    running = {
        (route.method, route.resource.canonical)
        for route in create_app(settings).router.routes()
        if route.method != "*"
    }
    assert documented_operations(spec) == running


async def test_metrics_answer_while_the_database_is_gone(proxied_api):
    proxy, xc = proxied_api
    await proxy.cut()
    deadline = time.monotonic() + 15
    while True:  # until the next background refresh finds the database gone
        resp = await xc.request("GET", "/metrics")
        assert resp.status == 200
        assert "xcloud_http_requests_total" in resp.body
        if "xcloud_outbox_pending_rows" not in resp.body:  # unknown now, so not made up
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    await proxy.restore()


async def test_lanes_held_are_counted_from_the_database(api, settings, clean_db):
    from service.outbox import relay as relay_mod

    outbox_relay = relay_mod.Relay(relay_mod.config_from(settings))
    task = asyncio.create_task(outbox_relay.run())
    try:
        deadline = time.monotonic() + 30
        while outbox_relay.stats.lanes < 32 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        text = await scrape_until(api, lambda t: sample(t, "xcloud_relay_lanes_held") == 32)
        assert sample(text, "xcloud_relay_lanes_held") == 32
        ready = await (await api.get("/readyz")).json()
        assert ready["relays"] == {"live": 1, "lanesHeld": 32, "lanes": 32}
        assert "lastError" not in json.dumps(ready)
    finally:
        outbox_relay.stop()
        await task


# --- the database going away ---------------------------------------------------------------
# The database going away mid-flight: 503 with the contract's body, then recovery.


async def test_database_down_is_503_and_recovers(proxied_api, clean_db):
    proxy, xc = proxied_api
    body = json.dumps(DOC_EXAMPLE).encode()
    assert (await xc.request("POST", "/xcloud/v1/customers", body)).status == 201

    await proxy.cut()
    down = await xc.request(
        "POST", "/xcloud/v1/customers", json.dumps(example(customerId="FST-12345678-Down")).encode()
    )
    assert down.status == 503
    assert down.body["error"] == "SERVICE_UNAVAILABLE"
    assert down.headers["X-Request-Id"]

    await proxy.restore()
    up = await xc.request(
        "POST", "/xcloud/v1/customers", json.dumps(example(customerId="FST-12345678-Up")).encode()
    )
    assert up.status == 201, up.body
    assert await clean_db.fetchval("SELECT count(*) FROM customers") == 2
