from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from service import config
from service.api import httpserver
from service.api.app import create_app
from service.auth.secretbox import SecretBox
from service.db import connect, credentials, migrate
from service.tools.client import XCloudClient
from tests import services as services_mod

SECRET_KEY = "test-secret-key-" + "k" * 32


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SERVICES] = services_mod.resolve()


def pytest_unconfigure(config: pytest.Config) -> None:
    services_mod.stop()


def pytest_report_header(config: pytest.Config) -> list[str]:
    s = config.stash[_SERVICES]
    return [
        f"services from {s.source}: postgres {_redact(s.database_url)}, kafka {s.kafka_bootstrap}",
        "fault scenarios and the broker-outage test: local processes of scripts/services.sh"
        " (always, whatever the services above)",
    ]


def _redact(dsn: str) -> str:
    head, sep, tail = dsn.rpartition("@")
    return f"postgresql://***@{tail}" if sep and ":" in head.split("//", 1)[-1] else dsn


_SERVICES = pytest.StashKey[services_mod.Services]()


@pytest.fixture(scope="session")
def services(pytestconfig: pytest.Config) -> services_mod.Services:
    return pytestconfig.stash[_SERVICES]


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
