"""Settings from the environment (contract section 11): defaults, checks, no secret shown."""

from __future__ import annotations

import pytest

from service import config

GOOD = {"DATABASE_URL": "postgresql://u@h:5432/db", "XCLOUD_SECRET_KEY": "k" * 32}


def test_defaults():
    s = config.load(GOOD)
    assert (s.topic, s.host, s.port) == ("xcloud.customers", "0.0.0.0", 8080)
    assert s.limits.as_json() == {"maxDevices": 100, "maxUsers": 50, "maxDataPoints": 1000000}


def test_secret_key_never_shows_in_repr_or_errors():
    key = "super-secret-" + "x" * 40
    assert key not in repr(config.load({**GOOD, "XCLOUD_SECRET_KEY": key}))
    with pytest.raises(config.ConfigError) as err:
        config.load({**GOOD, "XCLOUD_SECRET_KEY": "tiny"})
    assert "tiny" not in str(err.value) and err.value.variable == "XCLOUD_SECRET_KEY"


def test_kafka_required_only_when_asked():
    config.load(GOOD)
    with pytest.raises(config.ConfigError) as err:
        config.load(GOOD, need_kafka=True)
    assert err.value.variable == "KAFKA_BOOTSTRAP_SERVERS"
    with pytest.raises(config.ConfigError):
        config.load({**GOOD, "KAFKA_BOOTSTRAP_SERVERS": "no-port"})


def test_metrics_port_is_optional_and_checked():
    assert config.load(GOOD).metrics_port is None
    assert config.load({**GOOD, "XCLOUD_METRICS_PORT": "9100"}).metrics_port == 9100
    for bad in ("0", "70000", "metrics", "8080"):  # 8080: the API's own port
        with pytest.raises(config.ConfigError) as err:
            config.load({**GOOD, "XCLOUD_METRICS_PORT": bad})
        assert err.value.variable == "XCLOUD_METRICS_PORT"
