"""Where the tests find PostgreSQL and Kafka, in this order:

1. environment variables: TEST_DATABASE_URL (or DATABASE_URL) and KAFKA_BOOTSTRAP_SERVERS,
   the way compose-based runs and CI plug in;
2. testcontainers, when a Docker engine answers;
3. the local processes of scripts/services.sh (started here when needed).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Services:
    database_url: str
    kafka_bootstrap: str
    source: str


def _from_env() -> Services | None:
    dsn = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if dsn and kafka:
        return Services(dsn, kafka, "environment variables")
    return None


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


_containers: list = []


def _from_testcontainers() -> Services:
    # Not exercised on the development machines (no Docker engine there); see README.
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    pg = PostgresContainer("postgres:15", driver=None).start()
    kafka = KafkaContainer("apache/kafka:3.9.1").with_kraft().start()
    _containers.extend([pg, kafka])
    return Services(pg.get_connection_url(), kafka.get_bootstrap_server(), "testcontainers")


_own_database: list[str] = []


def _from_local_processes() -> Services:
    # A database of this session's own: two suites running at once (two terminals, two
    # developers on one machine) must not truncate each other's tables.
    urls = local_services(f"xcloud_test_{os.getpid()}")
    name = urls["db"].rsplit("/", 1)[1]
    asyncio.run(_admin(urls["base"], f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"))
    _own_database.append(urls["db"])
    return Services(urls["db"], urls["kafka"], "local processes")


async def _admin(base: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(base + "/postgres")
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def resolve() -> Services:
    return _from_env() or (_from_testcontainers() if _docker_answers() else _from_local_processes())


def stop() -> None:
    for container in _containers:
        container.stop()
    for url in _own_database:
        base, name = url.rsplit("/", 1)
        asyncio.run(_admin(base, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def local_services(database: str) -> dict[str, str]:
    """Start the local services; their URLs, with `database` as the working database
    (for the fault harness and the benchmarks, which run outside pytest)."""
    subprocess.run(
        [str(ROOT / "scripts" / "services.sh"), "start"], check=True, capture_output=True
    )
    values = dict(
        line.split("=", 1)
        for line in (ROOT / ".cache" / "services.env").read_text().splitlines()
        if "=" in line
    )
    base = values["DATABASE_URL"].rsplit("/", 1)[0]
    return {"base": base, "db": f"{base}/{database}", "kafka": values["KAFKA_BOOTSTRAP_SERVERS"]}


async def fresh_database(urls: dict[str, str], secret_key: str, service_id: str) -> str:
    """Drop and create the working database, migrate it, add one credential; its secret."""
    from service import credentials, db

    name = urls["db"].rsplit("/", 1)[1]
    await _admin(
        urls["base"], f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"
    )
    await db.migrate(urls["db"])
    import asyncpg

    conn = await asyncpg.connect(urls["db"])
    try:
        return await credentials.add(conn, credentials.SecretBox(secret_key), service_id)
    finally:
        await conn.close()
