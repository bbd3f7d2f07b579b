"""How the package finds its migrations, and what a tools command says without [tools]."""

from __future__ import annotations

import importlib.util

import pytest

from service.db import migrate
from service.tools import customer_cli


def test_the_migrations_are_found_through_the_package():
    versions = [version for version, _ in migrate.migrations()]
    assert versions[:2] == ["001_customers_and_outbox", "002_customer_read_indexes"]
    assert versions == sorted(versions)
    # Through importlib.resources, i.e. inside the package, wherever that is installed.
    assert str(migrate.SQL_DIR).endswith("service/sql")


def test_every_numbered_file_is_picked_up_in_order_and_nothing_else(tmp_path):
    for name in ("010_later.sql", "003_keys.sql", "004_relay.sql", "notes.sql", "005_x.txt"):
        (tmp_path / name).write_text(f"-- {name}\n")
    assert [v for v, _ in migrate.migrations(tmp_path)] == ["003_keys", "004_relay", "010_later"]


def test_no_migration_files_is_an_error_not_up_to_date(tmp_path):
    with pytest.raises(migrate.NoMigrations, match="no migration files"):
        migrate.migrations(tmp_path)
    with pytest.raises(migrate.NoMigrations):
        migrate.migrations(tmp_path / "absent")


def test_a_tools_command_without_the_extra_names_the_install_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "faker" else real(name, *a)
    )
    with pytest.raises(customer_cli.Exit) as caught:
        customer_cli.cmd_fake(None)
    assert caught.value.code == 2
    assert "pip install 'xcloud-registry[tools]'" in caught.value.message
