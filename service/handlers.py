"""Route handlers: parse, call the domain and the store, answer. Nothing else."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from marshmallow import ValidationError

from service import auth, credentials, customers, events, schemas, store
from service.errors import ApiError, validation_error
from service.keys import BODY, CALLER, POOL, SETTINGS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def claims_nonce(handler: Handler) -> Handler:
    """Marks a handler that claims the request's nonce in its own write statement."""
    handler.claims_nonce = True  # type: ignore[attr-defined]
    return handler


async def claim_nonce(request: web.Request) -> None:
    caller = request[CALLER]
    if not await credentials.claim_nonce(request.app[POOL], caller.service_id, caller.nonce):
        raise auth.replayed()


async def reject(request: web.Request, error: ApiError) -> ApiError:
    """A handler that claims its nonce itself must still answer a replay before anything."""
    await claim_nonce(request)
    return error


def _json_dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


async def json_object(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise await reject(
            request,
            ApiError(415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type must be application/json"),
        )
    try:
        doc = json.loads(request[BODY])
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise await reject(
            request, ApiError(400, "INVALID_JSON", "The body is not valid JSON")
        ) from None
    if not isinstance(doc, dict):
        raise await reject(request, ApiError(400, "INVALID_JSON", "The body must be a JSON object"))
    return doc


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@claims_nonce
async def register_customer(request: web.Request) -> web.Response:
    doc = await json_object(request)
    try:
        valid = schemas.load_create(doc)
    except ValidationError as exc:
        raise await reject(request, validation_error(schemas.dotted(exc.messages))) from None

    settings = request.app[SETTINGS]
    customer_id = valid["customerId"]
    now = customers.utc_now()
    data = customers.mutable_fields(valid, settings.limits.as_json())
    keys = customers.ApiKeys.generate()
    event_id, payload = events.envelope(
        events.REGISTERED,
        customers.representation(customer_id, valid["status"], data, now, now),
        now,
    )
    caller = request[CALLER]
    try:
        created = await store.register(
            request.app[POOL],
            caller.service_id,
            caller.nonce,
            store.NewCustomer(customer_id, valid["status"], data, now, keys.hashes()),
            store.Event(event_id, customers.lane_of(customer_id), payload),
        )
    except store.Replayed:
        raise auth.replayed() from None
    if not created:
        raise ApiError(
            409,
            "CUSTOMER_EXISTS",
            f"Customer with ID '{customer_id}' already exists",
            customerId=customer_id,
        )
    body = {
        "customerId": customer_id,
        "customerName": data["customerName"],
        "status": valid["status"],
        "createdAt": customers.rfc3339(now),
        "apiKeys": {"primary": keys.primary, "secondary": keys.secondary},
        "limits": data["limits"],
    }
    return web.json_response(
        body,
        status=201,
        dumps=_json_dumps,
        headers={"Location": f"/xcloud/v1/customers/{customer_id}"},
    )
