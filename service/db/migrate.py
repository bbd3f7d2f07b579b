"""The numbered migrations of sql/, applied in order, once each, one migrator at a time."""

from __future__ import annotations

import logging
from importlib import resources
from importlib.resources.abc import Traversable

import asyncpg

from service.db.connect import wait_for

log = logging.getLogger("xcloud.db")

# The migrations travel inside the package: a wheel carries sql/ as service/sql, and in
# the source tree service/sql is a symlink to the top-level sql/ (editable installs).
SQL_DIR: Traversable = resources.files("service") / "sql"
_MIGRATION_LOCK = 7_310_001  # advisory lock key: one migrator at a time


class NoMigrations(RuntimeError):
    """The package holds no migration files: a broken install, not an up-to-date database."""


def migrations(sql_dir: Traversable = SQL_DIR) -> list[tuple[str, str]]:
    """The numbered files of sql/ (NNN_name.sql), in order, as (version, text)."""
    found = sql_dir.iterdir() if sql_dir.is_dir() else ()
    files = sorted(
        (p for p in found if p.name.endswith(".sql") and p.name[:3].isdigit()),
        key=lambda p: p.name,
    )
    if not files:
        raise NoMigrations(f"no migration files (NNN_*.sql) in {sql_dir}")
    return [(p.name.removesuffix(".sql"), p.read_text(encoding="utf-8")) for p in files]


async def apply(dsn: str, *, attempts: int | None = None) -> list[str]:
    """Apply each migration not applied yet, each in its own transaction; return them."""
    pending = migrations()  # before connecting: a broken install fails fast
    conn: asyncpg.Connection = await wait_for(
        lambda: asyncpg.connect(dsn), "PostgreSQL", attempts=attempts
    )
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version text PRIMARY KEY,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, text in pending:
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(text)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            log.info("applied migration %s", version)
            applied_now.append(version)
    finally:
        await conn.close()  # also releases the advisory lock
    return applied_now
