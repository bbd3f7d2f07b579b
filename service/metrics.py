"""Prometheus metrics (contract section 10).

With several worker processes (`xcloud serve --workers N`), PROMETHEUS_MULTIPROC_DIR is
set by the supervisor before any worker starts, and prometheus-client's multiprocess mode
adds the workers' values up at scrape time. Outbox figures are read from PostgreSQL, so
they are right whichever process answers and whichever runs the relay; a background task
reads them (every 5 s by default), so a scrape costs no database query and scrapers,
however many, add no load on the database (contract section 10).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import asyncpg
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

CONTENT_TYPE = CONTENT_TYPE_LATEST

REQUESTS = Counter(
    "xcloud_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
LATENCY = Histogram(
    "xcloud_http_request_duration_seconds",
    "Time from request to answer",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PUBLISHED = Counter("xcloud_relay_published_total", "Outbox events acknowledged by Kafka")
PUBLISH_FAILURES = Counter(
    "xcloud_relay_publish_failures_total", "Relay batches that failed to publish (retried)"
)
DEAD_LETTERED = Counter(
    "xcloud_relay_dead_lettered_total", "Outbox rows moved to the dead-letter state"
)
# Contract sections 12 and 13. Labels are route templates and fixed words: never a key.
IDEMPOTENT_REPLAYS = Counter(
    "xcloud_idempotent_replays_total", "Stored answers replayed for an Idempotency-Key", ["route"]
)
IDEMPOTENCY_CONFLICTS = Counter(
    "xcloud_idempotency_conflicts_total",
    "Idempotency-Key requests refused: in_use (409) or reused for another request (422)",
    ["route", "reason"],
)
API_KEY_VERIFICATIONS = Counter(
    "xcloud_api_key_verifications_total",
    "API key verifications by outcome: found, unknown (or rotated out), malformed",
    ["outcome"],
)
POOL = Gauge(
    "xcloud_db_pool_connections",
    "Database pool connections by state",
    ["state"],
    multiprocess_mode="livesum",
)

_OUTBOX_SQL = """
SELECT
  (SELECT count(*) FROM outbox WHERE published_at IS NULL AND dead_lettered_at IS NULL)
      AS pending,
  (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM outbox
   WHERE published_at IS NULL AND dead_lettered_at IS NULL) AS oldest_age,
  (SELECT count(*) FROM outbox WHERE dead_lettered_at IS NOT NULL) AS dead_lettered,
  (SELECT count(*) FROM pg_locks
   WHERE locktype = 'advisory' AND granted AND classid = $1 AND objsubid = 2
     AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))
      AS lanes_held
"""


class DatabaseGauges:
    """The outbox figures, as last read from the database by `refresh`."""

    def __init__(self) -> None:
        self._row: asyncpg.Record | None = None
        self.registry = CollectorRegistry()
        self.registry.register(self)

    async def refresh(self, pool: asyncpg.Pool, lane_lock: int) -> None:
        """Read them again; when the database does not answer within 2 s they are left
        out of the scrapes until it does, rather than shown stale."""
        try:
            self._row = await asyncio.wait_for(pool.fetchrow(_OUTBOX_SQL, lane_lock), 2.0)
        except Exception:  # whatever the failure, the scrape serves what this process knows
            self._row = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        row = self._row
        if row is None:
            return
        yield GaugeMetricFamily(
            "xcloud_outbox_pending_rows", "Outbox rows not yet published", value=row["pending"]
        )
        yield GaugeMetricFamily(
            "xcloud_outbox_oldest_pending_age_seconds",
            "Age of the oldest unpublished outbox row (0 when none)",
            value=float(row["oldest_age"]),
        )
        yield GaugeMetricFamily(
            "xcloud_outbox_dead_lettered_rows",
            "Outbox rows in the dead-letter state",
            value=row["dead_lettered"],
        )
        # From PostgreSQL's lock table, so relays running anywhere (in `serve` or alone
        # as `xcloud relay`) are counted.
        yield GaugeMetricFamily(
            "xcloud_relay_lanes_held",
            "Outbox lanes held by live relays (of 32)",
            value=row["lanes_held"],
        )


def record_pool(pool: asyncpg.Pool) -> None:
    size, idle = pool.get_size(), pool.get_idle_size()
    POOL.labels("in_use").set(size - idle)
    POOL.labels("idle").set(idle)
    POOL.labels("max").set(pool.get_max_size())


def render(pool: asyncpg.Pool, gauges: DatabaseGauges) -> bytes:
    """The metrics text, from memory only."""
    record_pool(pool)
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        processes = CollectorRegistry()
        MultiProcessCollector(processes)
    else:
        processes = REGISTRY
    # The text format is a list of metric families: two registries' output concatenate.
    return generate_latest(processes) + generate_latest(gauges.registry)
