"""The fixtures of the integration tests: the real PostgreSQL and Kafka (started on first use,
stopped at the end of the session), the app, a credential, a client."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from service import config, logs
from service.api import httpserver
from service.api.app import create_app
from service.auth.secretbox import SecretBox
from service.db import connect, credentials, migrate
from service.tools.client import XCloudClient
from tests import services as services_mod
from tests.conftest import SERVICES_USED
from tests.helpers import SECRET_KEY, TcpProxy


@pytest.fixture(scope="session")
def services(pytestconfig: pytest.Config) -> Iterator[services_mod.Services]:
    found = services_mod.resolve()
    pytestconfig.stash[SERVICES_USED] = found
    yield found
    services_mod.stop()


@pytest.fixture(scope="session")
def settings(services: services_mod.Services) -> config.Settings:
    loaded = config.load(
        {
            "DATABASE_URL": services.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": services.kafka_bootstrap,
            "XCLOUD_SECRET_KEY": SECRET_KEY,
            "XCLOUD_TOPIC": f"xcloud.test.{uuid.uuid4().hex[:8]}",
            "XCLOUD_DB_POOL_SIZE": "10",
        },
        need_kafka=True,
    )
    # The metrics' database figures every second, not 5: tests waiting for them wait less.
    return dataclasses.replace(loaded, metrics_refresh_seconds=1.0)


@pytest.fixture(scope="session")
async def pool(settings: config.Settings) -> AsyncIterator[asyncpg.Pool]:
    await migrate.apply(settings.database_url)
    p = await connect.create_pool(settings.database_url, size=5)
    yield p
    await p.close()


@pytest.fixture
async def clean_db(pool: asyncpg.Pool) -> asyncpg.Pool:
    await pool.execute(
        "TRUNCATE customers, outbox, auth_nonces, service_credentials, api_keys, idempotency_keys"
        " RESTART IDENTITY"
    )
    return pool


@pytest.fixture
async def credential(clean_db: asyncpg.Pool, settings: config.Settings) -> tuple[str, str]:
    service_id = "test-service"
    async with clean_db.acquire() as conn:
        secret = await credentials.add(conn, SecretBox(settings.secret_key), service_id)
    return service_id, secret


class AppTestServer(TestServer):
    """Runs the app as `xcloud serve` does (httpserver.Runner: the contract's errors
    even for what the HTTP parser refuses)."""

    async def _make_runner(self, **kwargs):
        return httpserver.Runner(self.app, **kwargs)


@pytest.fixture
def aiohttp_client(aiohttp_client):
    """pytest-aiohttp's, with every Application served through AppTestServer."""

    async def make(app, **kwargs):
        if isinstance(app, web.Application):
            app = AppTestServer(app)
        return await aiohttp_client(app, **kwargs)

    return make


@pytest.fixture
async def api(aiohttp_client, settings, clean_db):
    """A test server running the real app against the real database."""
    return await aiohttp_client(create_app(settings))


@pytest.fixture
async def xc(api, credential) -> AsyncIterator[XCloudClient]:
    service_id, secret = credential
    client = XCloudClient(str(api.make_url("")), service_id, secret)
    yield client
    await client.close()


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


class ServiceLog:
    """What the service's own log handler wrote: the JSON lines `xcloud serve` puts on stderr,
    `extra` fields included."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]


@pytest.fixture
def service_log() -> Iterator[ServiceLog]:
    """The service's logging set up as `xcloud serve` sets it up (service.logs.setup), at DEBUG
    so that nothing the service could write is left out, into a buffer the test can search."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("aiokafka").level)
    captured = ServiceLog()
    logs.setup(logging.DEBUG)
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(captured.stream)
    yield captured
    root.handlers[:], level, kafka_level = saved
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(kafka_level)
