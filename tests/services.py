"""Where the tests find PostgreSQL and Kafka.

`XCLOUD_TEST_SERVICES` chooses, and the session header says which was used:

- `env`: TEST_DATABASE_URL (or DATABASE_URL) and KAFKA_BOOTSTRAP_SERVERS, the way
  compose-based runs plug in;
- `testcontainers`: containers started through a Docker engine;
- `local`: the local processes of scripts/services.sh (started here when needed).

Unset, it is `env` when both variables are set, else `local`. Docker is never picked
just because an engine happens to answer: a suite must not change what it runs against
because someone started dockerd for something else.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

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


_containers: list = []


def _from_testcontainers() -> Services:
    """PostgreSQL and Kafka in containers started through the Docker engine, from the images
    named by XCLOUD_POSTGRES_IMAGE and XCLOUD_KAFKA_IMAGE (default: the official ones; `make
    testcontainers-test` puts local stand-ins there when Docker Hub is out of reach). Both
    are published on 127.0.0.1 at ports the kernel picks (32768-60999)."""
    import docker
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    try:  # testcontainers >= 4.10 moved it; the old path warns
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:
        from testcontainers.postgres import PostgresContainer

    from tests.helpers import free_port

    pg_image = os.environ.get("XCLOUD_POSTGRES_IMAGE") or "postgres:15"
    kafka_image = os.environ.get("XCLOUD_KAFKA_IMAGE") or "apache/kafka:3.9.1"
    pg = PostgresContainer(pg_image, driver=None)
    # Loopback only: testcontainers' with_bind_ports takes no address, docker-py's ports do.
    pg.ports["5432"] = ("127.0.0.1", free_port())
    _containers.append(pg.start())
    # Not testcontainers' KafkaContainer: that one drives Confluent's image scripts. This is
    # the apache/kafka image's own KAFKA_* interface, with the host's port advertised.
    port = free_port()
    kafka = DockerContainer(kafka_image)
    kafka.ports["9092"] = ("127.0.0.1", port)
    for name, value in {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": "HOST://:9092,PLAINTEXT://:19092,CONTROLLER://:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"HOST://127.0.0.1:{port},PLAINTEXT://localhost:19092",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "PLAINTEXT",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": (
            "HOST:PLAINTEXT,PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
        ),
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_NUM_PARTITIONS": "3",
    }.items():
        kafka.with_env(name, value)
    kafka.waiting_for(LogMessageWaitStrategy("Kafka Server started").with_startup_timeout(120))
    _containers.append(kafka.start())
    engine = docker.from_env().version()["Version"]
    return Services(
        pg.get_connection_url(host="127.0.0.1"),
        f"127.0.0.1:{port}",
        f"testcontainers (Docker {engine}; images {pg_image}, {kafka_image})",
    )


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


def describe() -> str:
    """Which services `resolve()` would use, without starting any (for the session header)."""
    choice = os.environ.get("XCLOUD_TEST_SERVICES", "")
    if choice == "testcontainers":
        return "testcontainers"
    if choice in ("", "env") and (found := _from_env()) is not None:
        dsn = redact(found.database_url)
        return f"environment variables: postgres {dsn}, kafka {found.kafka_bootstrap}"
    if choice == "env":
        return "environment variables (missing: DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS)"
    return "local processes of scripts/services.sh"


def redact(dsn: str) -> str:
    head, sep, tail = dsn.rpartition("@")
    return f"postgresql://***@{tail}" if sep and ":" in head.split("//", 1)[-1] else dsn


def resolve() -> Services:
    choice = os.environ.get("XCLOUD_TEST_SERVICES", "")
    if choice == "testcontainers":
        return _from_testcontainers()
    if choice == "local":
        return _from_local_processes()
    found = _from_env()
    if choice == "env" and found is None:
        raise RuntimeError("XCLOUD_TEST_SERVICES=env needs DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS")
    if choice not in ("", "env"):
        raise RuntimeError(f"XCLOUD_TEST_SERVICES must be env, testcontainers or local: {choice!r}")
    return found or _from_local_processes()


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
    from service.auth.secretbox import SecretBox
    from service.db import credentials, migrate

    name = urlsplit(urls["db"]).path.lstrip("/")  # a multi-host URL may carry a query
    await _admin(
        urls["base"], f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"
    )
    await migrate.apply(urls["db"])
    import asyncpg

    conn = await asyncpg.connect(urls["db"])
    try:
        return await credentials.add(conn, SecretBox(secret_key), service_id)
    finally:
        await conn.close()
