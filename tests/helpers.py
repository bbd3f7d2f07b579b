"""Shared test data and tools."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

ROOT = Path(__file__).resolve().parent.parent

# Hypothesis keeps caches (not examples: database=None) under .hypothesis/ of the working
# directory; keep them with the project's other caches, which git ignores.
set_hypothesis_home_dir(ROOT / ".cache" / "hypothesis")

# The property tests' settings: derandomised and without an example database, so a run is
# the same everywhere.
PROPERTY = settings(
    database=None,
    derandomize=True,
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)

SECRET_KEY = "test-secret-key-" + "k" * 32

# The request body of ../shared/v1-customers-post.md, as it stands.
DOC_EXAMPLE: dict[str, Any] = {
    "customerId": "FST-1536316721808-NewCustomer",
    "customerName": "Dewatering Solutions Inc",
    "description": "Municipal water management services",
    "contactInfo": {
        "email": "contact@dewatering-solutions.com",
        "phone": "+1-555-0123",
        "address": {
            "street": "123 Industrial Drive",
            "city": "Springfield",
            "state": "IL",
            "country": "USA",
            "postalCode": "62701",
        },
    },
    "businessInfo": {
        "industry": "Water Management",
        "sector": "Municipal Services",
        "timezone": "America/Chicago",
    },
    "settings": {"dataRetentionDays": 365, "alertFrequency": "immediate", "reportingEnabled": True},
    "status": "ACTIVE",
}
# A customer's keys as contract section 4 shows them, in its order.
SECTION_4_KEYS = [
    "customerId",
    "customerName",
    "description",
    "contactInfo",
    "businessInfo",
    "settings",
    "location",
    "status",
    "limits",
    "createdAt",
    "updatedAt",
]


def example(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(DOC_EXAMPLE)
    body.update(changes)
    return body


async def row_counts(pool) -> tuple[int, int]:
    """(customers, outbox rows)"""
    return (
        await pool.fetchval("SELECT count(*) FROM customers"),
        await pool.fetchval("SELECT count(*) FROM outbox"),
    )


class TcpProxy:
    """A loopback TCP forwarder in front of a real server, to cut the line on demand."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._links.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        """Refuse new connections and drop the open ones: the server seems gone."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._links):
            w.transport.abort()
        self._links.clear()

    async def restore(self) -> None:
        await self.start()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_healthy(url: str, timeout: float = 60) -> None:
    """Until GET /healthz answers 200 (a server process starting)."""
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("server did not become healthy")


def signed_json(
    credential: tuple[str, str],
    body: bytes,
    path: str = "/xcloud/v1/customers",
    method: str = "POST",
) -> dict[str, str]:
    """The auth headers (and Content-Type) of a JSON request, for tests that send it raw."""
    from service.auth import signing

    service_id, secret = credential
    return signing.sign_request(
        service_id=service_id,
        secret=secret,
        method=method,
        path_and_query=path,
        body=body,
        content_type="application/json",
    )


# --- `xcloud` as a subprocess ------------------------------------------------------
# Every test that runs the CLI launches it through these, the way a user runs it:
# `python -m service.cli ARGS` from the repository root, with the environment given.


def xcloud_argv(*args: str, python: str = sys.executable, module: str = "service.cli") -> list[str]:
    """The command line of `xcloud ARGS` (`module` lets a test wrap the CLI, `python` lets it
    use another virtualenv's interpreter)."""
    return [python, "-m", module, *args]


def clean_env(**env: str) -> dict[str, str]:
    """This process's environment without the service's own variables, plus `env`: a CLI run
    sees only what its test gives it."""
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("XCLOUD_", "DATABASE_", "KAFKA_"))
    }
    return {**base, **env}


def spawn_xcloud(
    *args: str,
    env: dict[str, str],
    python: str = sys.executable,
    module: str = "service.cli",
    cwd: str | Path = ROOT,
    **popen: Any,
) -> subprocess.Popen:
    """`xcloud ARGS` started in the background (serve, relay); `popen` is passed to Popen."""
    return subprocess.Popen(
        xcloud_argv(*args, python=python, module=module), cwd=cwd, env=env, **popen
    )


def run_xcloud(
    *args: str,
    env: dict[str, str],
    python: str = sys.executable,
    cwd: str | Path = ROOT,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """`xcloud ARGS` run to its end, its output captured as text. Blocks the event loop: only
    for commands that do not talk to an in-process test server (see `xcloud`)."""
    return subprocess.run(
        xcloud_argv(*args, python=python),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def last_error_line(self) -> str:
        return self.stderr.strip().splitlines()[-1]


async def xcloud(
    *args: str, env: dict[str, str], stdin: str | None = None, timeout: float = 120
) -> CliRun:
    """`xcloud ARGS` run to its end without blocking the event loop (the in-process test
    server it talks to answers on this loop)."""
    proc = await asyncio.create_subprocess_exec(
        *xcloud_argv(*args),
        env=env,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(
        proc.communicate(stdin.encode() if stdin is not None else None), timeout=timeout
    )
    assert proc.returncode is not None
    return CliRun(proc.returncode, out.decode(), err.decode())
