"""The OpenAPI 3.1 document of the service (contract section 10: GET /openapi.json).

Bodies come from the marshmallow schemas the handlers validate with, through apispec's
MarshmallowPlugin, so the document cannot drift from the validation rules. What those
schemas cannot say (rules checked in `@validates` methods, statuses, headers, the HMAC
scheme) is written here, next to the contract section it comes from.

OpenAPI 3.1 rather than 3.0: it is JSON Schema, so a nullable field is exactly
`"type": [..., "null"]` and a nullable object `anyOf: [$ref, {"type": "null"}]`,
where apispec's 3.0 form for the latter would accept any object at all.
"""

from __future__ import annotations

import functools
import importlib.metadata
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import INCLUDE, Schema, fields, validate

from service.api import idempotency, schemas
from service.auth import signing
from service.domain import api_keys, customer
from service.usecases import unit_of_work

TITLE = "XCloud customer registry"
OPENAPI_VERSION = "3.1.0"
SECURITY_SCHEME = "XCloudHMAC"
_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_CUSTOMERS = "/xcloud/v1/customers"
_ONE_CUSTOMER = _CUSTOMERS + "/{customerId}"

# Every code an error body can carry: the contract's and aiohttp's own (service/api/errors.py).
ERROR_CODES = (
    "VALIDATION_ERROR",
    "INVALID_JSON",
    "CONTENT_MD5_MISMATCH",
    "BAD_REQUEST",
    "AUTH_REQUIRED",
    "STALE_REQUEST",
    "INVALID_SIGNATURE",
    "REPLAYED_REQUEST",
    "NOT_FOUND",
    "CUSTOMER_NOT_FOUND",
    "METHOD_NOT_ALLOWED",
    "CUSTOMER_EXISTS",
    "PRECONDITION_FAILED",
    "IDEMPOTENCY_KEY_IN_USE",
    "IDEMPOTENCY_KEY_REUSED",
    "API_KEY_NOT_FOUND",
    "PAYLOAD_TOO_LARGE",
    "REQUEST_TIMEOUT",
    "UNSUPPORTED_MEDIA_TYPE",
    "INTERNAL_ERROR",
    "SERVICE_UNAVAILABLE",
    "HTTP_ERROR",
)
_AUTH_CODES = ("AUTH_REQUIRED", "STALE_REQUEST", "INVALID_SIGNATURE", "REPLAYED_REQUEST")


# --- answer shapes the handlers build by hand -------------------------------------


class ErrorSchema(Schema):
    class Meta:
        unknown = INCLUDE  # the contract's `{"error", "message", ...more}`

    error = fields.String(required=True, validate=validate.OneOf(ERROR_CODES))
    message = fields.String(required=True, metadata={"description": "Human text."})
    details = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={"description": "VALIDATION_ERROR: dotted field path -> messages."},
    )
    customerId = fields.String(metadata={"description": "CUSTOMER_EXISTS, CUSTOMER_NOT_FOUND."})
    requestId = fields.String(metadata={"description": "INTERNAL_ERROR: the X-Request-Id."})


class CustomerListSchema(Schema):
    customers = fields.List(fields.Nested(schemas.CustomerSchema), required=True)
    nextCursor = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Pass as `cursor` for the next page; null on the last."},
    )


class HealthSchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ok"]))


class ReadinessSchema(Schema):
    class Meta:
        unknown = INCLUDE

    status = fields.String(required=True, validate=validate.OneOf(["ready"]))
    database = fields.String()
    relay = fields.Raw(metadata={"description": "The outbox relay's state in this process."})


# --- what apispec cannot infer from the schemas -------------------------------------


class _Converter(MarshmallowPlugin.Converter):
    # map_to_openapi_type writes into this table; apispec's own is shared by every
    # converter in the process, so ours is a copy.
    field_mapping = dict(MarshmallowPlugin.Converter.field_mapping)


class _Plugin(MarshmallowPlugin):
    Converter = _Converter


# Rules enforced in `@validates` methods or by the handlers, keyed by (schema, field);
# subclasses inherit them, as they inherit the fields.
_FIELD_EXTRAS: dict[tuple[type[Schema], str], dict[str, Any]] = {
    (schemas.CustomerUpdateSchema, "customerName"): {
        "pattern": r"\S",
        "description": "Not blank.",
    },
    (schemas.ContactInfoSchema, "email"): {"format": "email"},
    (schemas.ContactInfoSchema, "phone"): {
        "pattern": r"^[0-9+ .()\-]+$",
        "description": "`+`, digits, spaces, `-`, `.`, `(`, `)`; 7 to 15 digits in all.",
    },
    (schemas.BusinessInfoSchema, "timezone"): {
        "description": "An IANA time zone name such as `America/Chicago`.",
        "examples": ["America/Chicago"],
    },
    **{
        (schemas.SettingsSchema, name): {
            "default": default,
            "description": "Left out or null: the default.",
        }
        for name, default in customer.DEFAULT_SETTINGS.items()
    },
    (schemas.CustomerSchema, "createdAt"): {"format": "date-time"},
    (schemas.CustomerSchema, "updatedAt"): {"format": "date-time"},
    (schemas.CustomerCreatedSchema, "createdAt"): {"format": "date-time"},
    (schemas.CustomerCreatedSchema, "status"): {"enum": list(customer.STATUSES)},
}


def _ecma_pattern(python_pattern: str) -> str:
    """A marshmallow Regexp as a JSON Schema pattern.

    Regexp uses re.match, anchored at the start only, and our patterns end in `\\Z`;
    JSON Schema patterns are unanchored ECMA-262 expressions, which have no `\\Z`.
    """
    core = python_pattern.removeprefix("^")
    anchored_end = core.endswith(r"\Z")
    core = core.removesuffix(r"\Z")
    if "|" in core:
        core = f"(?:{core})"
    return "^" + core + ("$" if anchored_end else "")


def _regexp_pattern(self: Any, field: fields.Field, **_: Any) -> dict[str, Any]:
    regexps = [v for v in field.validators if isinstance(v, validate.Regexp)]
    return {"pattern": _ecma_pattern(regexps[0].regex.pattern)} if regexps else {}


def _field_extras(self: Any, field: fields.Field, **_: Any) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for (owner, name), values in _FIELD_EXTRAS.items():
        if field.name == name and isinstance(field.parent, owner):
            extra.update(values)
    return extra


# --- headers, parameters, security (contract sections 1, 2, 6-8) --------------------

_HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-Id": {
        "description": "The caller's own X-Request-Id if it was 1-128 of [A-Za-z0-9._-], "
        "else a new one. Logs carry it too.",
        "schema": {"type": "string"},
    },
    "WWW-Authenticate": {"schema": {"type": "string", "enum": [signing.SCHEME]}},
    "ETag": {
        "description": "Strong entity tag; changes on every change of the customer.",
        "schema": {"type": "string"},
    },
    "Location": {"schema": {"type": "string", "examples": [f"{_CUSTOMERS}/FST-20240101-a"]}},
    "X-Missing-Customer-Ids": {
        "description": "The ids that do not exist, comma-separated.",
        "schema": {"type": "string"},
    },
    "Retry-After": {"description": "Seconds.", "schema": {"type": "integer"}},
    idempotency.REPLAYED_HEADER: {
        "description": "`true` on the stored answer of an earlier request with the same "
        "Idempotency-Key; absent on a first answer.",
        "schema": {"type": "string", "enum": ["true"]},
    },
}

_CUSTOMER_ID_PATTERN = _ecma_pattern(customer.CUSTOMER_ID.pattern + r"\Z")

_PARAMETERS: dict[str, dict[str, Any]] = {
    idempotency.KEY_HEADER: {
        "in": "header",
        "name": idempotency.KEY_HEADER,
        "description": "Optional (contract section 12). The first answer 200, 201, 404, 409 "
        "or 412 is stored with the write for 24 hours (XCLOUD_IDEMPOTENCY_TTL_SECONDS) per "
        "service id; the same method, path and body (as parsed JSON) with the same key gets "
        "it back with `Idempotent-Replayed: true`, a different request 422 "
        "IDEMPOTENCY_KEY_REUSED, and one sent while the first still runs 409 "
        "IDEMPOTENCY_KEY_IN_USE with Retry-After: 1. Not part of the string to sign.",
        "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
    },
    "X-Request-Id": {
        "in": "header",
        "name": "X-Request-Id",
        "description": "Optional; echoed back when it is 1-128 of [A-Za-z0-9._-].",
        "schema": {"type": "string"},
    },
    "X-XCloud-Timestamp": {
        "in": "header",
        "name": signing.TIMESTAMP_HEADER,
        "required": True,
        "description": f"Unix time, whole seconds; within {signing.WINDOW_SECONDS} s of the "
        "server's clock.",
        "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"},
    },
    "X-XCloud-Nonce": {
        "in": "header",
        "name": signing.NONCE_HEADER,
        "required": True,
        "description": "New for every request.",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{16,64}$"},
    },
    "Content-MD5": {
        "in": "header",
        "name": "Content-MD5",
        "required": True,
        "description": "Base64 of the MD5 digest of the exact body bytes.",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9+/]{22}==$"},
    },
}

_HMAC_DESCRIPTION = f"""\
HMAC-SHA256 request signing (contract section 2).

`Authorization: {signing.SCHEME} <serviceId>:<signature>` where
`signature = base64(HMAC-SHA256(key = secret as UTF-8, msg = string to sign as UTF-8))`,
standard base64 with padding. Every request also sends `{signing.TIMESTAMP_HEADER}` (Unix
time, whole seconds), `{signing.NONCE_HEADER}` (16-64 of `[A-Za-z0-9_-]`, new for every
request) and, whenever it has a body, `Content-MD5` (base64 of the MD5 digest of the
exact body bytes).

The string to sign is these eight lines joined by `\\n`, with no newline at the end:

1. the method, upper case
2. the path as sent, percent-encoding untouched, without the query
3. the query string as sent (what follows `?`), or empty
4. the `Content-MD5` value, or empty
5. the `Content-Type` value, or empty
6. the `{signing.TIMESTAMP_HEADER}` value
7. the `{signing.NONCE_HEADER}` value
8. the service id

The server answers the first failure, in this order: 401 `AUTH_REQUIRED` (a header
missing or malformed), 401 `STALE_REQUEST` (timestamp more than {signing.WINDOW_SECONDS} s
away), 401 `INVALID_SIGNATURE` (unknown or revoked service, or wrong signature),
400 `CONTENT_MD5_MISMATCH`, 401 `REPLAYED_REQUEST` (nonce already used). Every 401
carries `WWW-Authenticate: {signing.SCHEME}`."""


# --- responses -----------------------------------------------------------------------

_FAILURES: dict[int, tuple[str, tuple[str, ...]]] = {
    400: ("The request is not valid", ()),
    401: ("Not authenticated", ("WWW-Authenticate",)),
    404: ("Not found; CUSTOMER_NOT_FOUND carries customerId", ()),
    409: ("Conflict; CUSTOMER_EXISTS carries customerId", ("Retry-After",)),
    412: ("If-Match does not match the current ETag", ()),
    422: ("The Idempotency-Key was used for a different request", ()),
    408: ("The request body did not arrive within the time allowed; the connection is closed", ()),
    413: ("Request body larger than 64 KiB", ()),
    415: ("Content-Type is not application/json", ()),
    500: ("Unexpected error; the body carries requestId", ()),
    503: ("The database is unavailable", ("Retry-After",)),
}


def _response(
    description: str,
    schema: Any = None,
    *,
    media_type: str = "application/json",
    headers: tuple[str, ...] = (),
) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "headers": {name: name for name in ("X-Request-Id", *headers)},
    }
    if schema is not None:
        answer["content"] = {media_type: {"schema": schema}}
    return answer


def _failure(status: int, codes: tuple[str, ...], *, with_body: bool = True) -> dict[str, Any]:
    description, headers = _FAILURES[status]
    schema = None
    if with_body:
        # Narrows the shared Error schema to the codes this answer can carry.
        only = {"type": "object", "properties": {"error": {"enum": list(codes)}}}
        schema = {"allOf": [ErrorSchema, only]}
    return _response(f"{description}: {', '.join(codes)}", schema, headers=headers)


def _api_operation(
    operation_id: str,
    summary: str,
    answers: dict[int, dict[str, Any]],
    *,
    codes: dict[int, tuple[str, ...]],
    parameters: tuple[Any, ...] = (),
    request_schema: type[Schema] | None = None,
    with_body: bool = True,
    idempotent: bool = False,
) -> dict[str, Any]:
    """A /xcloud/v1 operation: HMAC-signed, with the failures every such route shares."""
    # Any signed request with a body can fail its Content-MD5 check or be too large.
    shared = {400: ("CONTENT_MD5_MISMATCH",), 401: _AUTH_CODES, 413: ("PAYLOAD_TOO_LARGE",)}
    shared[408] = ("REQUEST_TIMEOUT",)  # a body that does not arrive in time
    shared |= {500: ("INTERNAL_ERROR",), 503: ("SERVICE_UNAVAILABLE",)}
    if idempotent:  # contract section 12
        codes = {**codes, 409: (*codes.get(409, ()), "IDEMPOTENCY_KEY_IN_USE")}
        codes[422] = ("IDEMPOTENCY_KEY_REUSED",)
        parameters = (*parameters, idempotency.KEY_HEADER)
    for status, own in codes.items():
        shared[status] = own + shared.get(status, ())
    failures = {status: _failure(status, c, with_body=with_body) for status, c in shared.items()}
    responses = {**answers, **failures}
    if idempotent:  # a stored answer comes back marked
        for status in unit_of_work.STORED_STATUSES & set(responses):
            headers = {
                **responses[status]["headers"],
                idempotency.REPLAYED_HEADER: idempotency.REPLAYED_HEADER,
            }
            responses[status] = {**responses[status], "headers": headers}
    signing = ["X-XCloud-Timestamp", "X-XCloud-Nonce"]
    if request_schema is not None:
        signing.append("Content-MD5")
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["customers"],
        "security": [{SECURITY_SCHEME: []}],
        "parameters": [*parameters, *signing, "X-Request-Id"],
        "responses": dict(sorted(responses.items())),
    }
    if request_schema is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": request_schema}},
        }
    return operation


def _public_operation(
    operation_id: str,
    summary: str,
    answer: dict[str, Any],
    *,
    uses_database: bool,
) -> dict[str, Any]:
    responses = {200: answer, 500: _failure(500, ("INTERNAL_ERROR",))}
    if uses_database:
        responses[503] = _failure(503, ("SERVICE_UNAVAILABLE",))
    return {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["operations"],
        "parameters": ["X-Request-Id"],
        "responses": dict(sorted(responses.items())),
    }


def _customer_id_parameter() -> dict[str, Any]:
    return {
        "in": "path",
        "name": "customerId",
        "required": True,
        "schema": {"type": "string", "pattern": _CUSTOMER_ID_PATTERN},
    }


def _paths() -> dict[str, dict[str, dict[str, Any]]]:
    created = _response(
        "Registered. The API keys are shown in this answer only.",
        schemas.CustomerCreatedSchema,
        headers=("Location",),
    )
    one = _response("The customer", schemas.CustomerSchema, headers=("ETag",))
    if_none_match = {
        "in": "header",
        "name": "If-None-Match",
        "description": "`*` or a list of entity tags: 304 when one matches.",
        "schema": {"type": "string"},
    }
    if_match = {
        "in": "header",
        "name": "If-Match",
        "description": "`*` or a list of entity tags: 412 unless one matches.",
        "schema": {"type": "string"},
    }
    list_query = (
        {
            "in": "query",
            "name": "limit",
            "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50},
        },
        {
            "in": "query",
            "name": "cursor",
            "description": "Opaque: the nextCursor of the previous page, with the same status.",
            "schema": {"type": "string"},
        },
        {
            "in": "query",
            "name": "status",
            "schema": {"type": "string", "enum": [*customer.STATUSES]},
        },
    )
    ids = {
        "in": "path",
        "name": "customerId",
        "required": True,
        "description": "1 to 100 customer ids separated by commas. (The route shares "
        "`{customerId}` with GET and PUT.)",
        "style": "simple",
        "explode": False,
        "schema": {
            "type": "array",
            "minItems": 1,
            "maxItems": 100,
            "items": {"type": "string", "pattern": _CUSTOMER_ID_PATTERN},
        },
    }
    return {
        _CUSTOMERS: {
            "post": _api_operation(
                "register_customer",
                "Register a customer",
                {201: created},
                codes={
                    400: ("VALIDATION_ERROR", "INVALID_JSON"),
                    409: ("CUSTOMER_EXISTS",),
                    415: ("UNSUPPORTED_MEDIA_TYPE",),
                },
                request_schema=schemas.CustomerCreateSchema,
                idempotent=True,
            ),
            "get": _api_operation(
                "list_customers",
                "List customers, ordered by createdAt then customerId",
                {200: _response("A page of customers", CustomerListSchema)},
                codes={400: ("VALIDATION_ERROR",)},
                parameters=list_query,
            ),
        },
        _ONE_CUSTOMER: {
            "get": _api_operation(
                "get_customer",
                "Get a customer",
                {200: one, 304: _response("If-None-Match matched", headers=("ETag",))},
                codes={400: ("VALIDATION_ERROR",), 404: ("CUSTOMER_NOT_FOUND",)},
                parameters=(_customer_id_parameter(), if_none_match),
            ),
            "put": _api_operation(
                "update_customer",
                "Replace a customer's mutable fields",
                {200: one},
                codes={
                    400: ("VALIDATION_ERROR", "INVALID_JSON"),
                    404: ("CUSTOMER_NOT_FOUND",),
                    412: ("PRECONDITION_FAILED",),
                    415: ("UNSUPPORTED_MEDIA_TYPE",),
                },
                parameters=(_customer_id_parameter(), if_match),
                request_schema=schemas.CustomerUpdateSchema,
                idempotent=True,
            ),
            "head": _api_operation(
                "customers_exist",
                "Whether every one of 1-100 customers exists",
                {
                    200: _response(
                        "Every id exists. ETag only when one distinct id was asked.",
                        headers=("ETag",),
                    ),
                    404: _response(
                        "At least one id does not exist", headers=("X-Missing-Customer-Ids",)
                    ),
                },
                codes={400: ("VALIDATION_ERROR",)},
                parameters=(ids,),
                with_body=False,  # HEAD: every answer, failures included, has no body
            ),
        },
        _ONE_CUSTOMER + "/api-keys/{slot}": {
            "post": _api_operation(
                "rotate_api_key",
                "Replace one of a customer's two API keys (the other keeps working)",
                {
                    200: _response(
                        "Rotated. The new key is shown in this answer only; the slot's old "
                        "key stopped working. A CustomerApiKeyRotated event was written.",
                        schemas.RotatedKeySchema,
                    )
                },
                codes={400: ("VALIDATION_ERROR",), 404: ("CUSTOMER_NOT_FOUND",)},
                parameters=(
                    _customer_id_parameter(),
                    {
                        "in": "path",
                        "name": "slot",
                        "required": True,
                        "schema": {"type": "string", "enum": list(api_keys.SLOTS)},
                    },
                ),
                idempotent=True,
            )
        },
        "/xcloud/v1/api-keys/verify": {
            "post": _api_operation(
                "verify_api_key",
                "Whose API key is this: one indexed lookup, changes nothing",
                {200: _response("A current key of a customer", schemas.VerifiedKeySchema)},
                codes={
                    400: ("VALIDATION_ERROR", "INVALID_JSON"),
                    404: ("API_KEY_NOT_FOUND",),
                    415: ("UNSUPPORTED_MEDIA_TYPE",),
                },
                request_schema=schemas.VerifyRequestSchema,
            )
        },
        "/healthz": {
            "get": _public_operation(
                "healthz",
                "Liveness",
                _response("The process runs", HealthSchema),
                uses_database=False,
            )
        },
        "/readyz": {
            "get": _public_operation(
                "readyz",
                "Readiness: the database answers",
                _response("Ready", ReadinessSchema),
                uses_database=True,
            )
        },
        "/metrics": {
            "get": _public_operation(
                "metrics",
                "Prometheus metrics",
                _response(
                    "Prometheus text exposition format",
                    {"type": "string"},
                    media_type="text/plain",
                ),
                uses_database=True,
            )
        },
        "/openapi.json": {
            "get": _public_operation(
                "openapi",
                "This document",
                _response("OpenAPI document", {"type": "object"}),
                uses_database=False,
            )
        },
    }


def _version() -> str:
    try:
        return importlib.metadata.version("xcloud-registry")
    except importlib.metadata.PackageNotFoundError:
        return "1"


@functools.cache
def build_spec() -> dict[str, Any]:
    """The whole document, built on first use. Shared: callers must not change it."""
    plugin = _Plugin()
    spec = APISpec(
        title=TITLE,
        version=_version(),
        openapi_version=OPENAPI_VERSION,
        plugins=[plugin],
        info={
            "description": "Every error is a status plus a JSON object "
            '`{"error": CODE, "message": text, ...}`; every response carries X-Request-Id.'
        },
    )
    spec.tag({"name": "customers", "description": "HMAC-signed customer API"})
    spec.tag({"name": "operations", "description": "Unauthenticated probes and documents"})
    # Our strict fields subclass the bare Field, which apispec would leave untyped.
    plugin.map_to_openapi_type(schemas.StrictInteger, "integer", None)
    plugin.map_to_openapi_type(schemas.StrictNumber, "number", None)
    plugin.map_to_openapi_type(schemas.StrictBoolean, "boolean", None)
    plugin.map_to_openapi_type(schemas.Text, fields.String)
    assert plugin.converter is not None
    plugin.converter.add_attribute_function(_regexp_pattern)
    plugin.converter.add_attribute_function(_field_extras)

    spec.components.schema("Error", schema=ErrorSchema)
    spec.components.schema("Customer", schema=schemas.CustomerSchema)
    for name, header in _HEADERS.items():
        spec.components.header(name, header)
    for name, parameter in _PARAMETERS.items():
        spec.components.parameter(name, parameter["in"], parameter)
    spec.components.security_scheme(
        SECURITY_SCHEME,
        {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": _HMAC_DESCRIPTION,
        },
    )
    for path, operations in _paths().items():
        spec.path(path, operations=operations)

    document = spec.to_dict()
    customer = document["components"]["schemas"]["Customer"]
    # Contract section 4: the representation always holds every field, null when absent.
    customer["required"] = sorted(customer["properties"])
    customer["description"] = (
        "Every field is present: absent optional values are null, settings has its "
        "defaults filled in. It never holds an API key."
    )
    return document


def documented_operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    """{(METHOD, path)} of the document, to compare with the application's router."""
    return {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in _HTTP_METHODS
    }
