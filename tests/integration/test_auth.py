"""Contract section 2 against the running app and the real database."""

from __future__ import annotations

import asyncio
import json
import secrets
import time

import pytest

from service.api.app import create_app
from service.auth import signing
from service.auth.credentials import CredentialStore
from service.auth.secretbox import SecretBox
from service.db import credentials
from service.tools.client import XCloudClient
from tests.helpers import DOC_EXAMPLE, row_counts

PATH = "/xcloud/v1/customers"
BODY = json.dumps(DOC_EXAMPLE).encode()


def signed(service_id: str, secret: str, **overrides) -> dict[str, str]:
    args = {
        "service_id": service_id,
        "secret": secret,
        "method": "POST",
        "path_and_query": PATH,
        "body": BODY,
        "content_type": "application/json",
    }
    args.update(overrides)
    return signing.sign_request(**args)


async def send(api, headers: dict[str, str], body: bytes = BODY, method: str = "POST"):
    resp = await api.request(method, PATH, data=body, headers=headers)
    return resp.status, await resp.json(), resp.headers


async def assert_401(api, pool, headers, code, body=BODY):
    status, payload, resp_headers = await send(api, headers, body)
    assert (status, payload["error"]) == (401, code), payload
    assert resp_headers["WWW-Authenticate"] == "HMAC-SHA256"
    assert await row_counts(pool) == (0, 0)


async def test_a_correctly_signed_request_passes(api, credential, clean_db):
    status, payload, _ = await send(api, signed(*credential))
    assert status == 201, payload


@pytest.mark.parametrize(
    "drop", ["Authorization", signing.TIMESTAMP_HEADER, signing.NONCE_HEADER, "Content-MD5"]
)
async def test_a_missing_header_is_auth_required(api, credential, clean_db, drop):
    headers = signed(*credential)
    del headers[drop]
    await assert_401(api, clean_db, headers, "AUTH_REQUIRED")


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Authorization", "Basic dXNlcjpwYXNz"),
        ("Authorization", "HMAC-SHA256 no-colon-here"),
        ("Authorization", "HMAC-SHA256 svc:not-base64!"),
        (signing.TIMESTAMP_HEADER, "yesterday"),
        (signing.TIMESTAMP_HEADER, "-5"),
        (signing.NONCE_HEADER, "short"),
        (signing.NONCE_HEADER, "x" * 65),
        (signing.NONCE_HEADER, "has space in it 12345"),
        ("Content-MD5", "not-md5"),
    ],
)
async def test_a_malformed_header_is_auth_required(api, credential, clean_db, header, value):
    headers = signed(*credential)
    headers[header] = value
    await assert_401(api, clean_db, headers, "AUTH_REQUIRED")


@pytest.mark.parametrize("skew", [-301, 301, -10_000])
async def test_a_stale_timestamp(api, credential, clean_db, skew):
    headers = signed(*credential, timestamp=int(time.time()) + skew)
    await assert_401(api, clean_db, headers, "STALE_REQUEST")


async def test_timestamp_within_the_window_passes(api, credential, clean_db):
    status, _, _ = await send(api, signed(*credential, timestamp=int(time.time()) - 290))
    assert status == 201


async def test_stale_is_answered_before_the_signature(api, credential, clean_db):
    headers = signed(credential[0], "wrong-secret", timestamp=int(time.time()) - 1000)
    await assert_401(api, clean_db, headers, "STALE_REQUEST")


async def test_unknown_service_and_wrong_secret_get_the_same_answer(api, credential, clean_db):
    unknown = await send(api, signed("nobody-knows-me", credential[1]))
    wrong = await send(api, signed(credential[0], "not-the-secret"))
    assert unknown[0] == wrong[0] == 401
    assert unknown[1]["error"] == wrong[1]["error"] == "INVALID_SIGNATURE"
    assert unknown[1]["message"] == wrong[1]["message"]
    assert await row_counts(clean_db) == (0, 0)


@pytest.mark.parametrize(
    "tamper",
    [
        {"method": "PUT"},
        {"path_and_query": "/xcloud/v1/customers?x=1"},
        {"content_type": "application/json; charset=utf-8"},
        {"nonce": "another-nonce-0123456789"},
    ],
)
async def test_anything_signed_that_differs_is_an_invalid_signature(
    api, credential, clean_db, tamper
):
    sent = signed(*credential)
    other = signed(*credential, **tamper, timestamp=int(sent[signing.TIMESTAMP_HEADER]))
    sent["Authorization"] = other["Authorization"]
    await assert_401(api, clean_db, sent, "INVALID_SIGNATURE")


async def test_a_body_swapped_under_its_content_md5(api, credential, clean_db):
    headers = signed(*credential)
    swapped = BODY.replace(b"Dewatering", b"Evil-Corp!")
    status, payload, _ = await send(api, headers, swapped)
    assert (status, payload["error"]) == (400, "CONTENT_MD5_MISMATCH")
    assert await row_counts(clean_db) == (0, 0)


async def test_a_replay_is_refused(api, credential, clean_db):
    headers = signed(*credential)
    assert (await send(api, headers))[0] == 201
    await assert_401_after_one_row(api, clean_db, headers)


async def assert_401_after_one_row(api, pool, headers):
    status, payload, resp_headers = await send(api, headers)
    assert (status, payload["error"]) == (401, "REPLAYED_REQUEST")
    assert resp_headers["WWW-Authenticate"] == "HMAC-SHA256"
    assert await row_counts(pool) == (1, 1)


async def test_a_replay_of_a_rejected_request_is_still_a_replay(api, credential, clean_db):
    bad = json.dumps({"customerId": "nope"}).encode()
    headers = signed(*credential, body=bad)
    status, payload, _ = await send(api, headers, bad)
    assert (status, payload["error"]) == (400, "VALIDATION_ERROR")
    status, payload, _ = await send(api, headers, bad)
    assert (status, payload["error"]) == (401, "REPLAYED_REQUEST")


async def test_a_replay_to_another_app_instance_is_refused(
    aiohttp_client, settings, api, credential, clean_db
):
    """Two app instances share nothing but PostgreSQL, like two processes or hosts."""
    other = await aiohttp_client(create_app(settings))
    headers = signed(*credential)
    assert (await send(api, headers))[0] == 201
    await assert_401_after_one_row(other, clean_db, headers)


async def test_the_same_nonce_of_another_service_is_fine(api, credential, settings, clean_db):
    async with clean_db.acquire() as conn:
        other_secret = await credentials.add(conn, SecretBox(settings.secret_key), "other-service")
    nonce = "shared-nonce-0123456789"
    first = await send(api, signed(*credential, nonce=nonce))
    body2 = BODY.replace(b"NewCustomer", b"NewCustomer2")
    second = await send(api, signed("other-service", other_secret, nonce=nonce, body=body2), body2)
    assert (first[0], second[0]) == (201, 201)


async def test_a_revoked_service_is_refused(api, credential, settings, clean_db):
    async with clean_db.acquire() as conn:
        assert await credentials.revoke(conn, credential[0])
    await assert_401(api, clean_db, signed(*credential), "INVALID_SIGNATURE")


async def test_healthz_needs_no_auth(api):
    resp = await api.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_secrets_are_encrypted_at_rest(credential, settings, clean_db):
    service_id, secret = credential
    sealed = await clean_db.fetchval(
        "SELECT secret_encrypted FROM service_credentials WHERE service_id = $1", service_id
    )
    assert secret.encode() not in sealed
    assert SecretBox(settings.secret_key).open(service_id, sealed) == secret.encode()
    with pytest.raises(Exception):  # noqa: B017 - any failure to open is the point
        SecretBox("another-key-" + "x" * 40).open(service_id, sealed)
    with pytest.raises(Exception):  # noqa: B017 - bound to its service id
        SecretBox(settings.secret_key).open("someone-else", sealed)


async def test_client_signs_what_the_server_checks(xc, clean_db):
    """The project's own client and server agree, on a path with a query string too."""
    resp = await xc.request("POST", PATH + "?dry=1&x=%20y", json.dumps(DOC_EXAMPLE).encode())
    assert resp.status == 201, resp.body
    assert isinstance(xc, XCloudClient)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", PATH),
        ("GET", PATH + "/FST-12345678-x"),
        ("PUT", PATH + "/FST-12345678-x"),
        ("HEAD", PATH + "/FST-12345678-x"),
    ],
)
async def test_every_customer_route_needs_a_signature(api, clean_db, method, path):
    resp = await api.request(method, path)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == "HMAC-SHA256"
    if method != "HEAD":
        assert (await resp.json())["error"] == "AUTH_REQUIRED"


async def test_a_get_replay_is_refused_too(api, credential, clean_db):
    headers = signing.sign_request(
        service_id=credential[0],
        secret=credential[1],
        method="GET",
        path_and_query=PATH + "?limit=5",
    )
    first = await api.get(PATH + "?limit=5", headers=headers)
    assert first.status == 200
    again = await api.get(PATH + "?limit=5", headers=headers)
    assert again.status == 401
    assert (await again.json())["error"] == "REPLAYED_REQUEST"


async def test_a_credential_sealed_under_another_key_is_refused_not_a_crash(api, clean_db):
    async with clean_db.acquire() as conn:
        other = SecretBox("a-different-secret-key-" + "z" * 32)
        secret = await credentials.add(conn, other, "old-key-service")
    headers = signed("old-key-service", secret)
    status, payload, _ = await send(api, headers)
    assert (status, payload["error"]) == (401, "INVALID_SIGNATURE")


# --- the credential cache ------------------------------------------------------------------
# The credential cache against the real database: made-up ids cost no query, the LRU is
# bounded and keeps the ids in use, a new credential works within a second.


class CountingPool:
    """The real pool, counting the queries that reach it."""

    def __init__(self, pool) -> None:
        self._pool = pool
        self.queries = 0

    async def fetch(self, *args):
        self.queries += 1
        return await self._pool.fetch(*args)

    async def fetchrow(self, *args):
        self.queries += 1
        return await self._pool.fetchrow(*args)


async def add(pool, box, service_id: str) -> bytes:
    async with pool.acquire() as conn:
        return (await credentials.add(conn, box, service_id)).encode()


async def test_made_up_ids_cost_at_most_one_query_a_second(clean_db, settings):
    box = SecretBox(settings.secret_key)
    secret = await add(clean_db, box, "known")
    pool = CountingPool(clean_db)
    store = CredentialStore(pool, box)
    assert await store.secret_for("known") == secret
    assert pool.queries == 2  # the set of ids, then the secret
    for _ in range(2000):
        assert await store.secret_for("svc-" + secrets.token_hex(8)) is None
    assert await store.secret_for("known") == secret
    assert pool.queries == 2, "neither made-up ids nor a cached secret reached the database"


async def test_a_new_credential_works_within_the_miss_interval(clean_db, settings):
    box = SecretBox(settings.secret_key)
    await add(clean_db, box, "first")
    store = CredentialStore(clean_db, box, miss_interval=0.3)
    assert await store.secret_for("later") is None
    secret = await add(clean_db, box, "later")
    assert await store.secret_for("later") is None  # not looked for again at once
    await asyncio.sleep(0.35)
    assert await store.secret_for("later") == secret


async def test_revoked_ones_stop_within_the_ttl(clean_db, settings):
    box = SecretBox(settings.secret_key)
    secret = await add(clean_db, box, "svc")
    store = CredentialStore(clean_db, box, ttl=0.3)
    assert await store.secret_for("svc") == secret
    async with clean_db.acquire() as conn:
        assert await credentials.revoke(conn, "svc")
    await asyncio.sleep(0.35)
    assert await store.secret_for("svc") is None


async def test_the_cache_is_a_bounded_lru_not_emptied_when_full(clean_db, settings):
    box = SecretBox(settings.secret_key)
    ids = [f"svc-{n}" for n in range(8)]
    for service_id in ids:
        await add(clean_db, box, service_id)
    pool = CountingPool(clean_db)
    store = CredentialStore(pool, box, max_entries=4)
    for service_id in ids:
        assert await store.secret_for(service_id) is not None
        assert await store.secret_for(ids[0]) is not None  # kept in use: stays cached
    queries = pool.queries
    assert await store.secret_for(ids[0]) is not None
    assert await store.secret_for(ids[-1]) is not None
    assert pool.queries == queries, "the most recently used stay"
    assert await store.secret_for(ids[1]) is not None  # long unused: evicted, read again
    assert pool.queries == queries + 1
