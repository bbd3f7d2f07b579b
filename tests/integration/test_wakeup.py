"""The API's relay wake-ups (service/outbox/wakeup.py) against a real PostgreSQL: sent
after commits, coalesced, and never able to fail a request."""

from __future__ import annotations

import asyncio

import asyncpg

from service.outbox.wakeup import NOTIFY_CHANNEL, Waker


async def test_many_pokes_make_few_notifications(settings, clean_db):
    received: list[float] = []
    listener = await asyncpg.connect(settings.database_url)
    await listener.add_listener(NOTIFY_CHANNEL, lambda *_: received.append(1.0))
    waker = Waker(settings.database_url, interval=0.5)
    waker.start()
    try:
        for _ in range(200):  # 200 commits within about 0.2 s
            waker.poke()
            await asyncio.sleep(0.001)
        await asyncio.sleep(1.0)
    finally:
        await waker.stop()
        await listener.close()
    # At most one NOTIFY per 0.5 s interval: a burst of 200 commits wakes relays once or twice.
    assert 1 <= len(received) <= 2
    assert waker.sent == len(received)


async def test_a_database_it_cannot_reach_fails_nothing(caplog):
    waker = Waker("postgresql://nobody@127.0.0.1:1/none", interval=0.005)
    waker.start()
    try:
        for _ in range(50):
            waker.poke()  # never raises, never blocks
        await asyncio.sleep(0.5)
        assert waker.sent == 0
        assert waker._task is not None and not waker._task.done()  # still trying
    finally:
        await waker.stop()
    assert sum("cannot wake the relays" in r.getMessage() for r in caplog.records) == 1
