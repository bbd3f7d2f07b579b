"""The relay's loop: fetch the oldest pending rows of the lanes it holds, hand them to the
producer in id order, settle each batch once the broker answered, and recover from any
failure without losing or reordering anything.

Two batches in the pipeline: while the broker acknowledges batch N, batch N+1 is read and
sent; N is settled (deleted or marked) as soon as it is acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
import time
from dataclasses import dataclass, field

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from service import metrics
from service.config import Settings
from service.db import connect
from service.db import outbox as outbox_table
from service.outbox import producer as kafka
from service.outbox import retention
from service.outbox.lanes import Lanes
from service.outbox.pipeline import Flight, queue, settle
from service.outbox.producer import Failure
from service.outbox.wakeup import NOTIFY_CHANNEL

log = logging.getLogger("xcloud.relay")


@dataclass(frozen=True)
class RelayConfig:
    """What the relay runs with. The first fields come from Settings (config_from), whose
    defaults are the only ones; the rest are the relay's own tuning, with no variable."""

    database_url: str
    bootstrap_servers: str
    topic: str
    partitions: int
    replication_factor: int
    batch_size: int
    retention_seconds: float  # 0: delete rows as soon as the broker acknowledged them
    # Adaptive poll, the safety net under the API's wake-ups: after a batch with rows the
    # relay looks again at once; once idle it waits idle_poll_min, doubling up to
    # poll_interval while it keeps finding nothing. A NOTIFY ends any wait.
    poll_interval: float
    idle_poll_min: float = 0.005
    rebalance_interval: float = 2.0
    retention_interval: float = 60.0
    backoff_base: float = 0.2
    backoff_cap: float = 10.0
    ack_timeout: float = 60.0  # longer than the producer's request timeout (30 s)
    linger_ms: int = 5


@dataclass
class RelayStats:
    """What the relay has done; read by /metrics and /readyz."""

    published: int = 0
    failures: int = 0
    dead_lettered: int = 0
    producers: int = 0  # producers started: 1 + the renewals after producer-state errors
    lanes: int = 0
    fetches: int = 0  # reads of pending rows
    idle_until: float = 0.0  # monotonic end of the idle wait in progress (0: not waiting)
    state: str = "starting"
    last_error: str | None = None
    changed_at: float = field(default_factory=time.time)


def config_from(settings: Settings) -> RelayConfig:
    """The relay's part of the settings (those of `xcloud relay`: Kafka is required)."""
    if settings.kafka_bootstrap_servers is None:
        raise ValueError("the relay needs KAFKA_BOOTSTRAP_SERVERS (load(need_kafka=True))")
    return RelayConfig(
        database_url=settings.database_url,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        topic=settings.topic,
        partitions=settings.topic_partitions,
        replication_factor=settings.topic_replication_factor,
        batch_size=settings.relay_batch_size,
        retention_seconds=settings.outbox_retention_seconds,
        poll_interval=settings.relay_poll_max_ms / 1000,
    )


class Backoff:
    """Capped exponential backoff with jitter, counting the attempts since the last
    success."""

    def __init__(self, base: float, cap: float) -> None:
        self.base, self.cap = base, cap
        self.attempts = 0
        self.since: float | None = None

    def next(self) -> float:
        if self.since is None:
            self.since = time.monotonic()
        delay = min(self.cap, self.base * 2**self.attempts)
        self.attempts += 1
        return delay * random.uniform(0.8, 1.0)

    def reset(self) -> tuple[int, float]:
        """(attempts, seconds) of the failure that just ended."""
        ended = (self.attempts, 0.0 if self.since is None else time.monotonic() - self.since)
        self.attempts, self.since = 0, None
        return ended


class BrokerFailed(Exception):
    """A Kafka failure, with what it asks of the relay."""

    def __init__(self, error: BaseException, failure: Failure) -> None:
        super().__init__(str(error))
        self.error, self.failure = error, failure


class Relay:
    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.stats = RelayStats()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._lanes: Lanes | None = None
        self._producer: AIOKafkaProducer | None = None
        self._backoff = Backoff(config.backoff_base, config.backoff_cap)
        self._next_cleanup = 0.0
        self._idle_wait = config.idle_poll_min

    # --- life cycle --------------------------------------------------------------

    def stop(self) -> None:
        """Finish the batch in flight, then return from run()."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        await self._first_producer()  # a configuration error raises here: the command fails
        flight: Flight | None = None
        try:
            while not self._stopping.is_set():
                try:
                    flight = await self._cycle(flight)
                except Exception as exc:  # the relay must outlive any one failure
                    # Unsettled rows stay pending and are sent again, in order.
                    if flight is not None:
                        flight.forget()
                    flight = None
                    await self._recover(exc)
            if flight is not None and self._conn is not None:
                try:
                    await self._settle(flight)  # graceful stop: finish the batch in flight
                except Exception as exc:  # stopping anyway; the rows stay pending
                    log.warning("relay stopped with its last batch unsettled: %r", exc)
        finally:
            await self._drop_db()
            if self._producer is not None:
                await kafka.close_producer(self._producer, self.config.ack_timeout)
            self._set_state("stopped")

    async def _cycle(self, flight: Flight | None) -> Flight | None:
        """One turn of the pipeline; returns the batch now in flight."""
        if self._producer is None:
            try:
                await self._start_producer()
            except (KafkaError, OSError) as exc:
                raise BrokerFailed(exc, Failure.RETRY) from exc
        if self._lanes is None:
            await self._connect_db()
        assert self._lanes is not None
        if flight is not None and (flight.refused is not None or self._lanes.due()):
            # Settle first: after a refused send nothing more goes out (later rows may be
            # the same customers'), and lanes move only with nothing in flight.
            await self._settle(flight)
            flight = None
        if flight is None:
            await self._lanes.rebalance()
            self.stats.lanes = len(self._lanes.held)
            await self._clean_up()
        rows = await self._fetch(in_flight=flight.ids if flight else [])
        following = await self._send(rows) if rows else None
        if flight is not None:
            try:
                await self._settle(flight)
            except BaseException:
                if following is not None:
                    following.forget()
                raise
        elif not rows:
            self._healthy()  # the database answered and nothing is owed to the broker
        if following is None:
            await self._idle()
        else:
            self._idle_wait = self.config.idle_poll_min
        return following

    # --- states, backoff, recovery -----------------------------------------------

    def _set_state(self, state: str, exc: BaseException | None = None) -> None:
        """One log line per change of state, not one per attempt."""
        self.stats.last_error = None if exc is None else _describe(exc)[:500]
        if state == self.stats.state:
            return
        if exc is not None:
            log.warning("relay %s (%s); retrying with backoff", state, self.stats.last_error)
        elif state != "publishing":
            log.info("relay %s", state)
        self.stats.state, self.stats.changed_at = state, time.time()

    def _healthy(self) -> None:
        """Back to publishing: only after an acknowledged batch, or an idle turn."""
        if self.stats.state == "publishing":
            return
        attempts, seconds = self._backoff.reset()
        if attempts:
            log.info(
                "relay publishing again after %d attempts in %.1f s (%s)",
                attempts,
                seconds,
                self.stats.state,
            )
        else:
            log.info("relay publishing")
        self._set_state("publishing")

    async def _recover(self, exc: Exception) -> None:
        if isinstance(exc, BrokerFailed):
            self.stats.failures += 1
            metrics.PUBLISH_FAILURES.inc()
            if exc.failure is Failure.NEW_PRODUCER:
                # Closed now, so it retries nothing more; its successor starts after the
                # backoff and sends again from the oldest unacknowledged row.
                await self._drop_producer()
            self._set_state("broker unavailable", exc.error)
        elif isinstance(exc, (*connect.UNAVAILABLE, asyncpg.PostgresConnectionError)):
            await self._drop_db()
            self._set_state("database unavailable", exc)
        else:
            log.exception("relay error; reconnecting")
            await self._drop_db()
            self._set_state("failing", exc)
        await self._pause(self._backoff.next())

    async def _pause(self, seconds: float) -> None:
        """A backoff: wake-ups (new rows) must not shorten it, only a stop may."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _idle(self) -> None:
        """Nothing to send: wait for new rows (a notification) or the adaptive poll."""
        seconds = self._idle_wait
        self._idle_wait = min(self.config.poll_interval, seconds * 2)
        self.stats.idle_until = time.monotonic() + seconds
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), seconds)
        finally:
            self.stats.idle_until = 0.0
        if self._wake.is_set():
            self._idle_wait = self.config.idle_poll_min  # woken: rows are coming
        self._wake.clear()

    # --- Kafka -------------------------------------------------------------------

    async def _first_producer(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._start_producer()
                return
            except (KafkaError, OSError) as exc:
                if not kafka.unreachable(exc):
                    raise  # a configuration mistake: waiting would not mend it
                self._set_state("waiting for Kafka", exc)
                print(
                    f"xcloud: waiting for Kafka at {self.config.bootstrap_servers}"
                    f" ({type(exc).__name__})",
                    file=sys.stderr,
                    flush=True,
                )
                await self._pause(self._backoff.next())

    async def _start_producer(self) -> None:
        cfg = self.config
        await kafka.ensure_topic(
            cfg.bootstrap_servers, cfg.topic, cfg.partitions, cfg.replication_factor
        )
        self._producer = await kafka.start_producer(cfg.bootstrap_servers, cfg.linger_ms)
        self.stats.producers += 1

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await kafka.close_producer(producer, 10)

    # --- PostgreSQL --------------------------------------------------------------

    async def _connect_db(self) -> None:
        conn = await asyncpg.connect(self.config.database_url)
        try:
            lanes = await Lanes.join(conn, self.config.rebalance_interval)
            await conn.add_listener(NOTIFY_CHANNEL, lambda *_: self._wake.set())
        except BaseException:
            conn.terminate()
            raise
        self._conn, self._lanes = conn, lanes

    async def _drop_db(self) -> None:
        conn, self._conn, self._lanes = self._conn, None, None
        self.stats.lanes = 0
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)  # releases every lock it held
            if not conn.is_closed():
                conn.terminate()

    # --- publishing --------------------------------------------------------------

    async def _fetch(self, *, in_flight: list[int]) -> list[asyncpg.Record]:
        """The oldest pending rows of the held lanes, leaving out those in flight. Not
        `id > last sent`: a smaller id can commit late, and must still go first."""
        assert self._conn is not None and self._lanes is not None
        if not self._lanes.held:
            return []
        self.stats.fetches += 1
        return await self._conn.fetch(
            outbox_table.FETCH_PENDING_SQL,
            sorted(self._lanes.held),
            in_flight,
            self.config.batch_size,
        )

    async def _send(self, rows: list[asyncpg.Record]) -> Flight:
        """Hand rows to the producer in id order; the acknowledgements come later."""
        producer, topic = self._producer, self.config.topic
        assert producer is not None
        return await queue(
            rows, lambda row: kafka.send(producer, topic, row["customer_id"], row["payload"])
        )

    async def _settle(self, flight: Flight) -> None:
        """Wait for the broker, then delete (or mark) what it acknowledged and
        dead-letter what it never will take. Raises PublishFailed on any other failure."""
        assert self._conn is not None
        futures = [f for _, f in flight.sent]
        if futures:
            await asyncio.wait(futures, timeout=self.config.ack_timeout)
        result = settle(flight, [_outcome(f) for f in futures])
        if result.acked:
            # Deleting is several times cheaper than marking: an UPDATE writes a new copy
            # of the row (payload included) and its index entries; see docs/relay.md.
            done_sql = (
                outbox_table.MARK_PUBLISHED_SQL
                if self.config.retention_seconds
                else outbox_table.DELETE_ACKNOWLEDGED_SQL
            )
            await self._conn.execute(done_sql, result.acked)
            self.stats.published += len(result.acked)
            metrics.PUBLISHED.inc(len(result.acked))
        for row_id, exc in result.dead:
            log.error("outbox row %d dead-lettered: %s", row_id, type(exc).__name__)
            await self._conn.execute(outbox_table.DEAD_LETTER_SQL, row_id, _describe(exc))
            self.stats.dead_lettered += 1
            metrics.DEAD_LETTERED.inc()
        if result.error is not None:
            if result.pending:
                await self._conn.execute(
                    outbox_table.RECORD_FAILURE_SQL, result.pending, _describe(result.error)
                )
            assert result.failure is not None
            raise BrokerFailed(result.error, result.failure)
        if flight.sent:
            self._healthy()

    async def _clean_up(self) -> None:
        now = time.monotonic()
        if now < self._next_cleanup or self._conn is None or not self.config.retention_seconds:
            return
        self._next_cleanup = now + self.config.retention_interval
        await retention.delete_expired(self._conn, self.config.retention_seconds, self._stopping)


def _outcome(future: asyncio.Future[object]) -> object:
    if not future.done():  # no answer within ack_timeout: the producer is stuck
        return TimeoutError("no acknowledgement within the relay's ack timeout")
    if future.cancelled():
        return asyncio.CancelledError()
    return future.exception() or future.result()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]


async def run_until_signalled(config: RelayConfig, *, exit_with_parent: bool = False) -> None:
    """`xcloud relay`: run until SIGTERM or SIGINT, then finish the batch and stop. Under
    `xcloud serve`'s supervisor (exit_with_parent) it also stops when the supervisor is
    gone, rather than outliving it as an orphan."""
    import signal

    relay = Relay(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, relay.stop)
    watcher = None
    if exit_with_parent:
        from service.server import watch_parent

        watcher = asyncio.create_task(watch_parent(relay.stop))
    try:
        await relay.run()
    finally:
        if watcher is not None:
            watcher.cancel()
