"""Which customers a relay may publish: lanes held as PostgreSQL advisory locks.

Every outbox row carries a lane (a hash of its customer id). A relay publishes a lane
only while it holds that lane's advisory lock on its own connection, so two relays never
publish one customer's events at the same time, and a relay whose connection dies
releases its lanes with it. Every live relay also holds MEMBER_LOCK shared: the number of
holders is the head count, and each relay aims at its share of the lanes."""

from __future__ import annotations

import math
import random
import time

import asyncpg

from service.domain.customer import LANES

LANE_LOCK = 2_019_781_732  # advisory lock class of the lanes ("xcld")
MEMBER_LOCK = LANE_LOCK + 1  # every live relay holds this one shared: the head count

_COUNT_MEMBERS_SQL = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND granted AND classid = $1 AND objid = 0 AND objsubid = 2
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


class Lanes:
    """The lanes held on one connection. A new connection starts with none."""

    def __init__(self, conn: asyncpg.Connection, rebalance_interval: float) -> None:
        self.conn = conn
        self.held: set[int] = set()
        self._interval = rebalance_interval
        self._next = 0.0

    @classmethod
    async def join(cls, conn: asyncpg.Connection, rebalance_interval: float) -> Lanes:
        await conn.execute("SELECT pg_advisory_lock_shared($1, 0)", MEMBER_LOCK)
        return cls(conn, rebalance_interval)

    def due(self) -> bool:
        return time.monotonic() >= self._next

    async def rebalance(self) -> None:
        """Hold about LANES / (live relays) lanes: give extras back, take free ones.
        Call only with nothing in flight: a lane must not move mid-batch."""
        if not self.due():
            return
        self._next = time.monotonic() + self._interval
        members = await self.conn.fetchval(_COUNT_MEMBERS_SQL, MEMBER_LOCK)
        target = math.ceil(LANES / max(1, members))
        for lane in sorted(self.held)[target:]:
            await self.conn.execute("SELECT pg_advisory_unlock($1, $2)", LANE_LOCK, lane)
            self.held.discard(lane)
        if len(self.held) < target:
            free = [lane for lane in range(LANES) if lane not in self.held]
            random.shuffle(free)  # relays starting together do not all race for lane 0
            for lane in free:
                if await self.conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LANE_LOCK, lane):
                    self.held.add(lane)
                    if len(self.held) >= target:
                        break


# What /readyz reports of the relays: live ones (MEMBER_LOCK holders) and the lanes held,
# from PostgreSQL's lock table, so relays in any process or on any host are counted.
RELAYS_SQL = f"""
SELECT count(*) FILTER (WHERE classid = {MEMBER_LOCK} AND objid = 0) AS live,
       count(*) FILTER (WHERE classid = {LANE_LOCK}) AS lanes_held
FROM pg_locks
WHERE locktype = 'advisory' AND granted AND objsubid = 2
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
