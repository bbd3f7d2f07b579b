"""`xcloud relay` against Debezium, one after the other, in the same run, on the same outbox.

Debezium runs as its embedded engine (PostgreSQL connector, pgoutput, Outbox Event Router)
in a small Java main (bench/debezium/), built with Maven into .cache/debezium. Both
publishers run against a private PostgreSQL started here with `wal_level=logical` (the
shared local instance of scripts/services.sh is left alone: restarting it would break
whatever else uses it) and the worktree's local Kafka broker.

Measured for each (bench/README.md, "Relay against Debezium", says why each is fair):
  drain     events/s publishing a backlog of pending rows, from Kafka's own timestamps;
  steady    commit-to-publish p50/p99 at a steady registration rate: the broker's append
            time (topics use LogAppendTime) minus the row's commit time
            (track_commit_timestamp); CPU seconds per 10,000 events of the publisher and
            of PostgreSQL (walsender apart), WAL written, WAL held by the slot, the API's
            latency; a run with no publisher at all is the baseline for "extra load";
  memory    peak RSS (VmHWM) of the publisher process;
  crash     SIGKILL under a backlog, restart, count the duplicates (and any loss).

    python bench/run.py --only debezium [--quick]     (or: make bench-debezium)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.domain.events import CONTENT_TYPE  # noqa: E402

SRC = ROOT / "bench" / "debezium"
CACHE = ROOT / ".cache" / "debezium"
LIBS = CACHE / "libs"
CLASSES = CACHE / "target" / "classes"
DATABASE = "xcloud_debezium"
SLOT = "xcloud_debezium"
PUBLICATION = "xcloud_outbox_pub"
PARTITIONS = 6  # the relay's default
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The JVM's heap is capped like the broker's; Debezium's defaults otherwise.
JAVA_OPTS = os.environ.get("XCLOUD_DEBEZIUM_JAVA_OPTS", "-Xmx512m").split()
# Engine settings the comparison depends on; anything else is Debezium's default.
OFFSET_FLUSH_MS = int(os.environ.get("XCLOUD_DEBEZIUM_OFFSET_FLUSH_MS", "1000"))
# poll.interval.ms: Debezium's default (500) and a setting tuned for latency; the steady
# run measures both, the latency ratio is taken against the better one.
POLL_INTERVAL_MS = {"debezium": 500, "debezium-fast": 10}
CLEAN_INTERVAL = 1.0
CLEAN_CHUNK = 5000


def log(msg: str) -> None:
    print(f"bench: debezium: {msg}", file=sys.stderr, flush=True)


# --- building the Java side ----------------------------------------------------------


def build() -> str | None:
    """Compile the Java main and copy its jars (once per change of its sources).
    None, with the reason, when Java or Maven is missing."""
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            return f"no `{tool}` on PATH"
    sources = sorted([SRC / "pom.xml", *SRC.rglob("*.java")])
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()
    stamp = CACHE / ".built"
    if stamp.exists() and stamp.read_text() == digest:
        return None
    log("building the Debezium embedded-engine main with Maven (jars cached in .cache/)")
    shutil.rmtree(LIBS, ignore_errors=True)
    subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(SRC / "pom.xml"),
            "compile",
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={LIBS}",
            f"-Dmaven.repo.local={ROOT / '.cache' / 'm2'}",
        ],
        check=True,
    )
    stamp.write_text(digest)
    return None


# --- a private PostgreSQL with logical decoding -----------------------------------------


def _pg_bin() -> Path:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "pg_ctl").exists():
            return d
    raise RuntimeError("PostgreSQL binaries not found (scripts/services.sh installs them)")


class PrivatePostgres:
    """initdb'd once under .cache/, started for the bench, stopped after it."""

    EXTRA_CONF = (
        "\n# bench/debezium.py: logical decoding for Debezium, commit times for latency\n"
        "wal_level = logical\nmax_replication_slots = 4\nmax_wal_senders = 4\n"
        "track_commit_timestamp = on\n"
    )

    def __init__(self, port: int) -> None:
        self.port = port
        data = ROOT / ".cache" / "pg-logical"
        # Like scripts/services.sh: the postgres user must reach the data directory.
        reachable = subprocess.run(
            ["runuser", "-u", "postgres", "--", "test", "-x", str(ROOT / ".cache")],
            capture_output=True,
        )
        if reachable.returncode != 0:
            tag = hashlib.sha256(bytes(ROOT)).hexdigest()[:12]
            data = Path(f"/var/tmp/xcloud-pg-logical-{tag}")  # noqa: S108 (as services.sh)
        self.data = data
        self.base = f"postgresql://postgres@127.0.0.1:{port}"
        self.url = f"{self.base}/{DATABASE}"

    def _as_postgres(self, *argv: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True)

    def start(self) -> None:
        pg = _pg_bin()
        if not (self.data / "PG_VERSION").exists():
            log(f"initialising a private PostgreSQL in {self.data}")
            self.data.mkdir(parents=True, exist_ok=True)
            shutil.chown(self.data, "postgres", "postgres")
            self.data.chmod(0o700)
            self._as_postgres(
                str(pg / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                "-E", "UTF8", "--locale=C.UTF-8",
            )  # fmt: skip
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write((ROOT / "infra" / "postgres" / "postgresql.conf").read_text())
                conf.write(self.EXTRA_CONF)
        running = subprocess.run(
            ["runuser", "-u", "postgres", "--", str(pg / "pg_ctl"), "status", "-D", str(self.data)],
            capture_output=True,
        )
        if running.returncode == 0:
            return
        log(f"starting the private PostgreSQL (wal_level=logical) on port {self.port}")
        self._as_postgres(
            str(pg / "pg_ctl"), "start", "-D", str(self.data), "-w", "-t", "60",
            "-l", str(self.data / "server.log"),
            "-o", f"-p {self.port} -k '' -c unix_socket_directories=''",
        )  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._as_postgres(str(_pg_bin() / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast")

    def postmaster(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def cpu(self) -> tuple[float, float]:
        """CPU seconds of (every server process, the walsenders among them)."""
        parent = self.postmaster()
        total = walsender = 0.0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if stat.parent.name != str(parent) and int(fields[1]) != parent:
                    continue
                used = (int(fields[11]) + int(fields[12])) / CLK_TCK
                cmdline = (stat.parent / "cmdline").read_bytes()
            except (OSError, IndexError):
                continue  # a backend that just exited
            total += used
            if b"walsender" in cmdline:
                walsender += used
        return total, walsender


# --- publishers ------------------------------------------------------------------------


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _proc_rss_peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Publisher:
    name: str
    proc: subprocess.Popen

    def cpu(self) -> float:
        return _proc_cpu(self.proc.pid)

    def rss_peak_mib(self) -> float:
        return _proc_rss_peak_mib(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def start_relay(pg: PrivatePostgres, kafka: str, topic: str) -> Publisher:
    env = {
        **os.environ,
        "DATABASE_URL": pg.url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka,
        "XCLOUD_SECRET_KEY": "bench-secret-key-" + "b" * 32,
        "XCLOUD_TOPIC": topic,
        "XCLOUD_OUTBOX_RETENTION_SECONDS": "0",  # its default: delete once acknowledged
    }
    argv = [sys.executable, "-m", "service.cli", "relay"]
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return Publisher("relay", proc)


def debezium_properties(
    pg: PrivatePostgres, kafka: str, topic: str, poll_ms: int = 500
) -> dict[str, str]:
    return {
        "name": "xcloud-outbox",
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
        "offset.storage.file.filename": str(CACHE / "offsets.dat"),
        "offset.flush.interval.ms": str(OFFSET_FLUSH_MS),
        "poll.interval.ms": str(poll_ms),
        "database.hostname": "127.0.0.1",
        "database.port": str(pg.port),
        "database.user": "postgres",
        "database.password": "",
        "database.dbname": DATABASE,
        "topic.prefix": "xcloud",
        "plugin.name": "pgoutput",
        "slot.name": SLOT,
        "publication.name": PUBLICATION,
        "publication.autocreate.mode": "disabled",  # made here: FOR TABLE outbox, inserts only
        "table.include.list": "public.outbox",
        "snapshot.mode": "no_data",  # the outbox's history is not events to send again
        "skipped.operations": "u,d,t",
        "binary.handling.mode": "bytes",
        "extended.headers.enabled": "false",  # no __debezium.context.* headers
        # The Outbox Event Router: event id, customer id as the key, the payload bytes
        # (already the CloudEvents JSON) as the value, every type to the one topic.
        "transforms": "outbox,contenttype,dropid",
        "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
        "transforms.outbox.table.field.event.id": "event_id",
        "transforms.outbox.table.field.event.key": "customer_id",
        "transforms.outbox.table.field.event.payload": "payload",
        "transforms.outbox.route.by.field": "event_type",
        "transforms.outbox.route.topic.replacement": topic,
        "transforms.outbox.table.expand.json.payload": "false",
        # Our relay's only header; the router's own `id` header is dropped so both put
        # the same record on the topic (the id is inside the CloudEvent).
        "transforms.contenttype.type": "org.apache.kafka.connect.transforms.InsertHeader",
        "transforms.contenttype.header": "content-type",
        "transforms.contenttype.value.literal": CONTENT_TYPE,
        "transforms.dropid.type": "org.apache.kafka.connect.transforms.DropHeaders",
        "transforms.dropid.headers": "id",
        # The relay's producer settings.
        "producer.bootstrap.servers": kafka,
        "producer.acks": "all",
        "producer.enable.idempotence": "true",
        "producer.linger.ms": "5",
        "producer.batch.size": str(256 * 1024),
        "producer.request.timeout.ms": "30000",
    }


def start_debezium(pg: PrivatePostgres, kafka: str, topic: str, poll_ms: int) -> Publisher:
    props = CACHE / "engine.properties"
    props.write_text(
        "".join(
            f"{k}={v}\n".replace("\\", "\\\\")
            for k, v in debezium_properties(pg, kafka, topic, poll_ms).items()
        )
    )
    argv = [
        "java",
        *JAVA_OPTS,
        "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
        "-cp",
        f"{CLASSES}:{LIBS}/*",
        "xcloud.bench.OutboxDebezium",
        str(props),
    ]
    logfile = (CACHE / "engine.log").open("ab")
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=logfile, stderr=subprocess.STDOUT)
    return Publisher("debezium", proc)


# --- PostgreSQL state per measurement ------------------------------------------------


async def reset(conn: asyncpg.Connection, *, slot: bool) -> None:
    """An empty outbox; a fresh slot for Debezium, no slot at all for the relay (an
    unread slot would hold WAL and cost the relay's run for nothing)."""
    await conn.execute("TRUNCATE outbox")
    await conn.execute("TRUNCATE bench_commit")
    for _ in range(100):
        active = await conn.fetchval(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1", SLOT
        )
        if not active:
            break
        await asyncio.sleep(0.1)  # a killed walsender takes a moment to go
    if active is not None:
        await conn.execute("SELECT pg_drop_replication_slot($1)", SLOT)
    (CACHE / "offsets.dat").unlink(missing_ok=True)
    if slot:
        # Made before the rows, so a backlog written before Debezium starts is in it.
        await conn.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", SLOT)
    await conn.execute("CHECKPOINT")


async def slot_retained(conn: asyncpg.Connection) -> int:
    value = await conn.fetchval(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint"
        " FROM pg_replication_slots WHERE slot_name = $1",
        SLOT,
    )
    return int(value or 0)


async def cleaner(dsn: str, stop: asyncio.Event) -> None:
    """Debezium's outbox clean-up: every second, delete every row there is, in chunks.
    Safe the moment a row is committed: the slot already holds it in the WAL."""
    conn = await asyncpg.connect(dsn)
    try:
        while not stop.is_set():
            while True:
                status = await conn.execute(
                    "DELETE FROM outbox WHERE id = ANY(ARRAY("
                    "SELECT id FROM outbox ORDER BY id LIMIT $1))",
                    CLEAN_CHUNK,
                )
                if int(status.split()[-1]) < CLEAN_CHUNK:
                    break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), CLEAN_INTERVAL)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def publishing(
    name: str, pg: PrivatePostgres, kafka: str, topic: str, clean: asyncio.Event | None = None
):
    """The publisher running, with Debezium's clean-up beside it (from when `clean` is
    set: the drain holds it back until the first event, so the deletes of the backlog
    fall in the measured time, as the relay's do)."""
    stop = asyncio.Event()
    task = None
    if name.startswith("debezium"):
        pub = start_debezium(pg, kafka, topic, POLL_INTERVAL_MS[name])

        async def clean_up() -> None:
            if clean is not None:
                await clean.wait()
            await cleaner(pg.url, stop)

        task = asyncio.create_task(clean_up())
    else:
        pub = start_relay(pg, kafka, topic)
    try:
        yield pub
    finally:
        stop.set()
        if clean is not None:
            clean.set()
        if task is not None:
            await task
        pub.stop()


# --- Kafka -----------------------------------------------------------------------------


async def create_topic(kafka: str, topic: str) -> None:
    """Stamped by the broker on append, so a record's timestamp is its publish time."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    topic, PARTITIONS, 1, topic_configs={"message.timestamp.type": "LogAppendTime"}
                )
            ]
        )
    finally:
        await admin.close()


class Topic:
    def __init__(self, kafka: str, name: str) -> None:
        self.name = name
        self.parts = [TopicPartition(name, p) for p in range(PARTITIONS)]
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka, enable_auto_commit=False, auto_offset_reset="earliest"
        )

    async def __aenter__(self) -> Topic:
        await self.consumer.start()
        self.consumer.assign(self.parts)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def count(self) -> int:
        return sum((await self.consumer.end_offsets(self.parts)).values())

    async def wait_for(
        self, n: int, timeout: float, on_tick=None, pub: Publisher | None = None
    ) -> int:
        deadline = time.monotonic() + timeout
        while (have := await self.count()) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: {have} of {n} records after {timeout:.0f} s")
            if pub is not None and pub.proc.poll() is not None:
                raise RuntimeError(f"{pub.name} exited ({pub.proc.returncode}); see its log")
            if on_tick is not None:
                await on_tick()
            await asyncio.sleep(0.1)
        return have

    async def read_all(self) -> list[tuple[bytes, bytes, list, int]]:
        """(key, value, headers, broker timestamp in ms) of every record."""
        end = await self.consumer.end_offsets(self.parts)
        for tp in self.parts:
            self.consumer.seek(tp, 0)
        out: list[tuple[bytes, bytes, list, int]] = []
        done = {tp for tp in self.parts if end[tp] == 0}
        while len(done) < len(self.parts):
            batch = await self.consumer.getmany(timeout_ms=1000, max_records=20000)
            for tp, msgs in batch.items():
                for m in msgs:
                    out.append((m.key, m.value, list(m.headers), m.timestamp))
                if msgs and msgs[-1].offset + 1 >= end[tp]:
                    done.add(tp)
        return out


def event_id(value: bytes) -> str:
    return orjson.loads(value)["id"]


def check_records(records: list[tuple[bytes, bytes, list, int]]) -> None:
    """What both must put on the topic: the customer id as key, a CloudEvent as value,
    the one content-type header."""
    for key, value, headers, _ in records[:: max(1, len(records) // 200)]:
        event = orjson.loads(value)
        if key.decode() != event["subject"] or event["specversion"] != "1.0":
            raise AssertionError(f"unexpected record: key {key!r}, value {value[:120]!r}")
        if headers != [("content-type", CONTENT_TYPE.encode())]:
            raise AssertionError(f"unexpected headers {headers!r}")


async def backlog(pool: asyncpg.Pool, n: int, per_transaction: int = 100) -> None:
    """n pending rows of n customers, like bench/run.py's fill_outbox, but committed
    `per_transaction` at a time: logical decoding sends and Debezium resumes by
    transaction, so one 200,000-row transaction would be a backlog no service writes."""
    from bench.run import DOC_EXAMPLE, Limits
    from service.domain import customer, events

    now = customer.utc_now()
    data = customer.mutable_fields(DOC_EXAMPLE, Limits().as_json())
    rep = customer.representation("FST-12345678-TEMPLATE", "ACTIVE", data, now, now)
    _, payload = events.envelope(events.REGISTERED, rep, now)
    for first in range(0, n, per_transaction):
        await pool.execute(
            """
            INSERT INTO outbox (event_id, event_type, customer_id, lane, payload)
            SELECT e.id, 'CustomerRegistered', e.cust, abs(hashtext(e.cust)) % 32,
                   convert_to(replace(replace($3, 'FST-12345678-TEMPLATE', e.cust),
                                      $4, e.id::text), 'UTF8')
            FROM (SELECT gen_random_uuid() AS id, 'FST-12345678-r' || i AS cust
                  FROM generate_series($1 + 1, $2) AS i) e
            """,
            first,
            min(n, first + per_transaction),
            payload.decode(),
            orjson.loads(payload)["id"],
        )


# --- the measurements ---------------------------------------------------------------------


async def drain(name: str, pg, kafka, conn, pool, n: int) -> dict[str, Any]:
    await reset(conn, slot=name.startswith("debezium"))
    await backlog(pool, n)
    await conn.execute("VACUUM ANALYZE outbox")
    sample = {
        str(r["event_id"]): bytes(r["payload"])
        for r in await conn.fetch("SELECT event_id, payload FROM outbox ORDER BY random() LIMIT 50")
    }
    topic = f"bench.dbz.drain.{name}.{int(time.time())}"
    await create_topic(kafka, topic)
    retained = [await slot_retained(conn)]
    log(f"{name}: draining {n} pending rows")
    clean = asyncio.Event()
    async with Topic(kafka, topic) as t, publishing(name, pg, kafka, topic, clean) as pub:

        async def sample_slot() -> None:
            retained.append(await slot_retained(conn))

        await t.wait_for(1, 300, pub=pub)
        cpu0 = pub.cpu()
        clean.set()
        await t.wait_for(n, 900, sample_slot, pub)
        cpu = pub.cpu() - cpu0
        rss = pub.rss_peak_mib()
        records = await t.read_all()
    check_records(records)
    by_id = {event_id(v): v for _, v, _, _ in records}
    same = sum(by_id.get(i) == payload for i, payload in sample.items())
    if same != len(sample):
        raise AssertionError(f"{name}: {len(sample) - same} values differ from the outbox rows")
    stamps = [ts for *_, ts in records]
    seconds = (max(stamps) - min(stamps)) / 1000
    return {
        "rows": n,
        "published": len(records),
        "eps": len(by_id) / seconds,
        "cpu_s_per_10k": cpu / len(records) * 10_000,
        "rss_peak_mib": rss,
        "slot_retained_peak_mib": max(retained) / 2**20,
    }


async def steady(
    name: str | None, pg, kafka, conn, pool, server, secret, rate: int, seconds: int
) -> dict[str, Any]:
    """One steady registration run: `name` publishing, or nobody (the baseline). The
    same load runs as long once before, unmeasured: on this shared machine the JVM
    takes tens of seconds to compile its hot paths (its CPU per event falls about
    threefold over the first 40 s), and a long-running publisher is judged by its
    steady state."""
    from bench.run import loadgen

    await reset(conn, slot=name is not None and name.startswith("debezium"))
    result: dict[str, Any] = {}
    topic = f"bench.dbz.steady.{name}.{int(time.time())}"
    async with contextlib.AsyncExitStack() as stack:
        pub = None
        if name is not None:
            await create_topic(kafka, topic)
            t = await stack.enter_async_context(Topic(kafka, topic))
            pub = await stack.enter_async_context(publishing(name, pg, kafka, topic))
            await backlog(pool, 1)  # warm-up: published once the publisher runs
            await t.wait_for(1, 300, pub=pub)
            await conn.execute("TRUNCATE bench_commit")
        log(f"{name or 'no publisher'}: {rate} registrations/s for {seconds} s")
        await asyncio.to_thread(loadgen, server, secret, "register", 64, seconds, rate=rate)
        before = 0
        if pub is not None:
            warm = await conn.fetchval("SELECT count(*) FROM bench_commit")
            before = await t.wait_for(warm + 1, 120, pub=pub)
        await conn.execute("TRUNCATE bench_commit")
        lsn0 = await conn.fetchval("SELECT pg_current_wal_lsn()")
        pg0, ws0 = pg.cpu()
        cpu0 = pub.cpu() if pub else 0.0
        retained: list[int] = [0]
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                retained.append(await slot_retained(conn))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)

        sampler = asyncio.create_task(sample())
        load = await asyncio.to_thread(loadgen, server, secret, "register", 64, seconds, rate=rate)
        committed = await conn.fetchval("SELECT count(*) FROM bench_commit")
        pg1, ws1 = pg.cpu()
        wal = await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)", lsn0)
        if pub is not None:
            await t.wait_for(before + committed, 120, pub=pub)
            result["cpu_s_per_10k"] = (pub.cpu() - cpu0) / committed * 10_000
            result["rss_peak_mib"] = pub.rss_peak_mib()
        stop.set()
        await sampler
        if pub is not None:
            records = await t.read_all()
    result.update(
        {
            "rate": rate,
            "achieved_rps": load["rps"],
            "api_p50_ms": load["p50_ms"],
            "api_p99_ms": load["p99_ms"],
            "errors": load["errors"],
            "events": committed,
            "pg_cpu_s_per_10k": (pg1 - pg0) / committed * 10_000,
            "walsender_cpu_s_per_10k": (ws1 - ws0) / committed * 10_000,
            "wal_mib_per_10k": float(wal) / committed * 10_000 / 2**20,
            "slot_retained_peak_mib": max(retained) / 2**20,
        }
    )
    if name is None:
        return result
    check_records(records)
    commits = {
        str(r["event_id"]): r["t"]
        for r in await conn.fetch(
            "SELECT event_id, extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 AS t"
            " FROM bench_commit"
        )
    }
    latencies = []
    for _, value, _, ts in records:
        committed_at = commits.get(event_id(value))
        if committed_at is not None:
            latencies.append(ts / 1000 - committed_at)
    latencies.sort()
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    result.update(
        {
            "measured": len(latencies),
            "p50_ms": q[49] * 1000,
            "p99_ms": q[98] * 1000,
            "max_ms": latencies[-1] * 1000,
        }
    )
    return result


async def crash(name: str, pg, kafka, conn, pool, n: int, kills: int = 3) -> dict[str, Any]:
    """SIGKILL the publisher `kills` times while it works through a backlog (after a
    quarter, a half, three quarters of it), start it again each time, and count what
    reached the topic twice (and anything that never did). One kill alone says little:
    what is in flight at the moment of the kill varies from one to the next."""
    await reset(conn, slot=name.startswith("debezium"))
    await backlog(pool, n)
    topic = f"bench.dbz.crash.{name}.{int(time.time())}"
    await create_topic(kafka, topic)
    log(f"{name}: {kills} SIGKILLs while publishing {n} events, a restart after each")
    killed_at = []
    async with Topic(kafka, topic) as t:
        for k in range(1, kills + 1):
            async with publishing(name, pg, kafka, topic) as pub:
                await t.wait_for(n * k // (kills + 1), 300, pub=pub)
                pub.kill()
                killed_at.append(await t.count())
        async with publishing(name, pg, kafka, topic) as pub:
            await t.wait_for(n, 900, pub=pub)
            # Every id there once: what came again after the restart is also in by now.
            deadline = time.monotonic() + 120
            while True:
                records = await t.read_all()
                unique = len({event_id(v) for _, v, _, _ in records})
                if unique >= n or time.monotonic() > deadline:
                    break
                await asyncio.sleep(1)
            await asyncio.sleep(2)
            records = await t.read_all()
    unique = len({event_id(v) for _, v, _, _ in records})
    return {
        "rows": n,
        "kills": kills,
        "at_kill": killed_at,
        "records": len(records),
        "duplicates": len(records) - unique,
        "lost": n - unique,
    }


# --- the run -----------------------------------------------------------------------------


BENCH_SQL = """
CREATE TABLE IF NOT EXISTS bench_commit (event_id uuid NOT NULL);
CREATE OR REPLACE FUNCTION bench_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_commit VALUES (NEW.event_id);  -- same transaction: its commit time
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS bench_commit ON outbox;
CREATE TRIGGER bench_commit AFTER INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION bench_commit();
DROP PUBLICATION IF EXISTS xcloud_outbox_pub;
CREATE PUBLICATION xcloud_outbox_pub FOR TABLE outbox WITH (publish = 'insert');
"""


async def compare(quick: bool) -> dict[str, Any] | None:
    """Run the comparison; print the two ratio lines. None when Debezium was skipped."""
    from bench import run as base
    from tests import services as test_services

    reason = build()
    if reason is not None:
        if quick:
            print(f"relay/debezium: skipped ({reason}; Debezium needs Java and Maven)")
            return None
        raise RuntimeError(f"the Debezium comparison needs Java and Maven: {reason}")
    urls = test_services.local_services("xcloud_bench")  # for the Kafka broker
    base.build_loadgen()
    pg = PrivatePostgres(int(os.environ.get("XCLOUD_PG_PORT", "25432")) + 3)
    pg.start()
    try:
        pg_urls = {"base": pg.base, "db": pg.url, "kafka": urls["kafka"]}
        secret = await test_services.fresh_database(pg_urls, base.SECRET_KEY, base.SERVICE_ID)
        report = await _measure(pg, pg_urls, secret, quick)
    finally:
        pg.stop()
    write(report, quick)
    print(f"relay/debezium throughput ratio: {report['throughput_ratio']:.2f}")
    print(f"relay/debezium p99 latency ratio: {report['p99_ratio']:.2f}")
    return report


async def _measure(pg: PrivatePostgres, urls, secret: str, quick: bool) -> dict[str, Any]:
    from bench import run as base

    kafka = urls["kafka"]
    # The environment may shrink a run while developing; the defaults are the bench's.
    backlog = int(os.environ.get("XCLOUD_DEBEZIUM_BACKLOG", 20_000 if quick else 200_000))
    seconds = int(os.environ.get("XCLOUD_DEBEZIUM_SECONDS", 10 if quick else 30))
    crash_rows = int(os.environ.get("XCLOUD_DEBEZIUM_CRASH_ROWS", 20_000 if quick else 100_000))
    conn = await asyncpg.connect(pg.url)
    pool = await asyncpg.create_pool(pg.url, min_size=1, max_size=4)
    report: dict[str, Any] = {
        "quick": quick,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "debezium": {
            "version": "3.6.1.Final (embedded engine)",
            "offset_flush_ms": OFFSET_FLUSH_MS,
            "poll_interval_ms": POLL_INTERVAL_MS,
            "java_opts": " ".join(JAVA_OPTS),
        },
        "load_before": os.getloadavg(),
        "uptime_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    }
    try:
        await conn.execute(BENCH_SQL)
        names = ("relay", "debezium")
        report["drain"] = {n: await drain(n, pg, kafka, conn, pool, backlog) for n in names}
        server = base.start_server(urls, relay=False, topic="bench.unused")
        try:
            report["steady"] = {
                n or "none": await steady(n, pg, kafka, conn, pool, server, secret, 1000, seconds)
                for n in (None, *names, "debezium-fast")
            }
        finally:
            base.stop_server(server)
        report["crash"] = {n: await crash(n, pg, kafka, conn, pool, crash_rows) for n in names}
        await reset(conn, slot=False)
    finally:
        await pool.close()
        await conn.close()
    report["load_after"] = os.getloadavg()
    report["uptime_after"] = subprocess.run(
        ["uptime"], capture_output=True, text=True
    ).stdout.strip()
    d, s = report["drain"], report["steady"]
    report["throughput_ratio"] = d["relay"]["eps"] / d["debezium"]["eps"]
    best = min(s["debezium"]["p99_ms"], s["debezium-fast"]["p99_ms"])
    report["p99_ratio"] = s["relay"]["p99_ms"] / best
    return report


def table(r: dict[str, Any]) -> str:
    d, s, c = r["drain"], r["steady"], r["crash"]
    base = s["none"]

    def extra(x: dict[str, Any]) -> str:
        return (
            f"PG CPU {x['pg_cpu_s_per_10k'] - base['pg_cpu_s_per_10k']:+.2f} s/10k"
            f" (walsender {x['walsender_cpu_s_per_10k']:.2f}),"
            f" WAL {x['wal_mib_per_10k'] - base['wal_mib_per_10k']:+.1f} MiB/10k,"
            f" API p99 {x['api_p99_ms']:.0f} ms vs {base['api_p99_ms']:.0f}"
        )

    both = ("relay", "debezium")

    def fast(cell) -> str:
        """Debezium at its default poll interval (500 ms), then tuned (10 ms)."""
        return f"{cell(s['debezium'])} (500 ms poll); {cell(s['debezium-fast'])} (10 ms)"

    rows = [
        ("ordering", "per customer (lanes held as advisory locks), also with several relays",
         "commit (LSN) order of the whole table; one connector per slot, so no scale-out"),
        ("duplicates after SIGKILL under a backlog (measured)",
         *(f"{c[n]['duplicates']:,} in {c[n]['rows']:,} events after {c[n]['kills']} kills"
           f" ({c[n]['lost']} lost)" for n in both)),
        ("set-up needed", "the outbox table; one more process (`xcloud relay`)",
         "wal_level=logical (restart), slot + publication (REPLICATION), a JVM + 38 MB of jars,"
         " offset storage, an outbox clean-up job, slot monitoring"),
        ("drain events/s", *(f"{d[n]['eps']:,.0f}" for n in ("relay", "debezium"))),
        ("commit-to-publish p50 / p99 at 1,000/s (achieved)",
         f"{s['relay']['p50_ms']:.0f} / {s['relay']['p99_ms']:.0f} ms"
         f" ({s['relay']['achieved_rps']:.0f}/s)", fast(
             lambda x: f"{x['p50_ms']:.0f} / {x['p99_ms']:.0f} ms ({x['achieved_rps']:.0f}/s)")),
        ("CPU s per 10k events: drain; steady",
         f"{d['relay']['cpu_s_per_10k']:.2f}; {s['relay']['cpu_s_per_10k']:.2f}",
         f"{d['debezium']['cpu_s_per_10k']:.2f}; "
         + fast(lambda x: f"{x['cpu_s_per_10k']:.2f}")),
        ("peak RSS: drain; steady",
         f"{d['relay']['rss_peak_mib']:.0f}; {s['relay']['rss_peak_mib']:.0f} MiB",
         f"{d['debezium']['rss_peak_mib']:.0f}; "
         + fast(lambda x: f"{x['rss_peak_mib']:.0f} MiB")),
        ("WAL held by the slot, peak: drain; steady", "none (no slot)",
         f"{d['debezium']['slot_retained_peak_mib']:.0f} MiB; "
         + fast(lambda x: f"{x['slot_retained_peak_mib']:.0f} MiB")),
        ("extra load on writes (vs no publisher)", extra(s["relay"]),
         fast(extra)),
    ]  # fmt: skip
    lines = ["| | relay | Debezium |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c_} |" for a, b, c_ in rows]
    return "\n".join(lines)


def write(report: dict[str, Any], quick: bool) -> None:
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stem = "debezium-quick" if quick else "debezium-latest"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    md = [
        f"# relay against Debezium ({'quick' if quick else 'full'} run, {report['when']})",
        "",
        f"Run {report['when']}; Debezium embedded engine, same machine, same outbox rows.",
        "",
        table(report),
        "",
        f"relay/debezium throughput ratio: {report['throughput_ratio']:.2f}",
        f"relay/debezium p99 latency ratio: {report['p99_ratio']:.2f}",
        "",
        f"Debezium {report['debezium']['version']}, offset flush"
        f" {report['debezium']['offset_flush_ms']} ms, JVM {report['debezium']['java_opts']};"
        " the drain and the crash ran at the default poll interval.",
        f"Load: before `{report['uptime_before']}`; after `{report['uptime_after']}`"
        " (the machine's 2 cores were shared with other sessions).",
        "",
    ]
    (out / f"{stem}.md").write_text("\n".join(md))
    print(table(report), file=sys.stderr)
    if not quick:  # the READMEs quote full runs only
        for readme in (ROOT / "README.md", ROOT / "bench" / "README.md"):
            quote(readme, "\n".join(md[2:]))


README_START = "<!-- bench-debezium:start -->"
README_END = "<!-- bench-debezium:end -->"


def quote(readme: Path, text: str) -> None:
    """Put `text` between the markers of `readme` (left alone when it has none)."""
    current = readme.read_text()
    start, end = current.find(README_START), current.find(README_END)
    if start < 0 or end < start:
        return
    head = current[: start + len(README_START)]
    readme.write_text(f"{head}\n{text.strip()}\n{current[end:]}")
