"""Route handlers: parse, call the domain and the store, answer. Nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from marshmallow import ValidationError

from service import metrics
from service.api import jsonbody, schemas
from service.api.errors import (
    ApiError,
    ErrorCode,
    customer_not_found,
    json_response,
    validation_error,
)
from service.api.keys import (
    ANSWERS,
    BODY,
    CALLER,
    CURSORS,
    GAUGES,
    IDEMPOTENCY_KEY,
    LIST_QUERY,
    POOL,
    SETTINGS,
    WAKER,
)
from service.api.pagination import Position
from service.auth import signing
from service.db import api_keys as api_key_rows
from service.db import customers, nonces
from service.domain import api_keys, customer, events
from service.outbox.lanes import RELAYS_SQL
from service.usecases import unit_of_work

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def claim_nonce(request: web.Request) -> None:
    caller = request[CALLER]
    if not await nonces.claim_nonce(request.app[POOL], caller.service_id, caller.nonce):
        raise signing.replayed()


async def reject(request: web.Request, error: ApiError) -> ApiError:
    """A handler that claims its nonce itself must still answer a replay before anything.
    A request refused before its write that reuses a key with a stored answer differs
    from the stored request (which passed these checks): 422, as contract 12 says."""
    await claim_nonce(request)
    key = request.get(IDEMPOTENCY_KEY)
    if key is not None and await unit_of_work.key_used(
        request.app[POOL], request[CALLER].service_id, key
    ):
        return unit_of_work.reused()
    return error


async def idempotency_key(request: web.Request) -> str | None:
    """The validated Idempotency-Key of a write (400 for a bad one), remembered on the
    request for `reject`."""
    try:
        key = unit_of_work.key_of(request.headers)
    except ApiError as exc:
        raise await reject(request, exc) from None
    if key is not None:
        request[IDEMPOTENCY_KEY] = key
    return key


def write_scope(request: web.Request, key: str | None, body: Any) -> unit_of_work.Scope:
    caller = request[CALLER]
    return unit_of_work.Scope(
        caller.service_id,
        caller.nonce,
        key,
        unit_of_work.fingerprint(request.method, request.path, body),
        request.match_info.route.resource.canonical,
    )


async def write_transaction(
    request: web.Request,
    scope: unit_of_work.Scope,
    effects: unit_of_work.Effects | None,
    combined: unit_of_work.Combined | None = None,
) -> web.Response:
    """`effects` in the transaction that claims the nonce and keeps the key's answer."""
    try:
        response = await unit_of_work.write_transaction(
            request.app[POOL], request.app[ANSWERS], scope, effects, combined
        )
    except customers.Replayed:
        raise signing.replayed() from None
    request.app[WAKER].poke()  # committed: the relays may publish its event now
    return response


async def json_object(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise await reject(
            request,
            ApiError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json"),
        )
    try:
        doc = jsonbody.loads(request[BODY])
    except jsonbody.InvalidJson as exc:
        raise await reject(request, ApiError(ErrorCode.INVALID_JSON, str(exc))) from None
    if not isinstance(doc, dict):
        raise await reject(
            request, ApiError(ErrorCode.INVALID_JSON, "The body must be a JSON object")
        )
    return doc


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
    relays = {"live": row["live"], "lanesHeld": row["lanes_held"], "lanes": customer.LANES}
    return json_response({"status": "ready", "database": "ok", "relays": relays})


async def prometheus(request: web.Request) -> web.Response:
    body = metrics.render(request.app[POOL], request.app[GAUGES])
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    from service.api.openapi import build_spec

    return json_response(build_spec())


async def register_customer(request: web.Request) -> web.Response:
    key = await idempotency_key(request)
    doc = await json_object(request)
    try:
        valid = schemas.load_create(doc)
    except ValidationError as exc:
        raise await reject(request, validation_error(schemas.dotted(exc.messages))) from None

    settings = request.app[SETTINGS]
    customer_id = valid["customerId"]
    now = customer.utc_now()
    data = customer.mutable_fields(valid, settings.limits.as_json())
    keys = customer.ApiKeys.generate()
    representation = customer.representation(customer_id, valid["status"], data, now, now)
    event_id, payload = events.envelope(events.REGISTERED, representation, now)
    caller = request[CALLER]
    new = customers.NewCustomer(customer_id, valid["status"], data, now, keys.hashes())
    event = customers.Event(event_id, customer.lane_of(customer_id), payload)

    exists = ApiError(
        ErrorCode.CUSTOMER_EXISTS,
        f"Customer with ID '{customer_id}' already exists",
        customerId=customer_id,
    )

    def answer(created: bool) -> web.Response:
        if not created:
            raise exists
        body = {
            "customerId": customer_id,
            "customerName": data["customerName"],
            "status": valid["status"],
            "createdAt": representation["createdAt"],
            "apiKeys": {"primary": keys.primary, "secondary": keys.secondary},
            "limits": data["limits"],
        }
        return json_response(
            body, status=201, headers={"Location": f"/xcloud/v1/customers/{customer_id}"}
        )

    if key is None:  # the one-statement path
        try:
            created = await customers.register(
                request.app[POOL], caller.service_id, caller.nonce, new, event
            )
        except customers.Replayed:
            raise signing.replayed() from None
        return answer(created)

    scope = write_scope(request, key, doc)
    answers = request.app[ANSWERS]
    created_answer, exists_answer = answer(True), exists.response()

    async def combined(conn: Any) -> tuple[Any, web.Response]:
        # Both possible answers sealed ahead: the statement stores the one that happens.
        headers, created_body = unit_of_work.stored_form(answers, scope, created_answer)
        _, exists_body = unit_of_work.stored_form(answers, scope, exists_answer)
        row = await customers.register_keyed(
            conn,
            caller.service_id,
            caller.nonce,
            new,
            event,
            customers.KeyedAnswers(
                key, scope.request_hash, headers, created_body, exists_body, answers.ttl_seconds
            ),
        )
        if row["request_hash"] is not None:
            return row, created_answer  # a stored answer: replayed, nothing written
        return None, created_answer if row["created"] else exists_answer

    return await write_transaction(request, scope, None, combined)


# --- reads and updates (contract sections 5-8) ------------------------------------


def _path_customer_id(request: web.Request) -> str:
    customer_id = request.match_info["customerId"]
    if not customer.is_customer_id(customer_id):
        raise validation_error({"customerId": ["Not a valid customer id."]})
    return customer_id


def _represent(row: Any) -> dict[str, Any]:
    return customer.representation(
        row["customer_id"],
        row["status"],
        orjson.loads(row["data"]),
        row["created_at"],
        row["updated_at"],
    )


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
    body = {"customers": [_represent(r) for r in page], "nextCursor": next_cursor}
    return json_response(body)


async def get_customer(request: web.Request) -> web.Response:
    customer_id = _path_customer_id(request)
    row = await customers.get(request.app[POOL], customer_id)
    if row is None:
        raise customer_not_found(customer_id)
    tag = _etag(row)
    if _matches(request.headers.get("If-None-Match", ""), tag):
        return web.Response(status=304, headers={"ETag": tag})
    return json_response(_represent(row), headers={"ETag": tag})


async def update_customer(request: web.Request) -> web.Response:
    key = await idempotency_key(request)
    try:
        customer_id = _path_customer_id(request)
    except ApiError as exc:
        raise await reject(request, exc) from None
    doc = await json_object(request)
    try:
        valid = schemas.load_update(doc)
    except ValidationError as exc:
        raise await reject(request, validation_error(schemas.dotted(exc.messages))) from None
    if valid.get("customerId", customer_id) != customer_id:
        raise await reject(
            request, validation_error({"customerId": ["Must equal the customer id in the path."]})
        )

    if_match = request.headers.get("If-Match")

    async def effects(conn: Any) -> web.Response:
        locked = await customers.lock_customer(conn, customer_id)
        row = locked.row
        if row is None:
            raise customer_not_found(customer_id)
        if if_match is not None and not _matches(if_match, _etag(row)):
            raise ApiError(
                ErrorCode.PRECONDITION_FAILED, "If-Match does not match the current ETag"
            )
        old = orjson.loads(row["data"])
        data = customer.mutable_fields(valid, old["limits"])
        if data == old and valid["status"] == row["status"]:
            body, tag = _represent(row), _etag(row)  # nothing changed: no event
        else:
            now = max(customer.utc_now(), row["updated_at"])
            body = customer.representation(
                customer_id, valid["status"], data, row["created_at"], now
            )
            event_id, payload = events.envelope(events.UPDATED, body, now)
            version = await locked.save(
                valid["status"],
                data,
                now,
                customers.Event(event_id, customer.lane_of(customer_id), payload),
            )
            tag = customer.etag(customer_id, version, now)
        return json_response(body, headers={"ETag": tag})

    return await write_transaction(request, write_scope(request, key, doc), effects)


# --- API keys (contract section 13) --------------------------------------------------


async def rotate_api_key(request: web.Request) -> web.Response:
    key = await idempotency_key(request)
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
        raise await reject(request, validation_error(details))

    async def effects(conn: Any) -> web.Response:
        if (await customers.lock_customer(conn, customer_id)).row is None:
            raise customer_not_found(customer_id)
        now = customer.utc_now()
        new_key = api_keys.new_key()
        data = {"customerId": customer_id, "slot": slot, "rotatedAt": customer.rfc3339(now)}
        event_id, payload = events.envelope(events.KEY_ROTATED, data, now)
        lane = customer.lane_of(customer_id)
        await api_key_rows.rotate(
            conn, customer_id, slot, new_key, now, (event_id, lane, events.KEY_ROTATED, payload)
        )
        body = {"customerId": customer_id, "slot": slot, "apiKey": new_key}
        return json_response({**body, "rotatedAt": data["rotatedAt"]})

    return await write_transaction(request, write_scope(request, key, None), effects)


def api_key_not_found() -> ApiError:
    return ApiError(ErrorCode.API_KEY_NOT_FOUND, "No customer holds this API key")


async def verify_api_key(request: web.Request) -> web.Response:
    doc = await json_object(request)
    try:
        api_key = schemas.VERIFY_REQUEST.load(doc)["apiKey"]
    except ValidationError as exc:
        raise await reject(request, validation_error(schemas.dotted(exc.messages))) from None
    if not api_keys.well_formed(api_key):  # no key has this form: no lookup
        error = await reject(request, api_key_not_found())  # a replayed nonce: 401 first
        metrics.API_KEY_VERIFICATIONS.labels("malformed").inc()
        raise error
    caller = request[CALLER]
    fresh, found = await api_key_rows.verify(
        request.app[POOL], caller.service_id, caller.nonce, api_key
    )
    if not fresh:
        raise signing.replayed()
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
