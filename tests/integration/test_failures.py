"""The database going away mid-flight: 503 with the contract's body, then recovery."""

from __future__ import annotations

import json

from tests.helpers import DOC_EXAMPLE, example


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
