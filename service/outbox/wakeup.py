"""Waking relays without making writers wait.

A NOTIFY inside the write transaction serializes every writer's commit on PostgreSQL's
global notification lock (issue 16). Instead each API process, after its commits, sends
at most one NOTIFY every `interval` seconds, on a connection of its own with
synchronous_commit off: the wake-up is coalesced, never on a request's path, and a
failure of it fails no request (relays also poll; see docs/relay.md)."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

log = logging.getLogger("xcloud.wakeup")

NOTIFY_CHANNEL = "xcloud_outbox"


class Waker:
    def __init__(self, dsn: str, *, interval: float = 0.005) -> None:
        self._dsn = dsn
        self._interval = interval
        self._pending = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self.sent = 0  # NOTIFYs sent; read by tests

    def poke(self) -> None:
        """A write committed: wake the relays soon. Cheap and never raises."""
        self._pending.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Bounded: a wake-up in flight must never hold up a worker's shutdown."""
        if self._task is not None:
            self._task.cancel()
            if self._conn is not None:
                self._conn.terminate()  # nothing waits on a socket that no longer exists
            await asyncio.wait({self._task}, timeout=2)

    async def _run(self) -> None:
        failing = False
        try:
            while True:
                await self._pending.wait()
                try:
                    if self._conn is None or self._conn.is_closed():
                        self._conn = await asyncpg.connect(
                            self._dsn,
                            timeout=5,
                            command_timeout=5,
                            server_settings={"synchronous_commit": "off"},
                        )
                    self._pending.clear()  # pokes from here on ask for the next NOTIFY
                    await self._conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
                    self.sent += 1
                    if failing:
                        log.info("relay wake-ups sent again")
                        failing = False
                except Exception as exc:  # relays poll anyway: log once, retry later
                    if not failing:
                        log.warning(
                            "cannot wake the relays (%s); they will poll", type(exc).__name__
                        )
                        failing = True
                    if self._conn is not None:
                        self._conn.terminate()
                        self._conn = None
                    await asyncio.sleep(1.0)
                    continue
                await asyncio.sleep(self._interval)  # coalesce: at most one per interval
        finally:
            if self._conn is not None:
                self._conn.terminate()
