"""The aiohttp application: factory, routes, middlewares and the resources it holds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
from aiohttp import web

from service import metrics
from service.api import handlers, httpserver
from service.api.errors import ApiError, from_http_exception
from service.api.keys import (
    ANSWERS,
    BODY,
    CALLER,
    CREDENTIALS,
    CURSORS,
    GAUGES,
    LIST_QUERY,
    POOL,
    REQUEST_ID,
    SETTINGS,
    WAKER,
)
from service.api.pagination import CursorSigner
from service.api.routes import BY_HANDLER, SERVED
from service.api.schemas import ListQuerySchema
from service.auth import signing
from service.auth.credentials import CredentialStore
from service.auth.secretbox import SecretBox
from service.config import Settings
from service.db import connect, idempotency_keys, nonces
from service.error_codes import ErrorCode
from service.outbox.lanes import LANE_LOCK
from service.outbox.wakeup import Waker
from service.usecases import unit_of_work

log = logging.getLogger("xcloud.api")
access_log = logging.getLogger("xcloud.access")

MAX_BODY = 64 * 1024
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# The database is down or unreachable: 503, not 500.
_DB_UNAVAILABLE = (*connect.UNAVAILABLE, asyncpg.PostgresConnectionError)


@web.middleware
async def error_middleware(request: web.Request, handler: handlers.Handler) -> web.StreamResponse:
    """Request id in and out; every failure as the contract's JSON error; one log line
    and the request metrics for every answer."""
    started = time.perf_counter()
    rid = request.headers.get("X-Request-Id", "")
    if not _SANE_REQUEST_ID.fullmatch(rid):
        rid = uuid.uuid4().hex
    request[REQUEST_ID] = rid
    try:
        response = await handler(request)
    except ApiError as exc:
        response = exc.response()
    except signing.AuthError as exc:
        headers = {"WWW-Authenticate": signing.SCHEME} if exc.status == 401 else None
        response = ApiError(exc.code, exc.message, headers=headers).response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = from_http_exception(exc).response()
    except _DB_UNAVAILABLE as exc:
        log.warning("database unavailable", extra={"request_id": rid, "error": type(exc).__name__})
        response = ApiError(
            ErrorCode.SERVICE_UNAVAILABLE,
            "The database is unavailable",
            headers={"Retry-After": "1"},
        ).response()
    except Exception:
        log.exception("unexpected error", extra={"request_id": rid})
        response = ApiError(ErrorCode.INTERNAL_ERROR, "Unexpected error", requestId=rid).response()
    response.headers["X-Request-Id"] = rid
    if response.status >= 400 and request.body_exists and not request.content.is_eof():
        response.force_close()  # a rejected request's unread body is not worth waiting for
    _observe(request, response.status, time.perf_counter() - started)
    return response


def _observe(request: web.Request, status: int, seconds: float) -> None:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    method = request.method if request.method in _METHODS else "OTHER"  # bounded labels
    metrics.REQUESTS.labels(method, route, status).inc()
    metrics.LATENCY.labels(method, route, status).observe(seconds)
    caller = request.get(CALLER)
    access_log.info(
        "request",
        extra={
            "request_id": request[REQUEST_ID],
            "service_id": caller.service_id if caller is not None else None,
            "method": request.method,
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
        },
    )


@web.middleware
async def auth_middleware(request: web.Request, handler: handlers.Handler) -> web.StreamResponse:
    """Contract section 2, in its order; the nonce is claimed last."""
    route = BY_HANDLER.get(request.match_info.handler)
    if route is None or not route.signed:
        return await handler(request)  # unknown routes get their 404/405 unauthenticated
    length = request.content_length
    if length is not None and length > MAX_BODY:
        # Answer before reading any of it, and close: the rest is never read.
        return _closing(ApiError(ErrorCode.PAYLOAD_TOO_LARGE, "Request body is larger than 64 KiB"))
    signed = signing.parse_headers(request.headers, has_body=request.body_exists)
    signing.check_fresh(signed, time.time())
    path, _, query = request.raw_path.partition("?")
    secret = await request.app[CREDENTIALS].secret_for(signed.service_id)
    signing.check_signature(
        signed,
        secret,
        method=request.method,
        path=path,
        query=query,
        content_type=request.headers.get("Content-Type", ""),
    )
    try:  # a body that trickles in must not hold a connection (and a slot) for ever
        body = (
            await asyncio.wait_for(request.read(), request.app[SETTINGS].body_timeout_seconds)
            if request.body_exists
            else b""
        )  # read() raises 413 past client_max_size
    except TimeoutError:
        return _closing(
            ApiError(ErrorCode.REQUEST_TIMEOUT, "The request body did not arrive in time")
        )
    except ConnectionError:  # the caller hung up mid-body: not the database's fault
        return _closing(ApiError(ErrorCode.BAD_REQUEST, "The connection closed before the body"))
    signing.check_content_md5(signed, body)
    request[BODY] = body
    request[CALLER] = signed
    if not route.write and not await nonces.claim_nonce(  # a read: claimed here
        request.app[POOL], signed.service_id, signed.nonce
    ):
        raise signing.replayed()
    return await handler(request)


def _closing(error: ApiError) -> web.Response:
    response = error.response()
    response.force_close()
    return response


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pool = await connect.create_pool(settings.database_url, size=settings.db_pool_size)
    app[POOL] = pool
    app[CREDENTIALS] = CredentialStore(pool, SecretBox(settings.secret_key))
    yield
    await pool.close()


@contextlib.asynccontextmanager
async def _repeating(
    work: Callable[[], Awaitable[None]], every: float, *, first: float = 0.0
) -> AsyncIterator[None]:
    """Runs `work` after `first` seconds, then every `every` seconds, in a task of its
    own while the context is open."""

    async def loop() -> None:
        this = asyncio.current_task()
        assert this is not None
        # Python 3.11's asyncio.wait_for (in gauges.refresh) loses a cancel that lands as
        # its query completes; the pending cancel request still ends the loop (a shutdown
        # hung on this, waiting for the task, under load).
        await asyncio.sleep(first)
        while not this.cancelling():
            await work()
            await asyncio.sleep(every)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _gauge_refresher(app: web.Application) -> AsyncIterator[None]:
    """Reads the database-derived metrics in the background: scrapes cost no query."""
    gauges = app[GAUGES] = metrics.DatabaseGauges()
    async with _repeating(
        lambda: gauges.refresh(app[POOL], LANE_LOCK), app[SETTINGS].metrics_refresh_seconds
    ):
        yield


async def _sweeper(app: web.Application) -> AsyncIterator[None]:
    """Deletes expired nonces and stored answers every minute, in small batches."""

    async def sweep() -> None:
        for table in (nonces.delete_expired_nonces, idempotency_keys.delete_expired):
            try:
                deleted = await table(app[POOL])
                while deleted > 0:
                    await asyncio.sleep(0)  # let requests in between batches
                    deleted = await table(app[POOL])
            except Exception:  # the next sweep tries again; requests are unaffected
                log.warning("could not delete expired rows", exc_info=True)

    settings = app[SETTINGS]
    app[ANSWERS] = unit_of_work.Answers(settings.secret_key, settings.idempotency_ttl_seconds)
    async with _repeating(sweep, 60, first=60):
        yield


async def _waker(app: web.Application) -> AsyncIterator[None]:
    """The relays run in processes of their own (never on this event loop); this only
    tells them, coalesced and off the request's path, that rows were committed."""
    settings = app[SETTINGS]
    waker = Waker(settings.database_url, interval=settings.wakeup_interval_ms / 1000)
    app[WAKER] = waker
    if settings.wakeup_interval_ms:
        waker.start()
    yield
    await waker.stop()


def create_app(settings: Settings) -> web.Application:
    """The API. With `settings.metrics_port` set, /healthz, /readyz and /metrics are not
    on it but on `create_ops_app(app)`, served on that port."""
    app = web.Application(
        middlewares=[error_middleware, auth_middleware],
        client_max_size=MAX_BODY,
        handler_args=httpserver.HANDLER_ARGS,
    )
    app[SETTINGS] = settings
    app[CURSORS] = CursorSigner(settings.secret_key)
    app[LIST_QUERY] = ListQuerySchema(app[CURSORS])
    app.cleanup_ctx.extend([_database, _gauge_refresher, _sweeper, _waker])
    _add_routes(app, ops=settings.metrics_port is None, api=True)
    return app


def _add_routes(app: web.Application, *, ops: bool, api: bool) -> None:
    """The table's ops routes, API routes or both: one resource per path, each method
    added as it is (no implicit HEAD for a GET)."""
    resources: dict[str, web.Resource] = {}
    for route, handler in SERVED:
        if not (ops if route.ops else api):
            continue
        if route.path not in resources:
            resources[route.path] = app.router.add_resource(route.path)
        resources[route.path].add_route(route.method, handler)


def create_ops_app(api: web.Application) -> web.Application:
    """/healthz, /readyz and /metrics alone, for XCLOUD_METRICS_PORT. They answer from
    the API app's pool and gauges, so `api` must be started first."""
    ops = web.Application(middlewares=[error_middleware], handler_args=httpserver.HANDLER_ARGS)
    _add_routes(ops, ops=True, api=False)

    async def share(ops: web.Application) -> None:
        ops[POOL] = api[POOL]
        ops[GAUGES] = api[GAUGES]

    ops.on_startup.append(share)
    return ops
