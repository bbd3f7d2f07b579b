"""Private PostgreSQL and Kafka deployments for the fault scenarios that need more than
the single local instances of scripts/services.sh: a three-broker KRaft cluster, and a
PostgreSQL primary with a synchronous streaming standby. Plain processes, ports below
the ephemeral range (a client reconnecting to a dead server's port inside it can connect
to itself), state in a temporary folder, everything stopped and removed afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaClient
from aiokafka.admin import AIOKafkaAdminClient

ROOT = Path(__file__).resolve().parents[2]
KAFKA_LIBS = ROOT / ".cache" / "kafka" / "libs"


def low_free_ports(count: int, start: int) -> list[int]:
    """`count` free loopback ports from `start` on, below the ephemeral range."""
    ports: list[int] = []
    port = start
    while len(ports) < count:
        if port >= 32768:
            raise RuntimeError("no free port below the ephemeral range")
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                ports.append(port)
            except OSError:
                pass
        port += 1
    return ports


def _pg_bin() -> Path:
    versions = Path("/usr/lib/postgresql")
    for candidate in [versions / "15" / "bin", *versions.glob("*/bin")]:
        if (candidate / "pg_ctl").exists():
            return candidate
    raise RuntimeError("PostgreSQL binaries not found (scripts/services.sh installs them)")


def _as_postgres(*argv: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *map(str, argv)], check=True, capture_output=True
    )


# --- Kafka: three brokers ---------------------------------------------------------------


class KafkaCluster:
    """Three KRaft nodes (broker + controller each), replication factor 3,
    min.insync.replicas 2: a write is acknowledged once two brokers have it."""

    def __init__(self, nodes: int = 3) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="xcloud-kafka-cluster-"))
        ports = low_free_ports(2 * nodes, 29500)
        self.broker_ports = ports[:nodes]
        self.controller_ports = ports[nodes:]
        self.procs: dict[int, subprocess.Popen] = {}
        self.cluster_id = ""

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.broker_ports)

    def _java(self) -> list[str]:
        return [
            "java",
            "-Xms128m",
            "-Xmx384m",
            "-XX:+UseG1GC",
            f"-Dlog4j.configuration=file:{ROOT / 'infra' / 'kafka' / 'log4j.properties'}",
            "-cp",
            f"{KAFKA_LIBS}/*",
        ]

    def _config(self, node: int) -> Path:
        voters = ",".join(
            f"{i}@127.0.0.1:{p}" for i, p in enumerate(self.controller_ports, start=1)
        )
        bport, cport = self.broker_ports[node - 1], self.controller_ports[node - 1]
        path = self.dir / f"node{node}.properties"
        path.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    f"node.id={node}",
                    f"controller.quorum.voters={voters}",
                    f"listeners=PLAINTEXT://127.0.0.1:{bport},CONTROLLER://127.0.0.1:{cport}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{bport}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={self.dir / f'data{node}'}",
                    "num.partitions=6",
                    "default.replication.factor=3",
                    "min.insync.replicas=2",
                    "offsets.topic.replication.factor=3",
                    "transaction.state.log.replication.factor=3",
                    "transaction.state.log.min.isr=2",
                    "unclean.leader.election.enable=false",
                    "group.initial.rebalance.delay.ms=0",
                    "num.network.threads=2",
                    "num.io.threads=2",
                    "replica.lag.time.max.ms=10000",
                    "",
                ]
            )
        )
        return path

    async def start(self) -> None:
        if not (KAFKA_LIBS / ".complete").exists():
            raise RuntimeError("Kafka jars missing: run scripts/services.sh start kafka")
        self.cluster_id = (
            subprocess.run(
                [*self._java(), "kafka.tools.StorageTool", "random-uuid"],
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        for node in range(1, len(self.broker_ports) + 1):
            subprocess.run(
                [
                    *self._java(),
                    "kafka.tools.StorageTool",
                    "format",
                    "-c",
                    str(self._config(node)),
                    "-t",
                    self.cluster_id,
                    "--ignore-formatted",
                ],
                check=True,
                capture_output=True,
            )
        for node in range(1, len(self.broker_ports) + 1):
            self.start_node(node)
        await self.wait_all_up()

    def start_node(self, node: int) -> None:
        log = open(self.dir / f"node{node}.log", "ab")  # noqa: SIM115 - lives with the process
        self.procs[node] = subprocess.Popen(
            [*self._java(), "kafka.Kafka", str(self.dir / f"node{node}.properties")],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill_node(self, node: int) -> None:
        proc = self.procs.pop(node)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    async def wait_all_up(self, timeout: float = 120) -> None:
        """Every broker registered and answering metadata."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000)
            try:
                await admin.start()
                cluster = await admin.describe_cluster()
                if len(cluster["brokers"]) == len(self.broker_ports):
                    return
            except Exception:
                pass
            finally:
                with contextlib.suppress(Exception):
                    await admin.close()
            await asyncio.sleep(1)
        raise RuntimeError(f"the Kafka cluster did not come up; logs in {self.dir}")

    async def leader_of(self, topic: str, partition: int) -> int:
        client = AIOKafkaClient(bootstrap_servers=self.bootstrap)
        try:
            await client.bootstrap()
            await client.force_metadata_update()
            await client._wait_on_metadata(topic)
            from aiokafka.structs import TopicPartition

            leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
            if leader is None or leader < 0:
                raise RuntimeError(f"no leader for {topic}/{partition}")
            return leader
        finally:
            await client.close()

    def stop(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            proc.wait()
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


# --- PostgreSQL: primary + synchronous standby ------------------------------------------


class PostgresPair:
    """A primary whose every commit waits until the standby has flushed it to disk
    (`synchronous_standby_names`, `synchronous_commit = on`): a write answered 2xx
    survives the loss of the primary. The standby runs with no synchronous standby of
    its own, so once promoted it commits alone."""

    STANDBY_NAME = "xcloud_standby"

    def __init__(self) -> None:
        # The postgres user must be able to reach its data: /var/tmp, not a private folder.
        self.dir = Path("/var/tmp") / f"xcloud-faults-pg-{uuid.uuid4().hex[:8]}"
        self.primary_port, self.standby_port = low_free_ports(2, 25500)
        self.bin = _pg_bin()
        self.primary_dir = self.dir / "primary"
        self.standby_dir = self.dir / "standby"

    def url(self, database: str) -> str:
        hosts = f"127.0.0.1:{self.primary_port},127.0.0.1:{self.standby_port}"
        return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write"

    @property
    def primary_base(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.primary_port}"

    def _start(self, data: Path, port: int, *options: str) -> None:
        opts = " ".join([f"-p {port}", "-k ''", "-c unix_socket_directories=''", *options])
        _as_postgres(
            self.bin / "pg_ctl", "start", "-D", data, "-w", "-t", "60",
            "-l", data / "server.log", "-o", opts,
        )  # fmt: skip

    def start(self) -> None:
        self.dir.mkdir(parents=True)
        shutil.chown(self.dir, "postgres")
        os.chmod(self.dir, 0o700)
        _as_postgres(
            self.bin / "initdb", "-D", self.primary_dir, "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--locale=C.UTF-8",
        )  # fmt: skip
        with (self.primary_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "listen_addresses = '127.0.0.1'\nmax_connections = 300\n"
                "shared_buffers = 128MB\nwal_level = replica\nmax_wal_senders = 5\n"
                "hot_standby = on\nsynchronous_commit = on\nlog_min_messages = warning\n"
            )
        # Synchronous only on the primary's command line: the standby copies
        # postgresql.conf, and a promoted standby waiting for a standby of its own would
        # never commit.
        self._start(
            self.primary_dir, self.primary_port, f"-c synchronous_standby_names={self.STANDBY_NAME}"
        )
        _as_postgres(
            self.bin / "pg_basebackup", "-D", self.standby_dir, "-R", "-X", "stream",
            "-d", f"host=127.0.0.1 port={self.primary_port} user=postgres "
            f"application_name={self.STANDBY_NAME}",
        )  # fmt: skip
        self._start(self.standby_dir, self.standby_port)
        self._wait_sync()

    def _psql(self, port: int, sql: str) -> str:
        return subprocess.run(
            [str(self.bin / "psql"), "-X", "-qAt", "-h", "127.0.0.1", "-p", str(port),
             "-U", "postgres", "-d", "postgres", "-c", sql],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip

    def _wait_sync(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._psql(self.primary_port, "SELECT sync_state FROM pg_stat_replication") == (
                "sync"
            ):
                return
            time.sleep(0.5)
        raise RuntimeError("the standby did not become synchronous")

    def kill_primary(self) -> None:
        """SIGKILL of the postmaster and every backend: the machine is gone."""
        pid = int((self.primary_dir / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(
            ["pgrep", "-P", str(pid)], capture_output=True, text=True
        ).stdout.split()
        for victim in [pid, *map(int, children)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)

    def promote_standby(self) -> None:
        _as_postgres(self.bin / "pg_ctl", "promote", "-D", self.standby_dir, "-w", "-t", "60")

    def stop(self) -> None:
        for data in (self.primary_dir, self.standby_dir):
            if (data / "postmaster.pid").exists():
                with contextlib.suppress(subprocess.CalledProcessError):
                    _as_postgres(self.bin / "pg_ctl", "stop", "-D", data, "-m", "immediate")
        shutil.rmtree(self.dir, ignore_errors=True)
