"""Settings, read from the environment and checked once, at start (contract section 11)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field


class ConfigError(Exception):
    """A missing or bad variable; the message names it and never echoes a secret."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


@dataclass(frozen=True)
class Limits:
    max_devices: int = 100
    max_users: int = 50
    max_data_points: int = 1_000_000

    def as_json(self) -> dict[str, int]:
        return {
            "maxDevices": self.max_devices,
            "maxUsers": self.max_users,
            "maxDataPoints": self.max_data_points,
        }


@dataclass(frozen=True)
class Settings:
    database_url: str
    secret_key: str = field(repr=False)
    kafka_bootstrap_servers: str | None = None
    topic: str = "xcloud.customers"
    host: str = "0.0.0.0"  # noqa: S104 - a server's listen address, overridable
    port: int = 8080
    # When set, /metrics, /healthz and /readyz are served on this port instead of `port`.
    metrics_port: int | None = None
    limits: Limits = Limits()
    db_pool_size: int = 20
    topic_partitions: int = 6
    topic_replication_factor: int = 1
    relay_batch_size: int = 500
    body_timeout_seconds: int = 10
    outbox_retention_seconds: int = 0
    metrics_refresh_seconds: float = 5.0  # contract 10: at most every 5 s
    idempotency_ttl_seconds: int = 86400
    wakeup_interval_ms: int = 5  # at most one relay wake-up per API process per interval
    relay_poll_max_ms: int = 2000  # the relay's idle poll grows to this


_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(name, f"must be between {low} and {high}, got {value}")
    return value


def load(env: Mapping[str, str] | None = None, *, need_kafka: bool = False) -> Settings:
    """Read every variable; raise ConfigError naming the first missing or bad one."""
    env = os.environ if env is None else env

    database_url = env.get("DATABASE_URL", "")
    if not database_url:
        raise ConfigError("DATABASE_URL", "is required (postgresql://user@host:port/db)")
    if not database_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("DATABASE_URL", "must start with postgresql://")

    secret_key = env.get("XCLOUD_SECRET_KEY", "")
    if len(secret_key) < 32:
        raise ConfigError("XCLOUD_SECRET_KEY", "is required and must be at least 32 characters")

    kafka = env.get("KAFKA_BOOTSTRAP_SERVERS") or None
    if kafka is None and need_kafka:
        raise ConfigError("KAFKA_BOOTSTRAP_SERVERS", "is required (host:port[,host:port])")
    if kafka is not None and not all(_HOST_PORT.match(p.strip()) for p in kafka.split(",")):
        raise ConfigError("KAFKA_BOOTSTRAP_SERVERS", "must be host:port[,host:port]")

    topic = env.get("XCLOUD_TOPIC") or "xcloud.customers"
    if not _TOPIC.match(topic):
        raise ConfigError("XCLOUD_TOPIC", "must be 1-249 of [A-Za-z0-9._-]")

    port = _int(env, "XCLOUD_PORT", 8080, 1, 65535)
    metrics_port = _int(env, "XCLOUD_METRICS_PORT", 0, 1, 65535) or None
    if metrics_port == port:
        raise ConfigError("XCLOUD_METRICS_PORT", "must differ from XCLOUD_PORT")

    return Settings(
        database_url=database_url,
        secret_key=secret_key,
        kafka_bootstrap_servers=kafka,
        topic=topic,
        host=env.get("XCLOUD_HOST") or "0.0.0.0",  # noqa: S104
        port=port,
        metrics_port=metrics_port,
        limits=Limits(
            max_devices=_int(env, "XCLOUD_LIMIT_MAX_DEVICES", 100, 0, 10**9),
            max_users=_int(env, "XCLOUD_LIMIT_MAX_USERS", 50, 0, 10**9),
            max_data_points=_int(env, "XCLOUD_LIMIT_MAX_DATA_POINTS", 1_000_000, 0, 10**12),
        ),
        db_pool_size=_int(env, "XCLOUD_DB_POOL_SIZE", 20, 1, 500),
        topic_partitions=_int(env, "XCLOUD_TOPIC_PARTITIONS", 6, 1, 1000),
        topic_replication_factor=_int(env, "XCLOUD_TOPIC_REPLICATION_FACTOR", 1, 1, 32),
        relay_batch_size=_int(env, "XCLOUD_RELAY_BATCH_SIZE", 500, 1, 10_000),
        body_timeout_seconds=_int(env, "XCLOUD_BODY_TIMEOUT_SECONDS", 10, 1, 600),
        outbox_retention_seconds=_int(env, "XCLOUD_OUTBOX_RETENTION_SECONDS", 0, 0, 10**9),
        idempotency_ttl_seconds=_int(env, "XCLOUD_IDEMPOTENCY_TTL_SECONDS", 86400, 1, 10**8),
        wakeup_interval_ms=_int(env, "XCLOUD_WAKEUP_INTERVAL_MS", 5, 0, 10_000),
        relay_poll_max_ms=_int(env, "XCLOUD_RELAY_POLL_MAX_MS", 2000, 5, 600_000),
    )
