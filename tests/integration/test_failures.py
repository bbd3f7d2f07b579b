"""The database going away mid-flight: 503 with the contract's body, then recovery."""

from __future__ import annotations

import json
from urllib.parse import urlsplit, urlunsplit

import pytest

from service import config
from service.app import create_app
from service.client import XCloudClient
from tests.conftest import SECRET_KEY
from tests.helpers import DOC_EXAMPLE, TcpProxy, example


@pytest.fixture
async def proxied_api(aiohttp_client, settings, credential):
    parts = urlsplit(settings.database_url)
    proxy = await TcpProxy(parts.hostname, parts.port).start()
    netloc = parts.netloc.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}")
    proxied = config.load(
        {
            "DATABASE_URL": urlunsplit(parts._replace(netloc=netloc)),
            "XCLOUD_SECRET_KEY": SECRET_KEY,
        }
    )
    client = await aiohttp_client(create_app(proxied))
    xc = XCloudClient(str(client.make_url("")), *credential)
    yield proxy, xc
    await xc.close()
    await proxy.cut()


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
