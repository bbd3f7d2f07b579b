"""Settings, read from the environment and checked once, at start (contract section 11).

Each setting is written once, as a field of Settings (or Limits) whose metadata names its
variable and how the variable's text is checked; load() walks those fields in order, so a
setting's name, default and bounds live in one line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from dataclasses import Field as DataclassField
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(Exception):
    """A missing or bad variable; the message names it and never echoes a secret."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


@dataclass(frozen=True)
class Var:
    """How one field is read: its variable, and `parse`, which turns the variable's text
    (never empty: unset or empty means the field's default) into the value or raises
    ValueError with the problem. `required` is the problem when the variable is unset."""

    env: str
    parse: Callable[[str], object]
    required: str | None = None
    only_with_kafka: bool = False  # required only by the commands that talk to Kafka
    unlike: str | None = None  # a field read earlier that the value must differ from


def _setting(var: Var, default: T) -> T:
    result: T = field(default=default, metadata={"var": var})
    return result


def _required(var: Var, *, secret: bool = False) -> str:
    result: str = field(metadata={"var": var}, repr=not secret)
    return result


def _whole(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"must be a whole number, got {raw!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _integer(env: str, default: int, low: int, high: int) -> int:
    return _setting(Var(env, _whole(low, high)), default)


def _matching(pattern: str, problem: str) -> Callable[[str], str]:
    compiled = re.compile(pattern)

    def parse(raw: str) -> str:
        if not compiled.match(raw):
            raise ValueError(problem)
        return raw

    return parse


def _database_url(raw: str) -> str:
    if not raw.startswith(("postgresql://", "postgres://")):
        raise ValueError("must start with postgresql://")
    return raw


_TOO_SHORT = "is required and must be at least 32 characters"


def _secret_key(raw: str) -> str:
    if len(raw) < 32:
        raise ValueError(_TOO_SHORT)  # never the value, not even in part
    return raw


_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$")


def _bootstrap_servers(raw: str) -> str:
    if not all(_HOST_PORT.match(p.strip()) for p in raw.split(",")):
        raise ValueError("must be host:port[,host:port]")
    return raw


@dataclass(frozen=True)
class Limits:
    max_devices: int = _integer("XCLOUD_LIMIT_MAX_DEVICES", 100, 0, 10**9)
    max_users: int = _integer("XCLOUD_LIMIT_MAX_USERS", 50, 0, 10**9)
    max_data_points: int = _integer("XCLOUD_LIMIT_MAX_DATA_POINTS", 1_000_000, 0, 10**12)

    def as_json(self) -> dict[str, int]:
        return {
            "maxDevices": self.max_devices,
            "maxUsers": self.max_users,
            "maxDataPoints": self.max_data_points,
        }


@dataclass(frozen=True)
class Settings:
    # The fields are read in this order: an error names the first bad variable.
    database_url: str = _required(
        Var("DATABASE_URL", _database_url, "is required (postgresql://user@host:port/db)")
    )
    secret_key: str = _required(Var("XCLOUD_SECRET_KEY", _secret_key, _TOO_SHORT), secret=True)
    kafka_bootstrap_servers: str | None = _setting(
        Var(
            "KAFKA_BOOTSTRAP_SERVERS",
            _bootstrap_servers,
            "is required (host:port[,host:port])",
            only_with_kafka=True,
        ),
        None,
    )
    topic: str = _setting(
        Var(
            "XCLOUD_TOPIC", _matching(r"^[A-Za-z0-9._-]{1,249}$", "must be 1-249 of [A-Za-z0-9._-]")
        ),
        "xcloud.customers",
    )
    host: str = _setting(Var("XCLOUD_HOST", str), "0.0.0.0")  # noqa: S104 - listen address
    port: int = _integer("XCLOUD_PORT", 8080, 1, 65535)
    # When set, /metrics, /healthz and /readyz are served on this port instead of `port`.
    metrics_port: int | None = _setting(
        Var("XCLOUD_METRICS_PORT", _whole(1, 65535), unlike="port"), None
    )
    limits: Limits = Limits()  # read field by field, as Limits says
    db_pool_size: int = _integer("XCLOUD_DB_POOL_SIZE", 20, 1, 500)
    topic_partitions: int = _integer("XCLOUD_TOPIC_PARTITIONS", 6, 1, 1000)
    topic_replication_factor: int = _integer("XCLOUD_TOPIC_REPLICATION_FACTOR", 1, 1, 32)
    relay_batch_size: int = _integer("XCLOUD_RELAY_BATCH_SIZE", 500, 1, 10_000)
    body_timeout_seconds: int = _integer("XCLOUD_BODY_TIMEOUT_SECONDS", 10, 1, 600)
    outbox_retention_seconds: int = _integer("XCLOUD_OUTBOX_RETENTION_SECONDS", 0, 0, 10**9)
    metrics_refresh_seconds: float = 5.0  # contract 10: at most every 5 s (no variable)
    idempotency_ttl_seconds: int = _integer("XCLOUD_IDEMPOTENCY_TTL_SECONDS", 86400, 1, 10**8)
    # At most one relay wake-up per API process per interval; 0 turns wake-ups off.
    wakeup_interval_ms: int = _integer("XCLOUD_WAKEUP_INTERVAL_MS", 5, 0, 10_000)
    relay_poll_max_ms: int = _integer("XCLOUD_RELAY_POLL_MAX_MS", 2000, 5, 600_000)


# The two dataclasses read from the environment (Limits nested in Settings).
D = TypeVar("D", Settings, Limits)


def _read(cls: type[D], env: Mapping[str, str], need_kafka: bool) -> D:
    values: dict[str, Any] = {}  # one value per field, of the field's own type
    for f in fields(cls):
        var = _var(f)
        if var is None:
            if f.type in ("Limits", Limits):
                values[f.name] = _read(Limits, env, need_kafka)
            continue
        raw = env.get(var.env, "")
        if raw:
            try:
                values[f.name] = var.parse(raw)
            except ValueError as exc:
                raise ConfigError(var.env, str(exc)) from None
            if var.unlike is not None and values[f.name] == _value(cls, values, var.unlike):
                raise ConfigError(var.env, f"must differ from {_env(cls, var.unlike)}")
        elif var.required is not None and (need_kafka or not var.only_with_kafka):
            raise ConfigError(var.env, var.required)
        elif f.default is MISSING:  # required fields have a problem to tell
            raise AssertionError(f"{f.name} has neither a default nor a `required` problem")
    return cls(**values)


def _var(f: DataclassField[object]) -> Var | None:
    var: Var | None = f.metadata.get("var")
    return var


def _field(cls: type[Settings] | type[Limits], name: str) -> DataclassField[object]:
    return next(f for f in fields(cls) if f.name == name)


def _value(cls: type[Settings] | type[Limits], values: dict[str, object], name: str) -> object:
    return values[name] if name in values else _field(cls, name).default


def _env(cls: type[Settings] | type[Limits], name: str) -> str:
    var = _var(_field(cls, name))
    assert var is not None
    return var.env


def load(env: Mapping[str, str] | None = None, *, need_kafka: bool = False) -> Settings:
    """Read every variable; raise ConfigError naming the first missing or bad one."""
    return _read(Settings, os.environ if env is None else env, need_kafka)


def variables() -> list[tuple[str, str]]:
    """(variable, its default) of every setting, in order: `xcloud --help` lists them."""
    out: list[tuple[str, str]] = []
    for cls in (Settings, Limits):
        for f in fields(cls):
            var = _var(f)
            if var is None:
                continue
            if var.only_with_kafka:
                default = "required by serve and relay"
            elif var.required is not None:
                default = "required"
            else:
                default = "unset" if f.default is None else str(f.default)
            out.append((var.env, default))
    return out
