"""The SQL of service_credentials: one row per calling service, its secret sealed."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from service.auth.secretbox import SecretBox

SECRET_SQL = """SELECT secret_encrypted FROM service_credentials
    WHERE service_id = $1 AND revoked_at IS NULL"""  # noqa: S105 - a query, not a password
ACTIVE_IDS_SQL = "SELECT service_id FROM service_credentials WHERE revoked_at IS NULL"


@dataclass(frozen=True)
class Credential:
    service_id: str
    created_at: datetime
    revoked_at: datetime | None


async def add(conn: asyncpg.Connection, box: SecretBox, service_id: str) -> str:
    """Create (or re-activate with a new secret) a credential; return the secret."""
    secret = secrets.token_urlsafe(32)
    await conn.execute(
        """INSERT INTO service_credentials (service_id, secret_encrypted) VALUES ($1, $2)
           ON CONFLICT (service_id) DO UPDATE
           SET secret_encrypted = EXCLUDED.secret_encrypted,
               created_at = now(), revoked_at = NULL""",
        service_id,
        box.seal(service_id, secret),
    )
    return secret


async def list_all(conn: asyncpg.Connection) -> list[Credential]:
    rows = await conn.fetch(
        "SELECT service_id, created_at, revoked_at FROM service_credentials ORDER BY service_id"
    )
    return [Credential(r["service_id"], r["created_at"], r["revoked_at"]) for r in rows]


async def revoke(conn: asyncpg.Connection, service_id: str) -> bool:
    status = await conn.execute(
        "UPDATE service_credentials SET revoked_at = now()"
        " WHERE service_id = $1 AND revoked_at IS NULL",
        service_id,
    )
    return status.endswith(" 1")
