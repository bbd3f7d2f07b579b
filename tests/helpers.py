"""Shared test data and tools."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import socket
import time
from typing import Any

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
