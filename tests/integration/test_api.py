"""The whole API against its OpenAPI document (schemathesis): every answer documented, never a 5xx.

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
  operation: no 5xx; status code, content type, headers and body as documented; valid
  data accepted and invalid data rejected (schemathesis' positive_data_acceptance and
  negative_data_rejection); and no answer saying the signature or Content-MD5 was wrong
  (that would be a bug here or in the server's verifier). Customers are registered
  before, and three in four well-formed generated ids are replaced by theirs, so GET,
  PUT, HEAD and rotation reach their 200s, not only 404s; the last test checks they did;
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
import zlib
from collections import Counter
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
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core import NotSet

from service import config
from service.api.app import create_app
from service.api.routes import API_PREFIX
from service.auth import signing
from service.auth.secretbox import SecretBox
from service.db import connect, credentials, migrate
from service.domain import customer
from tests.helpers import example

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
# Valid data must get one of these, the answers that depend on the state, not the data:
# 404 a well-formed id nobody registered; 409 a customer that exists; 412 an If-Match that
# does not match; 304 an If-None-Match that does; 422 an Idempotency-Key generated twice.
ACCEPTED = ["2xx", "304", "404", "409", "412", "422"]
# Invalid data must be refused, whatever the refusal (a replayed Idempotency-Key, say, is
# answered before the body is read): never accepted, never a server error.
REJECTED = ["4xx"]
# Registered before the fuzzing; generated ids are mapped onto them (see _use_existing_ids).
EXISTING = [f"FST-1700000000000-Fuzz{i}" for i in range(8)]
# (method, path template, status) of every signed answer: the last test reads it.
REACHED: Counter[tuple[str, str, int]] = Counter()


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
            "checks": {
                "positive_data_acceptance": {"expected-statuses": ACCEPTED},
                "negative_data_rejection": {"expected-statuses": REJECTED},
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
        await asyncio.to_thread(self._register_existing)

    def _register_existing(self) -> None:
        with requests.Session() as http:
            for customer_id in EXISTING:
                body = _json_bytes(example(customerId=customer_id))
                answer = http.post(
                    f"{self.url}{API_PREFIX}/customers",
                    data=body,
                    headers={"Content-Type": "application/json"},
                    auth=HmacSigner(SERVICE_ID, self.secret),
                    timeout=30,
                )
                assert answer.status_code == 201, answer.text

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


# Rules the document states in words only (a JSON Schema type cannot say "7 to 15 digits",
# "an IANA zone name", "an address email-validator accepts", "a cursor this service issued
# for this filter", "no NUL character", "not blank"): schema-valid data may break them,
# and a 400 naming only these is the server applying them.
RULES_IN_WORDS = {"contactInfo.phone", "businessInfo.timezone", "contactInfo.email", "cursor"}
MESSAGES_IN_WORDS = {
    "Must not contain NUL characters.",
    "Must be valid Unicode text.",
    "Must not be blank.",
}


def valid_data_accepted(
    ctx: Any, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """schemathesis' positive_data_acceptance, less the 400s of rules stated in words."""
    if response.status_code == 400 and _error_code(response) == "VALIDATION_ERROR":
        details = response.json().get("details") or {}
        if details and all(
            field in RULES_IN_WORDS or set(messages) <= MESSAGES_IN_WORDS
            for field, messages in details.items()
        ):
            return None
    return positive_data_acceptance(ctx, response, case)


def _use_existing_ids(case: schemathesis.Case) -> None:
    """Three in four well-formed ids in the path become ids of registered customers (picked
    from the generated id, so runs repeat). Malformed ids stay: they are what a negative
    case is about. A well-formed customerId in a PUT body follows the path's (the contract
    requires them equal, a rule the schema cannot state)."""
    params = case.path_parameters or {}
    for name in ("customerId", "customerIds"):
        value = params.get(name)
        if not isinstance(value, str) or not value:
            continue
        ids = value.split(",")
        pick = zlib.crc32(value.encode("utf-8", "surrogatepass"))
        if pick % 4 and all(customer.is_customer_id(i) for i in ids):
            params[name] = ",".join(EXISTING[(pick + n) % len(EXISTING)] for n in range(len(ids)))
    body, path_id = case.body, params.get("customerId")
    if (
        case.method == "PUT"
        and isinstance(body, dict)
        and isinstance(path_id, str)
        and isinstance(body.get("customerId"), str)
        and customer.is_customer_id(body["customerId"])
    ):
        body["customerId"] = path_id


@signed.parametrize()
def test_signed_requests_get_documented_answers(
    case: schemathesis.Case, server: ThreadServer, http: requests.Session
) -> None:
    _use_existing_ids(case)
    body = {} if isinstance(case.body, NotSet) else {"data": _json_bytes(case.body)}
    if _is_api(case):
        # HmacSigner replaces the auth headers with a signature: give the case valid ones
        # already, so that schemathesis judges it (positive or negative) by what is sent.
        case.headers = {
            **(case.headers or {}),
            **signing.sign_request(
                service_id=SERVICE_ID,
                secret=server.secret,
                method=case.method,
                path_and_query=case.formatted_path,
                body=body.get("data") or None,
                content_type="application/json" if body else "",
            ),
        }
    response = case.call_and_validate(
        base_url=server.url,
        session=http,
        checks=[*CHECKS, valid_data_accepted, negative_data_rejection],
        auth=HmacSigner(SERVICE_ID, server.secret),
        **body,
    )
    REACHED[case.method, case.path, response.status_code] += 1
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


def test_the_fuzzing_reached_the_success_paths() -> None:
    """Runs after the signed pass above (file order): the 200s of reads and writes on
    existing customers were really fuzzed, and so were the 404s and 400s."""
    one = f"{API_PREFIX}/customers/{{customerId}}"
    rotate = f"{one}/api-keys/{{slot}}"
    assert REACHED, "the signed pass did not run first"
    for wanted in [
        ("POST", f"{API_PREFIX}/customers", 201),
        ("GET", f"{API_PREFIX}/customers", 200),
        ("GET", one, 200),
        ("PUT", one, 200),
        ("HEAD", one, 200),  # schemathesis names HEAD's path like GET's
        ("POST", rotate, 200),
        ("GET", one, 404),
        ("PUT", one, 404),
        ("PUT", one, 400),
        ("POST", f"{API_PREFIX}/customers", 400),
    ]:
        assert REACHED[wanted] >= 3, (wanted, sorted(REACHED.items()))
