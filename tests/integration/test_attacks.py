"""A hostile caller gets nowhere: each attack of the reliability issue is a test here.

(Stale timestamps, bodies swapped under their Content-MD5, replays to another instance
and bodies over 64 KiB are in test_auth.py and test_register.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest

from service import auth, credentials
from service.app import create_app
from service.client import XCloudClient, make_customer_id
from tests.helpers import DOC_EXAMPLE, example, free_port, row_counts, signed_json, wait_healthy

PATH = "/xcloud/v1/customers"

INJECTIONS = [
    "'; DROP TABLE customers; --",
    '" OR "1"="1',
    "1; SELECT pg_sleep(5); --",
    "$$; DELETE FROM outbox; $$",
    "') OR ('a'='a",
    "\\'; TRUNCATE auth_nonces; --",
    "%27%20OR%201%3D1",
]

# Every free-text field of a registration, as (path in the body, max length).
TEXT_FIELDS = [
    ("customerName",),
    ("description",),
    ("contactInfo", "address", "street"),
    ("contactInfo", "address", "city"),
    ("contactInfo", "address", "state"),
    ("contactInfo", "address", "postalCode"),
    ("contactInfo", "address", "country"),
    ("businessInfo", "industry"),
    ("businessInfo", "sector"),
    ("location", "name"),
]


def with_value(path: tuple[str, ...], value: object) -> dict:
    body = example(
        customerId=make_customer_id(f"Inj{abs(hash((path, str(value)))) % 10**8}"),
        location={"latitude": 1.5, "longitude": 2.5, "name": "x"},
    )
    node = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return body


def get(body: dict, path: tuple[str, ...]) -> object:
    for key in path:
        body = body[key]
    return body


async def tables_intact(pool) -> None:
    for table in ("customers", "outbox", "auth_nonces", "service_credentials"):
        assert await pool.fetchval(f"SELECT to_regclass('{table}') IS NOT NULL")


@pytest.mark.parametrize("field", TEXT_FIELDS, ids=".".join)
async def test_sql_in_every_text_field_is_stored_as_text(xc, clean_db, field):
    for attack in INJECTIONS:
        body = with_value(field, attack)
        resp = await xc.request("POST", PATH, json.dumps(body).encode())
        assert resp.status == 201, (attack, resp.body)
        stored = await xc.get_customer(body["customerId"])
        assert get(stored, field) == attack
    await tables_intact(clean_db)
    assert await clean_db.fetchval("SELECT count(*) FROM service_credentials") == 1


@pytest.mark.parametrize(
    "field",
    [
        ("customerId",),
        ("status",),
        ("contactInfo", "email"),
        ("contactInfo", "phone"),
        ("businessInfo", "timezone"),
        ("settings", "alertFrequency"),
    ],
    ids=".".join,
)
async def test_sql_in_every_formatted_field_is_a_validation_error(xc, clean_db, field):
    for attack in INJECTIONS:
        resp = await xc.request("POST", PATH, json.dumps(with_value(field, attack)).encode())
        assert resp.status == 400, (attack, resp.body)
        assert ".".join(field) in resp.body["details"]
    assert await row_counts(clean_db) == (0, 0)
    await tables_intact(clean_db)


@pytest.mark.parametrize("param", ["status", "cursor", "limit"])
async def test_sql_in_every_query_parameter_is_a_validation_error(xc, clean_db, param):
    await xc.register_customer(DOC_EXAMPLE)
    for attack in INJECTIONS:
        from urllib.parse import quote

        resp = await xc.request("GET", f"{PATH}?{param}={quote(attack)}")
        assert resp.status == 400, (attack, resp.body)
        assert param in resp.body["details"]
    await tables_intact(clean_db)
    assert await row_counts(clean_db) == (1, 1)


@pytest.mark.parametrize("field", TEXT_FIELDS, ids=".".join)
async def test_a_nul_byte_in_any_text_field_is_a_validation_error(xc, clean_db, field):
    resp = await xc.request("POST", PATH, json.dumps(with_value(field, "a\u0000b")).encode())
    assert resp.status == 400
    assert ".".join(field) in resp.body["details"]
    assert await row_counts(clean_db) == (0, 0)


async def test_unicode_of_every_kind_round_trips(xc, clean_db):
    texts = [
        "Ωmega Água 水道 💧🚰",
        "עִברִית RTL \u202e override",
        "e\u0301 combining",
        "\u200b zero width",
        "tab\there",
        "line\nbreak",
        "\U0001d518\U0001d52b math letters",
    ]
    for i, text in enumerate(texts):
        body = example(customerId=make_customer_id(f"U{i}"), customerName=text, description=text)
        resp = await xc.request("POST", PATH, json.dumps(body).encode())
        assert resp.status == 201, (text, resp.body)
        assert (await xc.get_customer(body["customerId"]))["customerName"] == text


@pytest.mark.parametrize(
    "bad_id",
    [
        "FST-12345678-a%0D%0ASet-Cookie:%20x=1",
        "FST-12345678-a%0ALocation:%20evil",
        "FST-12345678-a%00b",
        "FST-12345678-%E2%80%A8x",
    ],
)
async def test_header_injection_through_ids(xc, clean_db, bad_id):
    for method in ("GET", "HEAD", "PUT"):
        body = json.dumps(DOC_EXAMPLE).encode() if method == "PUT" else None
        resp = await xc.request(method, f"{PATH}/{bad_id}", body)
        assert resp.status == 400, (method, bad_id)
        assert "Set-Cookie" not in resp.headers and "Location" not in resp.headers
    body = example(customerId="FST-12345678-a\r\nSet-Cookie: x=1")
    resp = await xc.request("POST", PATH, json.dumps(body).encode())
    assert resp.status == 400 and "Set-Cookie" not in resp.headers


async def test_another_services_secret_does_not_work(api, clean_db, settings):
    box = credentials.SecretBox(settings.secret_key)
    async with clean_db.acquire() as conn:
        await credentials.add(conn, box, "service-a")
        secret_b = await credentials.add(conn, box, "service-b")
    headers = signed_json(("service-a", secret_b), json.dumps(DOC_EXAMPLE).encode())
    resp = await api.post(PATH, data=json.dumps(DOC_EXAMPLE).encode(), headers=headers)
    assert resp.status == 401
    assert (await resp.json())["error"] == "INVALID_SIGNATURE"
    assert await row_counts(clean_db) == (0, 0)


async def test_oversized_headers_are_refused_without_a_crash(api, credential, clean_db):
    headers = auth.sign_request(
        service_id=credential[0], secret=credential[1], method="GET", path_and_query=PATH
    )
    headers["X-Padding"] = "x" * 100_000
    resp = await api.get(PATH, headers=headers)
    assert resp.status in (400, 413, 431)
    healthy = await api.get("/healthz")  # and the server goes on
    assert healthy.status == 200


async def test_a_slow_body_times_out_and_frees_the_connection(
    aiohttp_client, settings, credential, clean_db
):
    import dataclasses

    app = create_app(dataclasses.replace(settings, body_timeout_seconds=1))
    client = await aiohttp_client(app)
    body = json.dumps(DOC_EXAMPLE).encode()
    headers = signed_json(credential, body, PATH)
    head = f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(head.encode() + body[:10])  # then nothing more: a slow-loris body
    await writer.drain()
    started = time.monotonic()
    answer = await asyncio.wait_for(reader.read(), timeout=10)  # until the server closes
    assert time.monotonic() - started < 5
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 408 " in status_line
    assert b'"REQUEST_TIMEOUT"' in rest
    writer.close()
    assert await row_counts(clean_db) == (0, 0)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_ten_thousand_bad_signatures_write_nothing_and_cost_little(
    settings, credential, clean_db, tmp_path
):
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "XCLOUD_SECRET_KEY": settings.secret_key,
        "XCLOUD_HOST": "127.0.0.1",
        "XCLOUD_PORT": str(port),
    }
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--workers", "1", "--no-relay"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_healthy(url)
        writes_before = await _writes(clean_db)
        cpu_before = _cpu_seconds(proc.pid)
        body = json.dumps(DOC_EXAMPLE).encode()
        statuses: dict[int, int] = {}
        async with (
            XCloudClient(url, credential[0], "not-the-secret") as bad,
            XCloudClient(url, "nobody-at-all", "whatever") as unknown,
        ):
            sem = asyncio.Semaphore(32)

            async def attempt(i: int) -> None:
                client = bad if i % 2 else unknown
                async with sem:
                    resp = await client.request("POST", PATH, body)
                statuses[resp.status] = statuses.get(resp.status, 0) + 1

            await asyncio.gather(*(attempt(i) for i in range(10_000)))
        cpu = _cpu_seconds(proc.pid) - cpu_before
        assert statuses == {401: 10_000}
        assert await _writes(clean_db) == writes_before, "a rejected request wrote something"
        # Rejection is cheap: the secret comes from a cache (known and unknown ids alike),
        # and the body is never parsed. A generous bound, far under a real request's cost.
        assert cpu / 10_000 < 0.002, f"{cpu / 10_000 * 1000:.2f} ms CPU per rejected request"
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


async def _writes(pool) -> tuple[int, ...]:
    """Row counts of every table a request could write (statistics views lag; counts don't)."""
    return tuple(
        [
            await pool.fetchval(f"SELECT count(*) FROM {table}")
            for table in ("customers", "outbox", "auth_nonces", "service_credentials")
        ]
    )
