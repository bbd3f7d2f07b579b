"""A signing client for the XCloud API, in the style of its existing callers.

    async with XCloudClient(url, service_id, secret) as xc:
        created = await xc.call("register_customer", body={...})

Failures raise XCloudError subclasses carrying the server's error code.

Every write is sent with an Idempotency-Key (contract section 12), a new one per call
unless the caller gives its own, and a timeout, a lost connection, a 5xx or a 409
IDEMPOTENCY_KEY_IN_USE is retried with the same key, a few times with backoff: a retry
of a write that did happen gets the first answer back (API keys included), not a 409.
Reads are retried the same way; nothing else is.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any, TypedDict
from urllib.parse import quote, urlencode

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from service.api.idempotency import KEY_HEADER
from service.api.routes import ROUTES, Route
from service.auth.signing import sign_request
from service.domain.customer import is_customer_id


class Endpoint(TypedDict):
    path: str
    verb: str
    md5: bool  # the body is signed with its Content-MD5
    write: bool  # sent with an Idempotency-Key
    safe: bool  # changes nothing, so retried as it is


def _endpoint(route: Route) -> Endpoint:
    return {
        "path": route.path,
        "verb": route.method,
        "md5": route.body is not None,
        "write": route.idempotent,
        "safe": not route.idempotent,  # reads, and verify: nothing changes but the nonce
    }


# The signed routes of the route table, by operation name (register_customer ...).
ENDPOINTS: dict[str, Endpoint] = {r.name: _endpoint(r) for r in ROUTES if r.signed}


def make_customer_id(identifier: str, timestamp_ms: int | None = None) -> str:
    """`FST-{timestamp}-{identifier}`, the id form of the location test service."""
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    customer_id = f"FST-{ts}-{identifier}"
    if not is_customer_id(customer_id):
        raise ValueError(f"not a valid customer id: {customer_id!r}")
    return customer_id


class XCloudError(Exception):
    def __init__(self, status: int, code: str, message: str, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body


class AuthenticationFailed(XCloudError):
    """401: AUTH_REQUIRED, STALE_REQUEST, INVALID_SIGNATURE, REPLAYED_REQUEST."""


class InvalidRequest(XCloudError):
    """400: VALIDATION_ERROR (see .body["details"]), INVALID_JSON, CONTENT_MD5_MISMATCH."""


class NotFound(XCloudError):
    pass


class Conflict(XCloudError):
    """409 CUSTOMER_EXISTS, or IDEMPOTENCY_KEY_IN_USE (when its retries ran out)."""


class KeyReused(XCloudError):
    """422 IDEMPOTENCY_KEY_REUSED: this key was used for another request."""


class PreconditionFailed(XCloudError):
    pass


class ServiceUnavailable(XCloudError):
    pass


class ServerError(XCloudError):
    pass


_BY_STATUS: dict[int, type[XCloudError]] = {
    400: InvalidRequest,
    401: AuthenticationFailed,
    404: NotFound,
    409: Conflict,
    412: PreconditionFailed,
    422: KeyReused,
    503: ServiceUnavailable,
}

_MAX_DELAY = 5.0


def _retry_after(resp: Response) -> float:
    try:
        return min(float(resp.headers.get("Retry-After", "0")), _MAX_DELAY)
    except ValueError:
        return 0.0


def _worth_retrying(resp: Response) -> bool:
    if resp.status >= 500:
        return True
    code = resp.body.get("error") if isinstance(resp.body, dict) else None
    return resp.status == 409 and code == "IDEMPOTENCY_KEY_IN_USE"


def error_for(status: int, body: dict[str, Any]) -> XCloudError:
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else XCloudError)
    return cls(status, str(body.get("error", "HTTP_ERROR")), str(body.get("message", "")), body)


@dataclass
class Response:
    status: int
    headers: CIMultiDict[str]  # case-insensitive, as HTTP headers are
    body: Any


def signing_session(**kwargs: Any) -> aiohttp.ClientSession:
    """An aiohttp session fit for signed requests; pass it to XCloudClient to share one."""
    # The server's own line limit: a HEAD's X-Missing-Customer-Ids may name 100 ids of the
    # longest form, over aiohttp's default 8190 bytes.
    session = aiohttp.ClientSession(max_line_size=16 * 1024, max_field_size=16 * 1024, **kwargs)
    # aiohttp resends a PUT or GET once, unchanged, when the server drops the connection:
    # with the same nonce, which the server rightly refuses (401 REPLAYED_REQUEST) when the
    # first attempt got through. Retries are ours, re-signed, with the same Idempotency-Key.
    # (A private flag: aiohttp's own test client clears it the same way.)
    session._retry_connection = False
    return session


class XCloudClient:
    def __init__(
        self,
        base_url: str,
        service_id: str,
        secret: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.2,
        idempotency_keys: bool = True,
    ) -> None:
        """`retries`: further attempts of a safe call or a keyed write after a timeout,
        a lost connection or a 5xx, `backoff` seconds apart at first, doubling, with
        jitter. `idempotency_keys=False` sends writes without a key, and never retries them."""
        self.base_url = base_url.rstrip("/")
        self.service_id = service_id
        self._secret = secret
        self._session = session
        self._own_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.retries = retries
        self.backoff = backoff
        self.idempotency_keys = idempotency_keys

    async def __aenter__(self) -> XCloudClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = signing_session(timeout=self._timeout)
        return self._session

    async def request(
        self,
        method: str,
        path_and_query: str,
        body: bytes | None = None,
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Sign and send one request exactly as given; never raises on an HTTP status."""
        signed = sign_request(
            service_id=self.service_id,
            secret=self._secret,
            method=method,
            path_and_query=path_and_query,
            body=body,
            content_type=content_type if body is not None else "",
        )
        signed.update(headers or {})
        url = URL(self.base_url + path_and_query, encoded=True)
        # A POST without a body (rotation) must not get aiohttp's default Content-Type:
        # it would not be the one signed.
        skip = ("Content-Type",) if body is None else ()
        async with self._http().request(
            method, url, data=body, headers=signed, skip_auto_headers=skip
        ) as resp:
            raw = await resp.read()
            parsed: Any = None
            if raw:
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    parsed = raw.decode("utf-8", "replace")
            return Response(resp.status, CIMultiDict(resp.headers), parsed)

    async def call(
        self,
        name: str,
        *,
        body: dict[str, Any] | None = None,
        query: dict[str, str | int | None] | None = None,
        idempotency_key: str | None = None,
        **path_params: str,
    ) -> Response:
        """Call an endpoint of ENDPOINTS by name; raise XCloudError on a 4xx/5xx.
        A write carries `idempotency_key` (default: a new random one)."""
        endpoint = ENDPOINTS[name]
        path = endpoint["path"].format(**{k: quote(v, safe=",") for k, v in path_params.items()})
        if query:
            path += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        raw = json.dumps(body).encode("utf-8") if endpoint["md5"] and body is not None else None
        headers: dict[str, str] = {}
        if endpoint["write"] and (self.idempotency_keys or idempotency_key is not None):
            headers[KEY_HEADER] = idempotency_key or uuid.uuid4().hex
        retries = self.retries if endpoint["safe"] or headers else 0
        resp = await self._send(endpoint["verb"], path, raw, headers, retries)
        if resp.status >= 400:
            body_obj = resp.body if isinstance(resp.body, dict) else {}
            if endpoint["verb"] == "HEAD" and resp.status == 404:
                return resp  # HEAD has no body: missing ids are in X-Missing-Customer-Ids
            raise error_for(resp.status, body_obj)
        return resp

    async def _send(
        self, verb: str, path: str, raw: bytes | None, headers: dict[str, str], retries: int
    ) -> Response:
        """One call, re-signed (a fresh nonce) on each attempt, the same key on each."""
        for attempt in range(retries + 1):
            last = attempt == retries
            try:
                resp = await self.request(verb, path, raw, headers=headers)
            except (aiohttp.ClientError, TimeoutError):
                if last:
                    raise
                wait = 0.0
            else:
                if last or not _worth_retrying(resp):
                    return resp
                wait = _retry_after(resp)
            delay = min(self.backoff * 2**attempt, _MAX_DELAY)
            await asyncio.sleep(max(wait, random.uniform(delay / 2, delay)))
        raise AssertionError("unreachable")

    async def register_customer(
        self, customer: dict[str, Any], *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        resp = await self.call("register_customer", body=customer, idempotency_key=idempotency_key)
        return resp.body

    async def get_customer(self, customer_id: str) -> dict[str, Any]:
        return (await self.call("get_customer", customerId=customer_id)).body

    async def list_customers(
        self, *, limit: int | None = None, status: str | None = None, cursor: str | None = None
    ) -> dict[str, Any]:
        query: dict[str, str | int | None] = {"limit": limit, "status": status, "cursor": cursor}
        return (await self.call("list_customers", query=query)).body

    async def update_customer(
        self, customer_id: str, customer: dict[str, Any], *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        resp = await self.call(
            "update_customer",
            body=customer,
            idempotency_key=idempotency_key,
            customerId=customer_id,
        )
        return resp.body

    async def rotate_api_key(
        self, customer_id: str, slot: str, *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """A new key for `slot` ("primary" or "secondary"); the answer holds it, once."""
        resp = await self.call(
            "rotate_api_key", idempotency_key=idempotency_key, customerId=customer_id, slot=slot
        )
        return resp.body

    async def verify_api_key(self, api_key: str) -> dict[str, Any]:
        """{customerId, slot, status}; NotFound (API_KEY_NOT_FOUND) for any other key."""
        return (await self.call("verify_api_key", body={"apiKey": api_key})).body

    async def missing_customers(self, customer_ids: list[str]) -> list[str]:
        """The ids of `customer_ids` (at most 100) that do not exist."""
        resp = await self.call("customers_exist", customerId=",".join(customer_ids))
        missing = resp.headers.get("X-Missing-Customer-Ids", "")
        return missing.split(",") if resp.status == 404 and missing else []
