from __future__ import annotations

import dataclasses
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

from service import config
from service.api.app import create_app
from service.tools.client import XCloudClient
from tests.conftest import SECRET_KEY
from tests.helpers import TcpProxy


@pytest.fixture
def topic_settings(settings):
    """The settings with a topic of this test's own."""
    return dataclasses.replace(settings, topic=f"xcloud.test.{uuid.uuid4().hex[:10]}")


@pytest.fixture
async def proxied_api(aiohttp_client, settings, credential):
    """The app with its database behind a proxy the test can cut."""
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
