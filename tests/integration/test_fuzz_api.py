"""Schemathesis against the running app: every answer documented, never a 5xx.

The real app (real PostgreSQL) listens on loopback in a thread of its own, because
schemathesis' pytest integration is synchronous: the cases are sent with `requests`
while the server's event loop keeps running. The schema is the document the app serves
at `/openapi.json`.

Signing (contract section 2) is a `requests` auth hook (`HmacSigner`), which runs on the
`PreparedRequest`: after `requests` has built the final URL and body, right before the
bytes go out. It signs the method, `path_url` (path and query exactly as sent), the body
bytes and the Content-Type header read from the prepared request itself, and replaces
whatever schemathesis generated for the auth headers. The body is serialised here
(`_json_bytes`) and handed to schemathesis as bytes (`data=`), so nothing re-encodes it.

Passes:
- signed: positive and negative cases (examples, coverage and fuzzing phases) for every
  operation: no 5xx; status code, content type, headers and body as documented; and no
  answer saying the signature or Content-MD5 was wrong (that would be a bug here or in
  the server's verifier);
- unsigned (the generated auth headers, no signature), signed with a wrong secret, and
  signed 305 s in the past: every /xcloud/v1 answer is a documented 401 with
  WWW-Authenticate and the expected code, and the request claimed no nonce and wrote
  no customer.

Reproducible: a fixed seed, Hypothesis derandomised, no example database.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core import NotSet

from service import config
from service.api.app import API_PREFIX, create_app
from service.auth import signing
from service.auth.secretbox import SecretBox
from service.db import connect, credentials, migrate

# Hypothesis keeps caches (not examples: database=None) under .hypothesis/ of the working
# directory; keep them with the project's other caches, which git ignores.
set_hypothesis_home_dir(Path(__file__).resolve().parents[2] / ".cache" / "hypothesis")

SERVICE_ID = "fuzz-service"
AUTH_HEADERS = ("Authorization", signing.TIMESTAMP_HEADER, signing.NONCE_HEADER, "Content-MD5")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
SEED = 20240101


def _config(*, max_examples: int, mode: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {
                "mode": mode,
                "max-examples": max_examples,
                "deterministic": True,
                "database": "none",  # nothing written under .hypothesis/
            },
        }
    )


class ThreadServer:
    """The real app on 127.0.0.1, served by an event loop in a background thread."""

    def __init__(self, settings: config.Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="fuzz-server", daemon=True
        )
        self.url = ""
        self.secret = ""
        self._pool: asyncpg.Pool | None = None
        self._runner: web.AppRunner | None = None

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def start(self) -> ThreadServer:
        self.thread.start()
        self.run(self._start())
        return self

    def stop(self) -> None:
        try:
            self.run(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            self.loop.close()

    async def _start(self) -> None:
        await migrate.apply(self.settings.database_url)
        self._pool = await connect.create_pool(self.settings.database_url, size=2)
        await self._pool.execute(
            "TRUNCATE customers, outbox, auth_nonces, service_credentials RESTART IDENTITY"
        )
        async with self._pool.acquire() as conn:
            box = SecretBox(self.settings.secret_key)
            self.secret = await credentials.add(conn, box, SERVICE_ID)
        self._runner = web.AppRunner(create_app(self.settings), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._pool is not None:
            await self._pool.close()

    def fetchval(self, sql: str, *args: Any) -> Any:
        assert self._pool is not None
        return self.run(self._pool.fetchval(sql, *args))


class HmacSigner(requests.auth.AuthBase):
    """Signs the prepared request: what is signed is what `requests` is about to send."""

    def __init__(self, service_id: str, secret: str, *, clock_offset: int = 0) -> None:
        self.service_id = service_id
        self.secret = secret
        self.clock_offset = clock_offset

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body
        assert body is None or isinstance(body, bytes), f"body not sent as bytes: {body!r}"
        for name in AUTH_HEADERS:  # whatever schemathesis generated for them
            request.headers.pop(name, None)
        assert request.method is not None
        request.headers.update(
            signing.sign_request(
                service_id=self.service_id,
                secret=self.secret,
                method=request.method,
                path_and_query=request.path_url,
                body=body or None,
                content_type=request.headers.get("Content-Type", ""),
                timestamp=int(time.time()) + self.clock_offset,
            )
        )
        return request


def _json_bytes(body: Any) -> bytes:
    """The body as schemathesis' JSON serialiser would send it, but as our own bytes."""
    if isinstance(body, bytes):
        return body
    text = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    # A lone surrogate cannot be UTF-8: send the bytes anyway, the server must say 400.
    return text.encode("utf-8", "surrogatepass")


def _header(response: schemathesis.Response, name: str) -> str | None:
    for key, values in response.headers.items():
        if key.lower() == name.lower():
            return values[0]
    return None


def _error_code(response: schemathesis.Response) -> str | None:
    if not response.content:
        return None
    try:
        return response.json().get("error")
    except (ValueError, AttributeError):
        return None


def _is_api(case: schemathesis.Case) -> bool:
    return case.path.startswith(API_PREFIX)


@pytest.fixture(scope="module")
def server(settings: config.Settings) -> Iterator[ThreadServer]:
    srv = ThreadServer(settings).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def http(server: ThreadServer) -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture(scope="module")
def signed_schema(server: ThreadServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(
        f"{server.url}/openapi.json", config=_config(max_examples=100, mode="all")
    )


@pytest.fixture(scope="module")
def unsigned_schema(server: ThreadServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(
        f"{server.url}/openapi.json", config=_config(max_examples=15, mode="positive")
    )


@pytest.fixture(autouse=True)
def _schemathesis_on_pytest_9_2(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's lazy schemas read and write `item._nodeid` (to name each
    operation's subtest), which pytest 9.2 no longer has: give it one."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


# Every operation. The explicit filter keeps GET /openapi.json in: schemathesis leaves out
# the operation that served the schema unless a filter selects it.
signed = schemathesis.pytest.from_fixture("signed_schema").include(path_regex="^/")
unsigned = schemathesis.pytest.from_fixture("unsigned_schema").include(path_regex=f"^{API_PREFIX}/")


@signed.parametrize()
def test_signed_requests_get_documented_answers(
    case: schemathesis.Case, server: ThreadServer, http: requests.Session
) -> None:
    body = {} if isinstance(case.body, NotSet) else {"data": _json_bytes(case.body)}
    response = case.call_and_validate(
        base_url=server.url,
        session=http,
        checks=CHECKS,
        auth=HmacSigner(SERVICE_ID, server.secret),
        **body,
    )
    if _is_api(case):
        assert response.request.body == body.get("data"), "the body sent is not the body signed"
        # A signed request that fails authentication: the signing or the verifier is off.
        assert response.status_code != 401, (response.status_code, response.content)
        assert _error_code(response) != "CONTENT_MD5_MISMATCH", response.content


@unsigned.parametrize()
def test_unsigned_requests_get_documented_401s(
    case: schemathesis.Case, server: ThreadServer, http: requests.Session
) -> None:
    # The auth headers as generated from the schema (patterns, not a signature).
    _assert_rejected(
        case, server, http, None, {"AUTH_REQUIRED", "STALE_REQUEST", "INVALID_SIGNATURE"}
    )


@unsigned.parametrize()
def test_requests_signed_with_a_wrong_secret_get_invalid_signature(
    case: schemathesis.Case, server: ThreadServer, http: requests.Session
) -> None:
    _assert_rejected(
        case, server, http, HmacSigner(SERVICE_ID, "x" + server.secret), {"INVALID_SIGNATURE"}
    )


@unsigned.parametrize()
def test_stale_signed_requests_get_stale_request(
    case: schemathesis.Case, server: ThreadServer, http: requests.Session
) -> None:
    signer = HmacSigner(SERVICE_ID, server.secret, clock_offset=-(signing.WINDOW_SECONDS + 5))
    _assert_rejected(case, server, http, signer, {"STALE_REQUEST"})


def _assert_rejected(
    case: schemathesis.Case,
    server: ThreadServer,
    http: requests.Session,
    signer: HmacSigner | None,
    codes: set[str],
) -> None:
    kwargs: dict[str, Any] = {} if signer is None else {"auth": signer}
    if not isinstance(case.body, NotSet):
        kwargs["data"] = _json_bytes(case.body)
    customer_id = case.body.get("customerId") if isinstance(case.body, dict) else None
    before = _customers_with_id(server, customer_id)
    response = case.call_and_validate(base_url=server.url, session=http, checks=CHECKS, **kwargs)
    assert response.status_code == 401, (response.status_code, response.content)
    assert _header(response, "WWW-Authenticate") == signing.SCHEME
    if case.method != "HEAD":  # HEAD answers carry no body
        assert _error_code(response) in codes, response.content
    # A rejected request changes nothing: it claims no nonce and writes no customer.
    nonce = response.request.headers.get(signing.NONCE_HEADER, "")
    claimed = server.fetchval("SELECT count(*) FROM auth_nonces WHERE nonce = $1", nonce)
    assert claimed == 0, nonce
    assert _customers_with_id(server, customer_id) == before, customer_id


def _customers_with_id(server: ThreadServer, customer_id: Any) -> int:
    return server.fetchval(
        "SELECT count(*) FROM customers WHERE customer_id = $1", str(customer_id)
    )
