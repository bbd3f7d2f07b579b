"""The route table: every route of the service, once.

`create_app` registers the routes from it, the auth middleware reads from it whether a
route is signed and whether its handler claims the nonce itself, and the OpenAPI
document (`openapi.py`) is built from it: the error matrix, the headers and the
parameters follow from the fields below and from the schemas named here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from marshmallow import Schema

from service.api import handlers, schemas
from service.error_codes import ErrorCode

API_PREFIX = "/xcloud/v1"
_CUSTOMERS = f"{API_PREFIX}/customers"
_ONE_CUSTOMER = _CUSTOMERS + "/{customerId}"


@dataclass(frozen=True, slots=True)
class Answer:
    """A documented success (or non-error) answer."""

    description: str
    schema: type[Schema] | dict[str, Any] | None = None  # None: no body
    headers: tuple[str, ...] = ()  # besides X-Request-Id, which every answer has
    media_type: str = "application/json"


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: handlers.Handler | handlers.WriteHandler
    summary: str
    answers: Mapping[int, Answer]
    # The codes only this route answers. Those that follow from the fields below are
    # added where they are documented (openapi._error_codes): every route may answer
    # INTERNAL_ERROR; a signed one the auth codes, CONTENT_MD5_MISMATCH, REQUEST_TIMEOUT,
    # PAYLOAD_TOO_LARGE and SERVICE_UNAVAILABLE; a JSON `body` INVALID_JSON,
    # UNSUPPORTED_MEDIA_TYPE and VALIDATION_ERROR; a `query` VALIDATION_ERROR; an
    # `idempotent` one the IDEMPOTENCY_KEY_ codes.
    errors: tuple[ErrorCode, ...] = ()
    parameters: tuple[str, ...] = ()  # path and header parameters: openapi.PARAMETERS keys
    query: type[Schema] | None = None  # the schema the handler loads the query with
    body: type[Schema] | None = None  # the JSON body's schema: the request has a body
    idempotent: bool = False  # takes an Idempotency-Key (contract section 12)
    # A write: its handler takes the request's unit of work (handlers.write), which claims
    # the nonce in the write's own transaction (or first, for a request refused before
    # it), so the auth middleware does not claim it.
    write: bool = False
    ops: bool = False  # /healthz /readyz /metrics: on their own port with XCLOUD_METRICS_PORT
    operation_id: str = ""

    @property
    def signed(self) -> bool:
        """Contract section 2: every /xcloud/v1 route needs the HMAC signature."""
        return self.path.startswith(API_PREFIX + "/")

    @property
    def name(self) -> str:
        """The OpenAPI operationId: the handler's name unless given."""
        return self.operation_id or self.handler.__name__


_ONE = Answer("The customer", schemas.CustomerSchema, headers=("ETag",))

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        _CUSTOMERS,
        handlers.register_customer,
        "Register a customer",
        {
            201: Answer(
                "Registered. The API keys are shown in this answer only.",
                schemas.CustomerCreatedSchema,
                headers=("Location",),
            )
        },
        errors=(ErrorCode.CUSTOMER_EXISTS,),
        body=schemas.CustomerCreateSchema,
        idempotent=True,
        write=True,
    ),
    Route(
        "GET",
        _CUSTOMERS,
        handlers.list_customers,
        "List customers, ordered by createdAt then customerId",
        {200: Answer("A page of customers", schemas.CustomerListSchema)},
        query=schemas.ListQuerySchema,
    ),
    Route(
        "GET",
        _ONE_CUSTOMER,
        handlers.get_customer,
        "Get a customer",
        {200: _ONE, 304: Answer("If-None-Match matched", headers=("ETag",))},
        errors=(ErrorCode.VALIDATION_ERROR, ErrorCode.CUSTOMER_NOT_FOUND),
        parameters=("customerId", "If-None-Match"),
    ),
    Route(
        "PUT",
        _ONE_CUSTOMER,
        handlers.update_customer,
        "Replace a customer's mutable fields",
        {200: _ONE},
        errors=(ErrorCode.CUSTOMER_NOT_FOUND, ErrorCode.PRECONDITION_FAILED),
        parameters=("customerId", "If-Match"),
        body=schemas.CustomerUpdateSchema,
        idempotent=True,
        write=True,
    ),
    Route(
        "HEAD",
        _ONE_CUSTOMER,  # 1-100 comma-separated ids
        handlers.customers_exist,
        "Whether every one of 1-100 customers exists",
        {
            200: Answer(
                "Every id exists. ETag only when one distinct id was asked.", headers=("ETag",)
            ),
            404: Answer("At least one id does not exist", headers=("X-Missing-Customer-Ids",)),
        },
        errors=(ErrorCode.VALIDATION_ERROR,),
        parameters=("customerIds",),
    ),
    Route(
        "POST",
        _ONE_CUSTOMER + "/api-keys/{slot}",
        handlers.rotate_api_key,
        "Replace one of a customer's two API keys (the other keeps working)",
        {
            200: Answer(
                "Rotated. The new key is shown in this answer only; the slot's old key "
                "stopped working. A CustomerApiKeyRotated event was written.",
                schemas.RotatedKeySchema,
            )
        },
        errors=(ErrorCode.VALIDATION_ERROR, ErrorCode.CUSTOMER_NOT_FOUND),
        parameters=("customerId", "slot"),
        idempotent=True,
        write=True,
    ),
    Route(
        "POST",
        f"{API_PREFIX}/api-keys/verify",
        handlers.verify_api_key,
        "Whose API key is this: one indexed lookup, changes nothing",
        {200: Answer("A current key of a customer", schemas.VerifiedKeySchema)},
        errors=(ErrorCode.API_KEY_NOT_FOUND,),
        body=schemas.VerifyRequestSchema,
        write=True,
    ),
    Route(
        "GET",
        "/healthz",
        handlers.healthz,
        "Liveness",
        {200: Answer("The process runs", schemas.HealthSchema)},
        ops=True,
    ),
    Route(
        "GET",
        "/readyz",
        handlers.readyz,
        "Readiness: the database answers",
        {200: Answer("Ready", schemas.ReadinessSchema)},
        errors=(ErrorCode.SERVICE_UNAVAILABLE,),
        ops=True,
    ),
    Route(
        "GET",
        "/metrics",
        handlers.prometheus,
        "Prometheus metrics",
        {
            200: Answer(
                "Prometheus text exposition format", {"type": "string"}, media_type="text/plain"
            )
        },
        errors=(ErrorCode.SERVICE_UNAVAILABLE,),
        ops=True,
        operation_id="metrics",
    ),
    Route(
        "GET",
        "/openapi.json",
        handlers.openapi,
        "This document",
        {200: Answer("OpenAPI document", {"type": "object"})},
    ),
)


def _served(route: Route) -> handlers.Handler:
    if route.write:
        return handlers.write(route.handler)  # type: ignore[arg-type]
    return route.handler  # type: ignore[return-value]


# What aiohttp serves for each route, and the auth middleware's lookup (aiohttp gives it
# the matched handler).
SERVED: tuple[tuple[Route, handlers.Handler], ...] = tuple((r, _served(r)) for r in ROUTES)
BY_HANDLER: Mapping[Any, Route] = {handler: route for route, handler in SERVED}
