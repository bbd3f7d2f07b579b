"""Route handlers: parse the request, call a use case (writes) or read a view (reads),
and turn the result into HTTP. Nothing else.

A write's nonce is claimed by its unit of work (`write`), whatever its handler raises
before the write; a read's by the middleware, before the handler runs.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from marshmallow import ValidationError

from service import metrics
from service.api import idempotency, jsonbody, schemas
from service.api.errors import (
    ApiError,
    customer_not_found,
    json_bytes_response,
    json_response,
    validation_error,
)
from service.api.keys import (
    ANSWERS,
    BODY,
    CALLER,
    CURSORS,
    GAUGES,
    LIST_QUERY,
    POOL,
    SETTINGS,
    WAKER,
)
from service.api.pagination import Position
from service.auth import signing
from service.db import customers
from service.db.nonces import Replayed
from service.domain import api_keys, customer
from service.error_codes import ErrorCode
from service.outbox.lanes import RELAYS_SQL
from service.usecases import api_keys as key_cases
from service.usecases import customers as customer_cases
from service.usecases.unit_of_work import (
    Answer,
    KeyInUse,
    KeyReused,
    Request,
    UnitOfWork,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
WriteHandler = Callable[[web.Request, UnitOfWork], Awaitable[web.StreamResponse]]


def write(handler: WriteHandler) -> Handler:
    """A write route (routes.Route.write): its handler gets the request's unit of work.
    Whatever the handler raises before the write (a bad key, body or path), the unit of
    work claims the nonce first, so a replay is answered 401 before anything, and a
    refused request that reuses a key with a stored answer gets 422 (it differs from the
    stored one, which passed the same checks)."""

    @functools.wraps(handler)
    async def route(request: web.Request) -> web.StreamResponse:
        caller, resource = request[CALLER], request.match_info.route.resource
        assert resource is not None  # a handler runs only on the route it matched
        uow = UnitOfWork(
            request.app[POOL],
            request.app[ANSWERS],
            request.app[WAKER],
            Request(
                caller.service_id,
                caller.nonce,
                request.method,
                request.path,
                resource.canonical,
            ),
        )
        try:
            return await handler(request, uow)
        except (Replayed, KeyInUse, KeyReused) as exc:
            raise _refusal(exc) from None
        except Exception:
            if uow.claimed:
                raise
            try:
                await uow.refuse()
            except (Replayed, KeyReused) as exc:
                raise _refusal(exc) from None
            raise

    return route


def _refusal(exc: Exception) -> Exception:
    if isinstance(exc, Replayed):
        return signing.replayed()
    return idempotency.in_use() if isinstance(exc, KeyInUse) else idempotency.reused()


def _http(answer: Answer) -> web.Response:
    headers = dict(answer.headers)
    if answer.replayed:
        headers[idempotency.REPLAYED_HEADER] = "true"
    return json_bytes_response(answer.body, status=answer.status, headers=headers)


def _json_answer(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, orjson.dumps(body), headers or {})


def _error_answer(error: ApiError) -> Answer:
    return _json_answer(error.body(), status=error.status, headers=error.headers)


def json_object(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise ApiError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json")
    try:
        doc = jsonbody.loads(request[BODY])
    except jsonbody.InvalidJson as exc:
        raise ApiError(ErrorCode.INVALID_JSON, str(exc)) from None
    if not isinstance(doc, dict):
        raise ApiError(ErrorCode.INVALID_JSON, "The body must be a JSON object")
    return doc


def _valid(load: Callable[[dict[str, Any]], dict[str, Any]], doc: dict[str, Any]) -> dict[str, Any]:
    try:
        return load(doc)
    except ValidationError as exc:
        raise validation_error(schemas.dotted(exc.messages)) from None


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the database answers. Relays run in processes of their own, so a worker
    cannot see their state; it reports what PostgreSQL's lock table says of them (live
    relays anywhere against this database and the lanes they hold), in the same round
    trip that checks the database. Reported, not required."""
    try:
        row = await asyncio.wait_for(request.app[POOL].fetchrow(RELAYS_SQL), 2.0)
    except TimeoutError:
        raise ApiError(ErrorCode.SERVICE_UNAVAILABLE, "The database does not answer") from None
    assert row is not None  # the statement always returns one row
    relays = {"live": row["live"], "lanesHeld": row["lanes_held"], "lanes": customer.LANES}
    return json_response({"status": "ready", "database": "ok", "relays": relays})


async def prometheus(request: web.Request) -> web.Response:
    body = metrics.render(request.app[POOL], request.app[GAUGES])
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    from service.api.openapi import build_spec

    return json_response(build_spec())


async def register_customer(request: web.Request, uow: UnitOfWork) -> web.StreamResponse:
    uow.key = idempotency.key_of(request.headers)
    uow.body = doc = json_object(request)
    valid = _valid(schemas.load_create, doc)

    def render(result: customer_cases.Registered) -> Answer:
        shown = result.representation
        if not result.created:
            return _error_answer(customer_exists(shown["customerId"]))
        body = {
            "customerId": shown["customerId"],
            "customerName": shown["customerName"],
            "status": shown["status"],
            "createdAt": shown["createdAt"],
            "apiKeys": {"primary": result.keys.primary, "secondary": result.keys.secondary},
            "limits": shown["limits"],
        }
        location = f"/xcloud/v1/customers/{shown['customerId']}"
        return _json_answer(body, status=201, headers={"Location": location})

    limits = request.app[SETTINGS].limits.as_json()
    return _http(await customer_cases.register(uow, valid, limits, render))


def customer_exists(customer_id: str) -> ApiError:
    return ApiError(
        ErrorCode.CUSTOMER_EXISTS,
        f"Customer with ID '{customer_id}' already exists",
        customerId=customer_id,
    )


# --- reads and updates (contract sections 5-8) ------------------------------------


def _path_customer_id(request: web.Request) -> str:
    customer_id = request.match_info["customerId"]
    if not customer.is_customer_id(customer_id):
        raise validation_error({"customerId": ["Not a valid customer id."]})
    return customer_id


def _etag(row: Any) -> str:
    return customer.etag(row["customer_id"], row["version"], row["updated_at"])


def _matches(header: str, tag: str) -> bool:
    """If-Match / If-None-Match: "*" or a list of strong entity tags."""
    return header.strip() == "*" or tag in (t.strip() for t in header.split(","))


async def list_customers(request: web.Request) -> web.Response:
    try:
        query = schemas.load_list_query(request.app[LIST_QUERY], request.query)
    except ValidationError as exc:
        raise validation_error(exc.messages_dict) from None  # flat: parameter -> messages
    limit, status, after = query.limit, query.status, query.after

    rows = await customers.list_page(
        request.app[POOL],
        limit=limit + 1,  # one more tells whether there is a next page
        status=status,
        after=None if after is None else (after.created_at, after.customer_id),
    )
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1]
        next_cursor = request.app[CURSORS].encode(
            Position(last["created_at"], last["customer_id"]), status
        )
    body = {"customers": [customer_cases.represent(r) for r in page], "nextCursor": next_cursor}
    return json_response(body)


async def get_customer(request: web.Request) -> web.Response:
    customer_id = _path_customer_id(request)
    row = await customers.get(request.app[POOL], customer_id)
    if row is None:
        raise customer_not_found(customer_id)
    tag = _etag(row)
    if _matches(request.headers.get("If-None-Match", ""), tag):
        return web.Response(status=304, headers={"ETag": tag})
    return json_response(customer_cases.represent(row), headers={"ETag": tag})


async def update_customer(request: web.Request, uow: UnitOfWork) -> web.StreamResponse:
    uow.key = idempotency.key_of(request.headers)
    customer_id = _path_customer_id(request)
    uow.body = doc = json_object(request)
    valid = _valid(schemas.load_update, doc)
    if valid.get("customerId", customer_id) != customer_id:
        raise validation_error({"customerId": ["Must equal the customer id in the path."]})
    if_match = request.headers.get("If-Match")
    matches = None if if_match is None else functools.partial(_matches, if_match)
    effects = customer_cases.update(customer_id, valid, matches)
    return _http(await uow.run(effects, _updated))


def _updated(result: customer_cases.UpdateResult) -> Answer:
    if isinstance(result, customer_cases.NotFound):
        return _error_answer(customer_not_found(result.customer_id))
    if isinstance(result, customer_cases.PreconditionFailed):
        return _error_answer(
            ApiError(ErrorCode.PRECONDITION_FAILED, "If-Match does not match the current ETag")
        )
    return _json_answer(result.representation, headers={"ETag": result.etag})


# --- API keys (contract section 13) --------------------------------------------------


async def rotate_api_key(request: web.Request, uow: UnitOfWork) -> web.StreamResponse:
    uow.key = idempotency.key_of(request.headers)
    details: dict[str, list[str]] = {}
    customer_id = request.match_info["customerId"]
    if not customer.is_customer_id(customer_id):
        details["customerId"] = ["Not a valid customer id."]
    slot = request.match_info["slot"]
    if slot not in api_keys.SLOTS:
        details["slot"] = [f"Must be one of: {', '.join(api_keys.SLOTS)}."]
    if request[BODY]:
        details["_schema"] = ["This request takes no body."]
    if details:
        raise validation_error(details)
    return _http(await uow.run(key_cases.rotate(customer_id, slot), _rotated))


def _rotated(result: key_cases.Rotated | customer_cases.NotFound) -> Answer:
    if isinstance(result, customer_cases.NotFound):
        return _error_answer(customer_not_found(result.customer_id))
    body = {"customerId": result.customer_id, "slot": result.slot, "apiKey": result.api_key}
    return _json_answer({**body, "rotatedAt": result.rotated_at})


def api_key_not_found() -> ApiError:
    return ApiError(ErrorCode.API_KEY_NOT_FOUND, "No customer holds this API key")


async def verify_api_key(request: web.Request, uow: UnitOfWork) -> web.StreamResponse:
    api_key = _valid(schemas.VERIFY_REQUEST.load, json_object(request))["apiKey"]
    if not api_keys.well_formed(api_key):  # no key has this form: no lookup
        await uow.refuse()  # a replayed nonce: 401 first
        metrics.API_KEY_VERIFICATIONS.labels("malformed").inc()
        raise api_key_not_found()
    found = await key_cases.verify(uow, api_key)
    if found is None:
        metrics.API_KEY_VERIFICATIONS.labels("unknown").inc()
        raise api_key_not_found()
    metrics.API_KEY_VERIFICATIONS.labels("found").inc()
    return json_response(
        {"customerId": found.customer_id, "slot": found.slot, "status": found.status}
    )


async def customers_exist(request: web.Request) -> web.Response:
    ids = request.match_info["customerId"].split(",")
    if len(ids) > 100:
        raise validation_error({"customerIds": ["At most 100 ids."]})
    bad = [i for i in ids if not customer.is_customer_id(i)]
    if bad:
        raise validation_error({"customerIds": ["Not a valid customer id."]})
    unique = list(dict.fromkeys(ids))
    found = await customers.existing(request.app[POOL], unique)
    missing = [i for i in unique if i not in found]
    if missing:
        return web.Response(status=404, headers={"X-Missing-Customer-Ids": ",".join(missing)})
    if len(unique) > 1:
        return web.Response(status=200)
    tag = _etag(found[unique[0]])  # one id: the same answer as GET, 304 included
    status = 304 if _matches(request.headers.get("If-None-Match", ""), tag) else 200
    return web.Response(status=status, headers={"ETag": tag})
