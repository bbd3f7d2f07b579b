"""PostgreSQL's own limit for a registration, measured by pgbench in the same run.

"The limit" is pgbench at its best concurrency on the smallest durable transaction that
writes what a registration writes: the nonce, the customer row and its outbox row, with
the same tables and indexes (no trigger: migration 004 removed it), as one statement,
so one commit and one WAL flush. It carries none of the service's checks (no ON CONFLICT,
no EXISTS), so it is the ceiling the service's own SQL and the service are held to."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from service.config import Limits
from service.db import nonces
from service.domain import customer, events
from tests.helpers import DOC_EXAMPLE


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def minimal_script(service_id: str) -> str:
    """One statement: nonce, customer, its two API key rows and the outbox row, with the
    service's values."""
    now = customer.utc_now()
    data = customer.mutable_fields(DOC_EXAMPLE, Limits().as_json())
    representation = customer.representation(DOC_EXAMPLE["customerId"], "ACTIVE", data, now, now)
    _, payload = events.envelope(events.REGISTERED, representation, now)
    # ": " rather than ":" in the JSON: pgbench reads ":name" as one of its variables.
    sql = f"""
    WITH k AS (SELECT 'FST-12345678-' || replace(gen_random_uuid()::text, '-', '') AS cid),
    nonce AS (
        INSERT INTO auth_nonces (service_id, nonce, expires_at)
        VALUES ({_literal(service_id)}, gen_random_uuid()::text,
                now() + make_interval(secs => {nonces.NONCE_TTL_SECONDS}))),
    customer AS (
        INSERT INTO customers (customer_id, status, data, created_at, updated_at)
        SELECT cid, 'ACTIVE', {_literal(json.dumps(data))}::jsonb, now(), now() FROM k),
    api_keys AS (
        INSERT INTO api_keys (key_hash, customer_id, slot, created_at)
        SELECT sha256(convert_to(gen_random_uuid()::text, 'UTF8')), cid, slot, now()
        FROM k, (VALUES ('primary'), ('secondary')) AS slots (slot))
    INSERT INTO outbox (event_id, event_type, customer_id, lane, payload)
    SELECT gen_random_uuid(), 'CustomerRegistered', cid, (random() * 31)::int,
           convert_to({_literal(json.dumps(json.loads(payload)))}, 'UTF8')
    FROM k
    """
    return " ".join(sql.split()) + ";\n"


def run_pgbench(
    db_url: str, script: Path, concurrency: int, seconds: float, prefix: tuple[str, ...] = ()
) -> dict[str, Any]:
    host, port = re.search(r"@([^:/]+):(\d+)/", db_url).groups()
    dbname = db_url.rsplit("/", 1)[1]
    out = subprocess.run(
        [
            *prefix,
            *("pgbench", "-n", "-M", "prepared", "-h", host, "-p", port, "-U", "postgres"),
            *("-c", str(concurrency), "-j", "2", "-T", str(int(seconds)), "-f", str(script)),
            dbname,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {
        "concurrency": concurrency,
        "tps": float(re.search(r"tps = ([\d.]+)", out)[1]),
        "latency_avg_ms": float(re.search(r"latency average = ([\d.]+) ms", out)[1]),
        "failed": int(re.search(r"number of failed transactions: (\d+)", out)[1]),
    }


def measure(
    db_url: str,
    raw_dir: Path,
    service_id: str,
    levels: list[int],
    seconds: float,
    prefix: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """pgbench on the minimal transaction at each concurrency; the best is the limit."""
    script = raw_dir / "minimal.sql"
    script.write_text(minimal_script(service_id))
    return [run_pgbench(db_url, script, c, seconds, prefix) for c in levels]
