"""Idempotency-Key on the three write routes (contract section 12), against real PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from cryptography.exceptions import InvalidTag

from service import config
from service.api.app import create_app
from service.auth.secretbox import SecretBox
from service.db import credentials, idempotency_keys
from service.domain.api_keys import key_hash
from service.tools.client import XCloudClient
from service.usecases import unit_of_work
from tests.helpers import (
    DOC_EXAMPLE,
    SECRET_KEY,
    example,
    free_port,
    row_counts,
    spawn_xcloud,
    wait_healthy,
)

PATH = "/xcloud/v1/customers"
ONE = f"{PATH}/{DOC_EXAMPLE['customerId']}"
KEY = "Idempotency-Key"


def raw(body: object) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


async def send(xc: XCloudClient, method: str, path: str, body: object = None, key: str = "k-1"):
    headers = {KEY: key} if key is not None else {}
    return await xc.request(method, path, None if body is None else raw(body), headers=headers)


async def test_a_retried_registration_gets_the_first_201_with_its_keys(xc, clean_db):
    first = await send(xc, "POST", PATH, DOC_EXAMPLE)
    assert first.status == 201, first.body
    assert "Idempotent-Replayed" not in first.headers
    # The same body as parsed JSON: other key order, other whitespace.
    reordered = json.dumps(dict(reversed(list(DOC_EXAMPLE.items()))), indent=3).encode()
    again = await send(xc, "POST", PATH, reordered)
    assert again.status == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.body == first.body  # the same API keys
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Content-Type"].startswith("application/json")
    assert await row_counts(clean_db) == (1, 1)  # nothing written, no second event


async def test_same_key_different_request_is_422_and_changes_nothing(xc, clean_db):
    assert (await send(xc, "POST", PATH, DOC_EXAMPLE)).status == 201
    other_body = await send(xc, "POST", PATH, example(customerName="Someone Else"))
    assert other_body.status == 422
    assert other_body.body["error"] == "IDEMPOTENCY_KEY_REUSED"
    other_route = await send(xc, "PUT", ONE, example(customerName="Renamed"))
    assert other_route.status == 422
    # A body that fails validation cannot be the stored request either.
    invalid = await send(xc, "POST", PATH, example(status="nope"))
    assert invalid.status == 422
    not_json = await send(xc, "POST", PATH, b"{nope")
    assert not_json.status == 422
    assert await row_counts(clean_db) == (1, 1)
    assert (await xc.get_customer(DOC_EXAMPLE["customerId"]))["customerName"] == (
        DOC_EXAMPLE["customerName"]
    )


@pytest.mark.parametrize(
    "value",
    ["", "has space", "x" * 256, "tab\there", "caf\u00e9"],
    ids=["empty", "space", "256-chars", "tab", "non-ascii"],
)
async def test_a_bad_key_is_400_with_its_header_named(api, credential, clean_db, value):
    from tests.helpers import signed_json

    body = raw(DOC_EXAMPLE)
    headers = {**signed_json(credential, body), KEY: value}
    resp = await api.post(PATH, data=body, headers=headers)
    assert resp.status == 400
    answer = await resp.json()
    assert answer["error"] == "VALIDATION_ERROR"
    assert list(answer["details"]) == ["Idempotency-Key"]
    assert await row_counts(clean_db) == (0, 0)


async def test_a_key_sent_twice_is_400(api, credential, clean_db):
    from multidict import CIMultiDict

    from tests.helpers import signed_json

    body = raw(DOC_EXAMPLE)
    headers = CIMultiDict(signed_json(credential, body))
    headers.add(KEY, "a")
    headers.add(KEY, "b")
    resp = await api.post(PATH, data=body, headers=headers)
    assert resp.status == 400
    assert list((await resp.json())["details"]) == ["Idempotency-Key"]
    assert await row_counts(clean_db) == (0, 0)


async def test_longest_and_widest_keys_are_accepted(xc, clean_db):
    every_char = "".join(chr(c) for c in range(0x21, 0x7F))
    for n, key in enumerate([every_char, "y" * 255, "!"]):
        resp = await send(xc, "POST", PATH, example(customerId=f"FST-12345678-k{n}"), key=key)
        assert resp.status == 201, resp.body


async def test_without_a_key_nothing_changes(xc, clean_db):
    assert (await send(xc, "POST", PATH, DOC_EXAMPLE, key=None)).status == 201
    assert (await send(xc, "POST", PATH, DOC_EXAMPLE, key=None)).status == 409
    assert await clean_db.fetchval("SELECT count(*) FROM idempotency_keys") == 0


async def test_409_404_and_412_are_stored_and_replayed(xc, clean_db):
    # 404 for an unknown customer, stored: it stays 404 for this key after it exists.
    missing = await send(xc, "PUT", ONE, DOC_EXAMPLE, key="put-404")
    assert missing.status == 404
    assert (await send(xc, "POST", PATH, DOC_EXAMPLE, key=None)).status == 201
    replayed = await send(xc, "PUT", ONE, DOC_EXAMPLE, key="put-404")
    assert (replayed.status, replayed.body) == (404, missing.body)
    assert replayed.headers["Idempotent-Replayed"] == "true"

    exists = await send(xc, "POST", PATH, DOC_EXAMPLE, key="post-409")
    assert exists.status == 409
    again = await send(xc, "POST", PATH, DOC_EXAMPLE, key="post-409")
    assert (again.status, again.body) == (409, exists.body)
    assert again.headers["Idempotent-Replayed"] == "true"

    stale = await xc.request(
        "PUT",
        ONE,
        raw(example(customerName="B")),
        headers={KEY: "put-412", "If-Match": '"nope"'},
    )
    assert stale.status == 412
    stale_again = await xc.request(
        "PUT", ONE, raw(example(customerName="B")), headers={KEY: "put-412", "If-Match": "*"}
    )
    # If-Match is no part of the request's identity (method, path, body): the stored 412.
    assert stale_again.status == 412
    assert stale_again.headers["Idempotent-Replayed"] == "true"
    assert await row_counts(clean_db) == (1, 1)


async def test_a_put_replay_has_the_etag_and_adds_no_event(xc, clean_db):
    assert (await send(xc, "POST", PATH, DOC_EXAMPLE, key=None)).status == 201
    body = example(customerName="Renamed")
    first = await send(xc, "PUT", ONE, body, key="put-1")
    assert first.status == 200
    again = await send(xc, "PUT", ONE, body, key="put-1")
    assert (again.status, again.body) == (200, first.body)
    assert again.headers["ETag"] == first.headers["ETag"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await row_counts(clean_db) == (1, 2)


async def test_400_is_not_stored_the_key_stays_free(xc, clean_db):
    bad = await send(xc, "POST", PATH, example(status="nope"), key="fix-me")
    assert bad.status == 400
    assert bad.body["error"] == "VALIDATION_ERROR"
    fixed = await send(xc, "POST", PATH, DOC_EXAMPLE, key="fix-me")
    assert fixed.status == 201
    assert "Idempotent-Replayed" not in fixed.headers


async def test_a_5xx_is_not_stored(proxied_api, clean_db):
    proxy, xc = proxied_api
    await proxy.cut()
    down = await send(xc, "POST", PATH, DOC_EXAMPLE, key="after-outage")
    assert down.status == 503
    await proxy.restore()
    up = await send(xc, "POST", PATH, DOC_EXAMPLE, key="after-outage")
    assert up.status == 201, up.body
    assert "Idempotent-Replayed" not in up.headers


async def test_in_flight_is_409_with_retry_after_then_free(xc, clean_db, credential, pool):
    lock = idempotency_keys.lock_id(credential[0], "busy")
    async with pool.acquire() as holder:
        # The lock a running request holds, taken here: a request in flight, as seen by
        # every process.
        await holder.execute("SELECT pg_advisory_lock($1)", lock)
        try:
            busy = await send(xc, "POST", PATH, DOC_EXAMPLE, key="busy")
        finally:
            await holder.execute("SELECT pg_advisory_unlock($1)", lock)
    assert busy.status == 409
    assert busy.body["error"] == "IDEMPOTENCY_KEY_IN_USE"
    assert busy.headers["Retry-After"] == "1"
    assert await row_counts(clean_db) == (0, 0)
    free = await send(xc, "POST", PATH, DOC_EXAMPLE, key="busy")
    assert free.status == 201


async def test_twenty_at_once_one_customer_one_event_same_answer(xc, clean_db):
    answers = await asyncio.gather(
        *(send(xc, "POST", PATH, DOC_EXAMPLE, key="together") for _ in range(20))
    )
    statuses = sorted(a.status for a in answers)
    assert set(statuses) <= {201, 409}, statuses
    created = [a for a in answers if a.status == 201]
    assert created
    assert all(a.body == created[0].body for a in created)
    for a in answers:
        if a.status == 409:
            assert a.body["error"] == "IDEMPOTENCY_KEY_IN_USE"
    assert sum("Idempotent-Replayed" not in a.headers for a in created) == 1
    assert await row_counts(clean_db) == (1, 1)


async def test_keys_are_per_service(api, xc, clean_db, settings):
    # Added before the first request: a credential created later is known to a running
    # process only after its next refresh (up to 1 s; test_auth.py, the credential cache).
    async with clean_db.acquire() as conn:
        other_secret = await credentials.add(conn, SecretBox(settings.secret_key), "other-service")
    assert (await send(xc, "POST", PATH, DOC_EXAMPLE, key="shared")).status == 201
    async with XCloudClient(str(api.make_url("")), "other-service", other_secret) as other:
        theirs = await send(other, "POST", PATH, DOC_EXAMPLE, key="shared")
    assert theirs.status == 409  # its own first request, not our stored 201
    assert theirs.body["error"] == "CUSTOMER_EXISTS"
    assert "Idempotent-Replayed" not in theirs.headers


async def test_a_retry_needs_a_fresh_nonce(api, credential, clean_db):
    from tests.helpers import signed_json

    body = raw(DOC_EXAMPLE)
    headers = {**signed_json(credential, body), KEY: "nonce"}
    assert (await api.post(PATH, data=body, headers=headers)).status == 201
    replay = await api.post(PATH, data=body, headers=headers)
    assert replay.status == 401
    assert (await replay.json())["error"] == "REPLAYED_REQUEST"


async def test_after_the_ttl_the_key_is_new_and_expired_rows_are_swept(
    aiohttp_client, settings, credential, clean_db
):
    short = dataclasses.replace(settings, idempotency_ttl_seconds=1)
    client = await aiohttp_client(create_app(short))
    async with XCloudClient(str(client.make_url("")), *credential) as xc:
        assert (await send(xc, "POST", PATH, DOC_EXAMPLE, key="ttl")).status == 201
        await asyncio.sleep(1.2)
        later = await send(xc, "POST", PATH, DOC_EXAMPLE, key="ttl")
        assert later.status == 409  # run again: the customer exists
        assert "Idempotent-Replayed" not in later.headers
        await clean_db.execute("UPDATE idempotency_keys SET expires_at = now() - interval '1s'")
    for n in range(3):
        await clean_db.execute(
            "INSERT INTO idempotency_keys (service_id, idem_key, request_hash, status, headers,"
            " body_sealed, expires_at) VALUES ('s', $1, '', 200, '{}', '', now() - interval '1s')",
            f"old-{n}",
        )
    await clean_db.execute(
        "INSERT INTO idempotency_keys (service_id, idem_key, request_hash, status, headers,"
        " body_sealed, expires_at) VALUES ('s', 'live', '', 200, '{}', '', now() + interval '1h')"
    )
    assert await idempotency_keys.delete_expired(clean_db, batch=2) == 2
    assert await idempotency_keys.delete_expired(clean_db, batch=2) == 2
    assert await idempotency_keys.delete_expired(clean_db, batch=2) == 0
    assert await clean_db.fetchval("SELECT idem_key FROM idempotency_keys") == "live"


async def test_stored_answers_are_sealed(xc, clean_db, credential):
    created = await send(xc, "POST", PATH, DOC_EXAMPLE, key="sealed")
    row = await clean_db.fetchrow("SELECT * FROM idempotency_keys")
    stored = bytes(row["body_sealed"])
    for api_key in created.body["apiKeys"].values():
        assert api_key.encode() not in stored
    assert DOC_EXAMPLE["customerId"].encode() not in stored
    mine = unit_of_work.Answers(SECRET_KEY, 60)
    assert orjson.loads(mine.open(credential[0], "sealed", stored)) == created.body
    with pytest.raises(InvalidTag):
        unit_of_work.Answers("another-secret-key-" + "z" * 32, 60).open(
            credential[0], "sealed", stored
        )
    with pytest.raises(InvalidTag):  # bound to its service id and key
        mine.open(credential[0], "other-key", stored)
    # Nor can the service secrets' key open it (its own derived key).
    with pytest.raises(InvalidTag):
        SecretBox(SECRET_KEY).open_bytes(f"{credential[0]}\x00sealed".encode(), stored)


def test_ttl_setting(settings):
    env = {"DATABASE_URL": "postgresql://x/y", "XCLOUD_SECRET_KEY": SECRET_KEY}
    assert config.load(env).idempotency_ttl_seconds == 86400
    assert (
        config.load({**env, "XCLOUD_IDEMPOTENCY_TTL_SECONDS": "60"}).idempotency_ttl_seconds == 60
    )
    with pytest.raises(config.ConfigError) as bad:
        config.load({**env, "XCLOUD_IDEMPOTENCY_TTL_SECONDS": "0"})
    assert bad.value.variable == "XCLOUD_IDEMPOTENCY_TTL_SECONDS"


async def test_the_client_never_lets_aiohttp_resend_a_signed_request(xc):
    # aiohttp would resend a PUT unchanged (same nonce) after a dropped connection; the
    # client retries itself, re-signed, with the same Idempotency-Key.
    assert xc._http()._retry_connection is False


# --- a worker killed around the commit -----------------------------------------------------
# A worker SIGKILLed around the commit of a keyed write (contract section 12): the retry
# with the same key gets the stored 201 with the same API keys, or, when the commit never
# happened, runs afresh: a crashed request never holds its key.


@pytest.fixture
async def serve(settings, tmp_path) -> AsyncIterator:
    procs: list[subprocess.Popen] = []

    async def start(kill: str | None) -> str:
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": settings.database_url,
            "XCLOUD_SECRET_KEY": SECRET_KEY,
            "XCLOUD_HOST": "127.0.0.1",
            "XCLOUD_PORT": str(port),
        }
        module = "service.cli"
        if kill is not None:
            env["XCLOUD_TEST_KILL"] = kill
            module = "tests.integration.crash_serve"
        with open(tmp_path / f"serve-{port}.log", "w") as log:
            proc = spawn_xcloud(
                "serve",
                "--workers",
                "1",
                "--no-relay",
                module=module,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        await wait_healthy(url)
        return url

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)


async def post_once(url: str, credential, key: str):
    async with XCloudClient(url, *credential, retries=0) as xc:
        return await xc.request(
            "POST", PATH, json.dumps(DOC_EXAMPLE).encode(), headers={"Idempotency-Key": key}
        )


async def test_killed_after_commit_the_retry_gets_the_stored_201(serve, credential, clean_db):
    doomed = await serve("after-commit")
    with pytest.raises(aiohttp.ClientError):  # the answer never came
        await post_once(doomed, credential, "crash-1")
    # Everything committed: the customer, its event, its keys, the stored answer.
    assert await row_counts(clean_db) == (1, 1)
    assert await clean_db.fetchval("SELECT count(*) FROM idempotency_keys") == 1
    hashes = {bytes(h) for h in await clean_db.fetchval("SELECT array_agg(key_hash) FROM api_keys")}

    healthy = await serve(None)
    retry = await post_once(healthy, credential, "crash-1")
    assert retry.status == 201, retry.body
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.headers["Location"] == f"{PATH}/{DOC_EXAMPLE['customerId']}"
    # The same keys as were created: they are the ones whose hashes are stored, and work.
    async with XCloudClient(healthy, *credential) as xc:
        for slot, key in retry.body["apiKeys"].items():
            assert key_hash(key) in hashes
            assert (await xc.verify_api_key(key))["slot"] == slot
    assert await row_counts(clean_db) == (1, 1)  # the retry wrote nothing


async def test_killed_before_commit_the_key_is_free_and_nothing_was_written(
    serve, credential, clean_db
):
    doomed = await serve("before-commit")
    with pytest.raises(aiohttp.ClientError):
        await post_once(doomed, credential, "crash-2")
    assert await row_counts(clean_db) == (0, 0)  # rolled back with the dead connection
    assert await clean_db.fetchval("SELECT count(*) FROM idempotency_keys") == 0

    healthy = await serve(None)
    # The server-side session of the dead worker may take a moment to end; until then the
    # key is (correctly) in use. The client's own retries cover that.
    async with XCloudClient(healthy, *credential, retries=5) as xc:
        created = await xc.register_customer(DOC_EXAMPLE, idempotency_key="crash-2")
    assert created["customerId"] == DOC_EXAMPLE["customerId"]
    assert await row_counts(clean_db) == (1, 1)
