"""The outbox relay: committed outbox rows -> Kafka, at least once, in per-customer order.

Every outbox row carries a lane (a hash of its customer id). A relay publishes only the
lanes it holds as PostgreSQL advisory locks on its own connection, in id order, so two
relays never publish one customer's events at the same time, and a relay that dies
releases its lanes with its connection. Relays share the lanes out among themselves.
Rows are marked published only after the broker acknowledged them. docs/relay.md
explains why this keeps each customer's events in commit order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
    for_code,
)

from service import db, metrics, store
from service.config import Settings
from service.customers import LANES
from service.events import CONTENT_TYPE

log = logging.getLogger("xcloud.relay")

NOTIFY_CHANNEL = "xcloud_outbox"
LANE_LOCK = 2_019_781_732  # advisory lock class of the lanes ("xcld")
MEMBER_LOCK = LANE_LOCK + 1  # every live relay holds this one shared: the head count
HEADERS = [("content-type", CONTENT_TYPE.encode())]
# A row that fails with one of these can never be published: dead-letter it.
PERMANENT = (MessageSizeTooLargeError, RecordTooLargeError)

_COUNT_MEMBERS_SQL = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND granted AND classid = $1 AND objid = 0 AND objsubid = 2
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


@dataclass(frozen=True)
class RelayConfig:
    database_url: str
    bootstrap_servers: str
    topic: str
    partitions: int = 6
    replication_factor: int = 1
    batch_size: int = 500
    poll_interval: float = 2.0  # safety net under LISTEN/NOTIFY
    rebalance_interval: float = 2.0
    retention_seconds: float = 0  # 0: delete rows as soon as the broker acknowledged them
    retention_interval: float = 60.0
    backoff_cap: float = 30.0
    linger_ms: int = 5


@dataclass
class RelayStats:
    """What the relay has done; read by /metrics and /readyz."""

    published: int = 0
    failures: int = 0
    dead_lettered: int = 0
    lanes: int = 0
    state: str = "starting"
    last_error: str | None = None
    changed_at: float = field(default_factory=time.time)


def config_from(settings: Settings) -> RelayConfig:
    assert settings.kafka_bootstrap_servers is not None
    return RelayConfig(
        database_url=settings.database_url,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        topic=settings.topic,
        partitions=settings.topic_partitions,
        replication_factor=settings.topic_replication_factor,
        batch_size=settings.relay_batch_size,
        retention_seconds=settings.outbox_retention_seconds,
    )


@dataclass
class _Flight:
    """A batch handed to the producer, not yet settled."""

    ids: list[int]
    sent: list[tuple[asyncpg.Record, asyncio.Future]] = field(default_factory=list)
    dead: list[tuple[int, BaseException]] = field(default_factory=list)
    transient: BaseException | None = None


class Relay:
    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.stats = RelayStats()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._producer: AIOKafkaProducer | None = None
        self._lanes: set[int] = set()
        self._next_rebalance = 0.0
        self._next_cleanup = 0.0
        self._backoff = 0.0

    # --- life cycle --------------------------------------------------------------

    def stop(self) -> None:
        """Finish the batch in flight, then return from run()."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Two batches in the pipeline: while the broker acknowledges batch N, batch N+1
        is read and sent; N is settled (deleted or marked) as soon as it is acknowledged.
        Everything goes to the producer in id order (docs/relay.md)."""
        flight: _Flight | None = None
        await self._start_kafka()  # a configuration error raises here: the command fails
        try:
            while not self._stopping.is_set():
                try:
                    if self._conn is None:
                        await self._connect_db()
                    if flight is not None and (
                        flight.transient is not None or time.monotonic() >= self._next_rebalance
                    ):
                        # Settle first: after a failed send nothing more goes out (later
                        # rows may be the same customers'), and lanes move only when idle.
                        await self._settle(flight)
                        flight = None
                    if flight is None:
                        await self._rebalance()
                        await self._clean_up()
                    rows = await self._fetch(in_flight=flight.ids if flight else [])
                    following = await self._send(rows) if rows else None
                    if flight is not None:
                        try:
                            await self._settle(flight)
                        except BaseException:
                            _forget(following)
                            raise
                    flight = following
                    self._set_state("publishing", None)
                    self._backoff = 0.0
                    if flight is None:
                        await self._idle(self.config.poll_interval)
                except Exception as exc:  # the relay must outlive any one failure
                    # Unsettled rows stay pending and are sent again, in order.
                    _forget(flight)
                    flight = None
                    if isinstance(exc, KafkaError):
                        self._set_state("broker unavailable", exc)
                    elif isinstance(exc, (*db.UNAVAILABLE, asyncpg.PostgresConnectionError)):
                        self._set_state("database unavailable", exc)
                        await self._drop_db()
                    else:
                        log.exception("relay error; reconnecting")
                        self._set_state("failing", exc)
                        await self._drop_db()
                    await self._idle(self._next_backoff())
            if flight is not None and self._conn is not None:
                try:
                    await self._settle(flight)  # graceful stop: finish the batch in flight
                except Exception as exc:  # stopping anyway; the rows stay pending
                    log.warning("relay stopped with its last batch unsettled: %r", exc)
        finally:
            await self._drop_db()
            if self._producer is not None:
                await self._producer.stop()
            self._set_state("stopped", None)

    def _set_state(self, state: str, exc: BaseException | None) -> None:
        """Log changes of state, not every attempt."""
        error = None if exc is None else f"{type(exc).__name__}: {exc}"[:500]
        if state != self.stats.state:
            if exc is None:
                log.info("relay %s", state)
            else:
                log.warning("relay %s (%s); retrying with backoff", state, error)
            self.stats.state, self.stats.changed_at = state, time.time()
        self.stats.last_error = error

    def _next_backoff(self) -> float:
        self._backoff = min(self.config.backoff_cap, max(0.2, self._backoff * 2))
        return self._backoff * random.uniform(0.8, 1.2)

    async def _idle(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    # --- Kafka -------------------------------------------------------------------

    async def _start_kafka(self) -> None:
        cfg = self.config

        async def connect() -> AIOKafkaProducer:
            admin = AIOKafkaAdminClient(bootstrap_servers=cfg.bootstrap_servers)
            try:
                await admin.start()
                response = await admin.create_topics(
                    [NewTopic(cfg.topic, cfg.partitions, cfg.replication_factor)]
                )
            finally:
                await admin.close()
            # The answer carries an error code per topic rather than raising.
            for _topic, code, *_ in response.topic_errors:
                if code == TopicAlreadyExistsError.errno:
                    continue
                if code:
                    raise for_code(code)(f"cannot create topic {cfg.topic}")
                log.info("created topic %s with %d partitions", cfg.topic, cfg.partitions)
            producer = AIOKafkaProducer(
                bootstrap_servers=cfg.bootstrap_servers,
                acks="all",
                enable_idempotence=True,  # per-partition order survives retries
                linger_ms=cfg.linger_ms,
                max_batch_size=256 * 1024,
                request_timeout_ms=30_000,
            )
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            return producer

        while not self._stopping.is_set():
            try:
                self._producer = await connect()
                return
            except (KafkaError, OSError) as exc:
                if not _unreachable(exc):
                    raise  # a configuration mistake: waiting would not mend it
                self._set_state("waiting for Kafka", exc)
                print(
                    f"xcloud: waiting for Kafka at {cfg.bootstrap_servers} ({type(exc).__name__})",
                    file=sys.stderr,
                    flush=True,
                )
                await self._idle(self._next_backoff())

    # --- PostgreSQL --------------------------------------------------------------

    async def _connect_db(self) -> None:
        conn = await asyncpg.connect(self.config.database_url)
        try:
            await conn.execute("SELECT pg_advisory_lock_shared($1, 0)", MEMBER_LOCK)
            await conn.add_listener(NOTIFY_CHANNEL, lambda *_: self._wake.set())
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self._lanes = set()
        self._next_rebalance = 0.0

    async def _drop_db(self) -> None:
        conn, self._conn = self._conn, None
        self._lanes = set()
        self.stats.lanes = 0
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)  # releases every lock it held
            if not conn.is_closed():
                conn.terminate()

    async def _rebalance(self) -> None:
        """Hold about LANES / (live relays) lanes: give extras back, take free ones."""
        now = time.monotonic()
        if now < self._next_rebalance:
            return
        self._next_rebalance = now + self.config.rebalance_interval
        assert self._conn is not None
        members = await self._conn.fetchval(_COUNT_MEMBERS_SQL, MEMBER_LOCK)
        target = math.ceil(LANES / max(1, members))
        held = sorted(self._lanes)
        for lane in held[target:]:
            await self._conn.execute("SELECT pg_advisory_unlock($1, $2)", LANE_LOCK, lane)
            self._lanes.discard(lane)
        if len(self._lanes) < target:
            free = [lane for lane in range(LANES) if lane not in self._lanes]
            random.shuffle(free)  # relays starting together do not all race for lane 0
            for lane in free:
                if await self._conn.fetchval(
                    "SELECT pg_try_advisory_lock($1, $2)", LANE_LOCK, lane
                ):
                    self._lanes.add(lane)
                    if len(self._lanes) >= target:
                        break
        self.stats.lanes = len(self._lanes)

    # --- publishing --------------------------------------------------------------

    async def _fetch(self, *, in_flight: list[int]) -> list[asyncpg.Record]:
        """The oldest pending rows of the held lanes, leaving out those in flight. Not
        `id > last sent`: a smaller id can commit late, and must still go first."""
        if not self._lanes:
            return []
        assert self._conn is not None
        return await self._conn.fetch(
            store.FETCH_PENDING_SQL, sorted(self._lanes), in_flight, self.config.batch_size
        )

    async def _send(self, rows: list[asyncpg.Record]) -> _Flight:
        """Hand rows to the producer in id order; the acknowledgements come later."""
        assert self._producer is not None
        flight = _Flight(ids=[row["id"] for row in rows])
        for row in rows:
            try:
                future = await self._producer.send(
                    self.config.topic,
                    row["payload"],
                    key=row["customer_id"].encode("utf-8"),
                    headers=HEADERS,
                )
            except PERMANENT as exc:
                flight.dead.append((row["id"], exc))
                continue
            except KafkaError as exc:
                # Stop here: later rows may be this customer's later events.
                flight.transient = exc
                break
            flight.sent.append((row, future))
        return flight

    async def _settle(self, flight: _Flight) -> None:
        """Wait for the broker, then mark what it acknowledged and dead-letter what it
        never will take. Raises on a transient failure (the caller backs off)."""
        assert self._conn is not None
        results = await asyncio.gather(*(f for _, f in flight.sent), return_exceptions=True)
        acked: list[int] = []
        failed: list[int] = []
        failed_customers: set[str] = set()
        transient = flight.transient
        for (row, _), result in zip(flight.sent, results, strict=True):
            if isinstance(result, PERMANENT):
                flight.dead.append((row["id"], result))
            elif isinstance(result, BaseException) or row["customer_id"] in failed_customers:
                # A later event of a customer whose earlier event failed stays pending
                # too, so it is published again after that one (docs/relay.md).
                failed.append(row["id"])
                failed_customers.add(row["customer_id"])
                transient = transient or result
            else:
                acked.append(row["id"])

        if acked:
            # Deleting is several times cheaper than marking: an UPDATE writes a new copy
            # of the row (payload included) and its index entries; see docs/relay.md.
            done_sql = (
                store.MARK_PUBLISHED_SQL
                if self.config.retention_seconds
                else store.DELETE_ACKNOWLEDGED_SQL
            )
            await self._conn.execute(done_sql, acked)
            self.stats.published += len(acked)
            metrics.PUBLISHED.inc(len(acked))
        for row_id, exc in flight.dead:
            log.error("outbox row %d dead-lettered: %s", row_id, type(exc).__name__)
            await self._conn.execute(store.DEAD_LETTER_SQL, row_id, _describe(exc))
            self.stats.dead_lettered += 1
            metrics.DEAD_LETTERED.inc()
        if transient is not None:
            self.stats.failures += 1
            metrics.PUBLISH_FAILURES.inc()
            if failed:
                await self._conn.execute(store.RECORD_FAILURE_SQL, failed, _describe(transient))
            raise transient if isinstance(transient, KafkaError) else KafkaError(str(transient))

    async def _clean_up(self) -> None:
        now = time.monotonic()
        if now < self._next_cleanup or self._conn is None or not self.config.retention_seconds:
            return
        self._next_cleanup = now + self.config.retention_interval
        while not self._stopping.is_set():
            status = await self._conn.execute(
                store.DELETE_PUBLISHED_SQL, self.config.retention_seconds, 1000
            )
            if int(status.split()[-1]) < 1000:
                break


def _forget(flight: _Flight | None) -> None:
    """Drop a flight without settling it: its rows stay pending. Its acknowledgements
    may still come; retrieve their outcome so none is reported as never retrieved."""
    if flight is not None:
        for _, future in flight.sent:
            future.add_done_callback(lambda f: f.cancelled() or f.exception())


def _unreachable(exc: BaseException) -> bool:
    return isinstance(exc, OSError | KafkaTimeoutError) or getattr(exc, "retriable", False)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]


async def run_until_signalled(config: RelayConfig) -> None:
    """`xcloud relay`: run until SIGTERM or SIGINT, then finish the batch and stop."""
    import signal

    relay = Relay(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, relay.stop)
    await relay.run()
