"""Session-wide hooks only. Nothing here starts PostgreSQL or Kafka: `pytest tests/unit` runs
with nothing listening. The fixtures that need the services live in
tests/integration/conftest.py and start them on first use."""

from __future__ import annotations

import pytest

from tests import services as services_mod

SERVICES_USED = pytest.StashKey[services_mod.Services]()


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        f"services (started only if an integration test needs them): {services_mod.describe()}",
        "fault scenarios and the broker-outage test: local processes of scripts/services.sh"
        " (always, whatever the services above)",
    ]


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    used = config.stash.get(SERVICES_USED, None)
    if used is not None:
        terminalreporter.write_line(
            f"services from {used.source}: postgres {services_mod.redact(used.database_url)},"
            f" kafka {used.kafka_bootstrap}"
        )
