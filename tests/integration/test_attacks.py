"""A hostile caller gets nowhere: each attack of the reliability and security issues is a
test here, sent over a raw socket where the client library would clean it up. Keep adding.

(Stale timestamps, bodies swapped under their Content-MD5, replays to another instance
and bodies over 64 KiB are in test_auth.py and test_register.py.)"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from types import SimpleNamespace

import aiohttp
import pytest

from service.api.app import create_app
from service.auth import signing
from service.auth.secretbox import SecretBox
from service.db import credentials
from service.tools.client import XCloudClient, make_customer_id
from tests import attack as attacks
from tests.helpers import DOC_EXAMPLE, example, free_port, row_counts, signed_json

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
    box = SecretBox(settings.secret_key)
    async with clean_db.acquire() as conn:
        await credentials.add(conn, box, "service-a")
        secret_b = await credentials.add(conn, box, "service-b")
    headers = signed_json(("service-a", secret_b), json.dumps(DOC_EXAMPLE).encode())
    resp = await api.post(PATH, data=json.dumps(DOC_EXAMPLE).encode(), headers=headers)
    assert resp.status == 401
    assert (await resp.json())["error"] == "INVALID_SIGNATURE"
    assert await row_counts(clean_db) == (0, 0)


async def test_oversized_headers_are_refused_without_a_crash(api, credential, clean_db):
    headers = signing.sign_request(
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


# --- the hostile requests of issue 13, sent raw: the client library would clean them up --


async def raw(
    api, method: str, target: str, headers: list[tuple[str, str | bytes]], body: bytes = b""
) -> tuple[int, dict[str, list[str]], bytes]:
    """Sends one request byte for byte, with Connection: close; (status, headers, body)."""
    head = f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
    for name, value in headers:
        head += name.encode() + b": " + (value if isinstance(value, bytes) else value.encode())
        head += b"\r\n"
    if body:
        head += f"Content-Length: {len(body)}\r\n".encode()
    return await raw_bytes(api, head + b"\r\n" + body)


async def raw_bytes(api, data: bytes) -> tuple[int, dict[str, list[str]], bytes]:
    reader, writer = await asyncio.open_connection(api.host, api.port)
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)  # until the server closes
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return int(lines[0].split()[1]), headers, body


def assert_error(answer, status: int, code: str) -> dict:
    """The contract's error format: status, JSON object with error and message, request id."""
    got_status, headers, body = answer
    assert got_status == status, (got_status, body[:300])
    assert headers["content-type"] == ["application/json; charset=utf-8"]
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,128}", headers["x-request-id"][0])
    doc = json.loads(body)
    assert doc["error"] == code and doc["message"], doc
    if status == 401:
        assert headers["www-authenticate"] == ["HMAC-SHA256"]
    return doc


def no_errors_logged(caplog) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [(r.name, r.getMessage()) for r in bad]


def signed_post(credential, body: bytes, content_type: str = "application/json"):
    signed = signing.sign_request(
        service_id=credential[0],
        secret=credential[1],
        method="POST",
        path_and_query=PATH,
        body=body,
        content_type=content_type,
    )
    return list(signed.items())


@pytest.mark.parametrize(
    "content_type",
    [b"\xff", b"application/json\xff", "application/jsón".encode(), b"application/json\x80"],
)
async def test_a_content_type_not_in_printable_ascii_is_auth_required_not_500(
    api, credential, clean_db, caplog, content_type
):
    body = json.dumps(DOC_EXAMPLE).encode()
    headers = [(k, v) for k, v in signed_post(credential, body) if k != "Content-Type"]
    answer = await raw(api, "POST", PATH, [*headers, ("Content-Type", content_type)], body)
    assert_error(answer, 401, "AUTH_REQUIRED")
    no_errors_logged(caplog)
    assert await row_counts(clean_db) == (0, 0)


@pytest.mark.parametrize("header", signing.SIGNED_HEADERS)
async def test_any_auth_header_with_a_byte_over_0x7f_is_auth_required(
    api, credential, clean_db, caplog, header
):
    body = json.dumps(DOC_EXAMPLE).encode()
    headers = [
        (k, v.encode() + b"\xc3\xa9" if k == header else v)
        for k, v in signed_post(credential, body)
    ]
    assert_error(await raw(api, "POST", PATH, headers, body), 401, "AUTH_REQUIRED")
    no_errors_logged(caplog)
    assert await row_counts(clean_db) == (0, 0)


# Content-Type twice never reaches authentication: aiohttp's parser refuses it first, as
# conflicting framing (400 BAD_REQUEST, in PARSER_REFUSALS below).
@pytest.mark.parametrize("header", [h for h in signing.SIGNED_HEADERS if h != "Content-Type"])
async def test_an_auth_header_sent_twice_is_auth_required(api, credential, clean_db, header):
    body = json.dumps(DOC_EXAMPLE).encode()
    headers = signed_post(credential, body)
    twice = [*headers, *[(k, v) for k, v in headers if k == header]]  # the same value again
    assert_error(await raw(api, "POST", PATH, twice, body), 401, "AUTH_REQUIRED")
    assert await row_counts(clean_db) == (0, 0)
    # The same request, each header once, is accepted: only the copy was wrong.
    status, _, _ = await raw(api, "POST", PATH, headers, body)
    assert status == 201
    assert await row_counts(clean_db) == (1, 1)


LONGEST_ID = "FST-{:014d}-" + "x" * 64  # 83 characters: the longest the contract allows

PARSER_REFUSALS = {
    "bad request line": b"GARBAGE\r\n\r\n",
    "a space in a header name": b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n",
    "Content-Type twice": (
        b"POST /xcloud/v1/customers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    ),
    "raw non-ASCII in the target": b"GET /xcloud/v1/customers/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    "raw non-ASCII in a header name": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-\xff: 1\r\n\r\n",
    "Transfer-Encoding with Content-Length": (
        b"POST /xcloud/v1/customers HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "two Content-Lengths": (
        b"POST /xcloud/v1/customers HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Content-Length: 3\r\n\r\n{}"
    ),
    "a header over 16 KiB": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"x" * 17_000 + b"\r\n\r\n"
    ),
    "a request line over 16 KiB": (
        b"HEAD /xcloud/v1/customers/"
        + ",".join(LONGEST_ID.format(n) for n in range(200)).encode()
        + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    ),
}


@pytest.mark.parametrize("data", PARSER_REFUSALS.values(), ids=PARSER_REFUSALS.keys())
async def test_what_the_http_parser_refuses_gets_the_json_format_and_one_warning(
    api, clean_db, caplog, data
):
    caplog.set_level(logging.DEBUG)
    answer = await raw_bytes(api, data)
    doc = assert_error(answer, 400, "BAD_REQUEST")
    assert b"\xff" not in answer[2] and "x" * 100 not in doc["message"]  # nothing echoed
    refusals = [r for r in caplog.records if r.getMessage() == "request refused by the HTTP parser"]
    assert len(refusals) == 1
    (line,) = refusals
    assert line.levelno == logging.WARNING and line.exc_info is None
    assert line.request_id == answer[1]["x-request-id"][0]
    no_errors_logged(caplog)
    assert (await api.get("/healthz")).status == 200  # and the server goes on


async def test_head_takes_100_ids_of_the_longest_form(api, credential, clean_db):
    ids = [LONGEST_ID.format(n) for n in range(100)]
    target = f"{PATH}/{','.join(ids)}"
    assert len(f"HEAD {target} HTTP/1.1") > 8190  # over aiohttp's default limit
    signed = signing.sign_request(
        service_id=credential[0], secret=credential[1], method="HEAD", path_and_query=target
    )
    status, headers, body = await raw(api, "HEAD", target, list(signed.items()))
    assert (status, body) == (404, b"")
    assert headers["x-missing-customer-ids"] == [",".join(ids)]
    # and the client library reads an answer header that long
    async with XCloudClient(str(api.make_url("")), *credential) as client:
        assert await client.missing_customers(ids) == ids


DUPLICATE_KEYS = {
    "top level": '{"status": "BOGUS", "status": "ACTIVE"}',
    "nested": '{"contactInfo": {"email": "bad", "email": "a@example.com"}}',
    "deepest": '{"contactInfo": {"email": "a@example.com", "address": {"city": "A", "city": "B"}}}',
    "spelt differently": '{"status": "BOGUS", "st\\u0061tus": "ACTIVE"}',
    "spaced": '{"settings": {"alertFrequency" : "never", "alertFrequency"\n:"daily"}}',
}


@pytest.mark.parametrize("fragment", DUPLICATE_KEYS.values(), ids=DUPLICATE_KEYS.keys())
async def test_a_key_named_twice_at_any_depth_is_invalid_json(xc, clean_db, fragment):
    # The rest of a valid registration around the fragment's keys.
    extra = json.loads(fragment)  # the last value of each duplicate: a valid body
    body = example(customerId=make_customer_id("Dup"))
    for key, value in extra.items():
        body[key] = {**body.get(key, {}), **value} if isinstance(value, dict) else value
    text = json.dumps(body)
    assert (await xc.request("POST", PATH, text.encode())).status == 201  # valid without dups
    await clean_db.execute("TRUNCATE customers, outbox")
    duplicated = text[:-1] + ", " + fragment[1:]  # the fragment's keys again, at the end
    resp = await xc.request("POST", PATH, duplicated.encode())
    assert (resp.status, resp.body["error"]) == (400, "INVALID_JSON"), resp.body
    assert await row_counts(clean_db) == (0, 0)


async def test_colons_quotes_and_braces_in_text_are_no_duplicate_keys(xc, clean_db):
    body = example(description='at 10:30, "quoted": yes, {"a": 1, "a": 2} \u003a as text')
    resp = await xc.request("POST", PATH, json.dumps(body).encode())
    assert resp.status == 201, resp.body


@pytest.mark.parametrize(
    "zone", ["localtime", "posixrules", "/etc/localtime", "../../etc/passwd", "America/../UTC"]
)
async def test_only_zones_of_the_tz_database_are_timezones(xc, clean_db, zone):
    body = example(businessInfo={"timezone": zone})
    resp = await xc.request("POST", PATH, json.dumps(body).encode())
    assert resp.status == 400
    assert "businessInfo.timezone" in resp.body["details"]
    assert await row_counts(clean_db) == (0, 0)


# --- load by strangers: against a real `xcloud serve` ------------------------------------


async def test_metrics_on_their_own_port_and_scrapes_cost_no_query(
    settings, credential, clean_db, tmp_path
):
    metrics_port = free_port()
    server = attacks.Server(
        settings.database_url, settings.secret_key, tmp_path / "serve.log", metrics_port
    )
    await server.start()
    ops = f"http://127.0.0.1:{metrics_port}"
    # Counts reach pg_stat_database when the server's backends end: everything the server
    # does from here to its stop is in the difference.
    before = await attacks.transactions(settings.database_url)
    started = time.monotonic()
    try:
        async with aiohttp.ClientSession() as http:
            for route in ("/healthz", "/readyz", "/metrics"):
                async with http.get(server.url + route) as resp:
                    assert resp.status == 404, route  # moved off the API's port
                    assert (await resp.json())["error"] == "NOT_FOUND"
                async with http.get(ops + route) as resp:
                    assert resp.status == 200, route
            async with http.get(server.url + "/openapi.json") as resp:
                assert resp.status == 200
            # `xcloud serve` itself answers what its parser refuses in the JSON format.
            port = SimpleNamespace(host="127.0.0.1", port=server.port)
            assert_error(await raw_bytes(port, b"GARBAGE\r\n\r\n"), 400, "BAD_REQUEST")
            async with XCloudClient(server.url, *credential) as client:
                await client.register_customer(DOC_EXAMPLE)  # the API itself is there
            for _ in range(300):
                async with http.get(ops + "/metrics") as resp:
                    assert resp.status == 200
                    text = await resp.text()
    finally:
        server.stop()
    elapsed = time.monotonic() - started
    assert "xcloud_http_requests_total" in text
    log = (tmp_path / "serve.log").read_text()
    refused = [json.loads(line) for line in log.splitlines() if "refused by the HTTP" in line]
    assert [r["level"] for r in refused] == ["WARNING"]
    assert "Traceback" not in log
    await asyncio.sleep(0.5)
    spent = await attacks.transactions(settings.database_url) - before
    # Fixed costs (readyz, the registration, the credential lookups, the relay wake-up's
    # connection and its NOTIFY, the first sweep of expired idempotency answers: about
    # 24) and the background refresh (2 per 5 s), whatever the number of scrapes; a query
    # per scrape would be 600 more.
    assert spent <= 32 + 2 * (elapsed / 5 + 1), (
        f"{spent} transactions, 300 scrapes, {elapsed:.1f} s"
    )


async def test_attacks_fast_form(settings, credential, clean_db, tmp_path):
    """`make attack`'s two attacks, shorter (the full form writes docs/reliability.md)."""
    server = attacks.Server(settings.database_url, settings.secret_key, tmp_path / "slow.log")
    await server.start()
    try:
        async with XCloudClient(server.url, *credential) as client:
            await client.register_customer(DOC_EXAMPLE)
        slow = await attacks.slow_headers(server.url, credential, connections=300, seconds=5)
    finally:
        server.stop()
    assert slow.opened == 300
    assert slow.attack_requests > 20 and slow.attack_errors == 0
    assert slow.attack_p99_ms < 1000, slow  # answered on time while 300 headers trickle in

    writes = await _writes(clean_db)
    bad = await attacks.bad_signatures(
        settings.database_url, settings.secret_key, credential, tmp_path, 10_000
    )
    print(attacks.report(slow, bad, full=False))
    assert bad.statuses == {"401 INVALID_SIGNATURE": 10_000}
    customers, outbox, nonces, creds = await _writes(clean_db)
    assert (customers, outbox, creds) == (writes[0], writes[1], writes[3])
    # The signed GETs of the CPU baseline (and their warm-up) claimed nonces; nothing else.
    assert nonces == writes[2] + bad.legit_requests + attacks.WARM_UP, "a rejected one wrote"
    # Unknown ids are answered from memory: the known-id set is read at most once a
    # second, where each made-up id used to cost a query (about 9,400 for 10,000).
    assert bad.transactions < 100, bad
    assert bad.legit_transactions >= bad.legit_requests  # the counter does count
    # Rejection is cheap: no query, no body parsed. A generous bound.
    assert bad.cpu_ms_per_request < 2.0, bad


async def _writes(pool) -> tuple[int, ...]:
    """Row counts of every table a request could write (statistics views lag; counts don't)."""
    return tuple(
        [
            await pool.fetchval(f"SELECT count(*) FROM {table}")
            for table in ("customers", "outbox", "auth_nonces", "service_credentials")
        ]
    )
