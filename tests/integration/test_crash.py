"""A worker SIGKILLed around the commit of a keyed write (contract section 12): the retry
with the same key gets the stored 201 with the same API keys, or, when the commit never
happened, runs afresh: a crashed request never holds its key."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator

import aiohttp
import pytest

from service.domain.api_keys import key_hash
from service.tools.client import XCloudClient
from tests.helpers import DOC_EXAMPLE, SECRET_KEY, free_port, row_counts, spawn_xcloud, wait_healthy

PATH = "/xcloud/v1/customers"


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
