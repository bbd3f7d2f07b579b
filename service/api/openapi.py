"""The OpenAPI 3.1 document of the service (contract section 10: GET /openapi.json).

The operations come from the route table (routes.ROUTES): their parameters, answers and
error matrix follow from each route's fields and from the ErrorCode enum. Bodies and the
list's query parameters come from the marshmallow schemas the handlers validate with,
through apispec's MarshmallowPlugin, so the document cannot drift from the validation
rules. What those cannot say (rules checked in `@validates` methods, headers, the HMAC
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
from apispec.ext.marshmallow.openapi import OpenAPIConverter
from marshmallow import Schema, fields, validate

from service.api import idempotency, schemas
from service.api.routes import API_PREFIX, ROUTES, Route
from service.auth import signing
from service.domain import api_keys, customer
from service.error_codes import ErrorCode
from service.usecases import unit_of_work

TITLE = "XCloud customer registry"
OPENAPI_VERSION = "3.1.0"
SECURITY_SCHEME = "XCloudHMAC"
_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# --- what apispec cannot infer from the schemas -------------------------------------


class _Converter(OpenAPIConverter):  # MarshmallowPlugin.Converter
    # map_to_openapi_type writes into this table; apispec's own is shared by every
    # converter in the process, so ours is a copy.
    field_mapping = dict(OpenAPIConverter.field_mapping)


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
    if not regexps:
        return {}
    pattern = regexps[0].regex.pattern
    assert isinstance(pattern, str)  # the schemas' patterns are text
    return {"pattern": _ecma_pattern(pattern)}


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
    "Location": {
        "schema": {"type": "string", "examples": [f"{API_PREFIX}/customers/FST-20240101-a"]}
    },
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


def _header(name: str, description: str, schema: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"in": "header", "name": name, "description": description, "schema": schema, **more}


# The path and header parameters a route names (routes.Route.parameters), and those every
# signed, idempotent or bodied route gets.
PARAMETERS: dict[str, dict[str, Any]] = {
    "customerId": {
        "in": "path",
        "name": "customerId",
        "required": True,
        "schema": {"type": "string", "pattern": _CUSTOMER_ID_PATTERN},
    },
    "customerIds": {
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
    },
    "slot": {
        "in": "path",
        "name": "slot",
        "required": True,
        "schema": {"type": "string", "enum": list(api_keys.SLOTS)},
    },
    "If-None-Match": _header(
        "If-None-Match",
        "`*` or a list of entity tags: 304 when one matches.",
        {"type": "string"},
    ),
    "If-Match": _header(
        "If-Match", "`*` or a list of entity tags: 412 unless one matches.", {"type": "string"}
    ),
    idempotency.KEY_HEADER: _header(
        idempotency.KEY_HEADER,
        "Optional (contract section 12). The first answer 200, 201, 404, 409 "
        "or 412 is stored with the write for 24 hours (XCLOUD_IDEMPOTENCY_TTL_SECONDS) per "
        "service id; the same method, path and body (as parsed JSON) with the same key gets "
        "it back with `Idempotent-Replayed: true`, a different request 422 "
        "IDEMPOTENCY_KEY_REUSED, and one sent while the first still runs 409 "
        "IDEMPOTENCY_KEY_IN_USE with Retry-After: 1. Not part of the string to sign.",
        {"type": "string", "pattern": "^[!-~]{1,255}$"},
    ),
    "X-Request-Id": _header(
        "X-Request-Id",
        "Optional; echoed back when it is 1-128 of [A-Za-z0-9._-].",
        {"type": "string"},
    ),
    signing.TIMESTAMP_HEADER: _header(
        signing.TIMESTAMP_HEADER,
        f"Unix time, whole seconds; within {signing.WINDOW_SECONDS} s of the server's clock.",
        {"type": "string", "pattern": "^[0-9]{1,12}$"},
        required=True,
    ),
    signing.NONCE_HEADER: _header(
        signing.NONCE_HEADER,
        "New for every request.",
        {"type": "string", "pattern": "^[A-Za-z0-9_-]{16,64}$"},
        required=True,
    ),
    "Content-MD5": _header(
        "Content-MD5",
        "Base64 of the MD5 digest of the exact body bytes.",
        {"type": "string", "pattern": "^[A-Za-z0-9+/]{22}==$"},
        required=True,
    ),
}


# The order signing.py's checks run in (contract section 2).
_AUTH_CODES = (
    ErrorCode.AUTH_REQUIRED,
    ErrorCode.STALE_REQUEST,
    ErrorCode.INVALID_SIGNATURE,
    ErrorCode.CONTENT_MD5_MISMATCH,
    ErrorCode.REPLAYED_REQUEST,
)
_AUTH_FAILURES = [f"{code.status} `{code.value}` ({code.doc})" for code in _AUTH_CODES]
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

The timestamp must be within {signing.WINDOW_SECONDS} s of the server's clock. The server
answers the first failure, in this order: {"; ".join(_AUTH_FAILURES)}.
Every 401 carries `WWW-Authenticate: {signing.SCHEME}`."""


# --- operations, derived from the route table ------------------------------------------

# What the auth middleware and the server around every signed route can answer (any
# signed request may carry a body, so CONTENT_MD5_MISMATCH too).
_SIGNED_CODES = (
    *_AUTH_CODES,
    ErrorCode.PAYLOAD_TOO_LARGE,
    ErrorCode.REQUEST_TIMEOUT,  # a body that does not arrive in time
    ErrorCode.SERVICE_UNAVAILABLE,
)
# What a handler answers for a JSON body (handlers.json_object, then the body's schema).
_BODY_CODES = (
    ErrorCode.VALIDATION_ERROR,
    ErrorCode.INVALID_JSON,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE,
)
_IDEMPOTENCY_CODES = (ErrorCode.IDEMPOTENCY_KEY_IN_USE, ErrorCode.IDEMPOTENCY_KEY_REUSED)
# Headers that come with an error: every 401 says how to authenticate (the middleware).
_ERROR_HEADERS = {
    ErrorCode.IDEMPOTENCY_KEY_IN_USE: "Retry-After",
    ErrorCode.SERVICE_UNAVAILABLE: "Retry-After",
}


def _error_codes(route: Route) -> dict[int, list[ErrorCode]]:
    """{status: codes} of every error the route can answer, in the enum's order."""
    codes = {ErrorCode.INTERNAL_ERROR, *route.errors}
    if route.signed:
        codes.update(_SIGNED_CODES)
    if route.body is not None:
        codes.update(_BODY_CODES)
    if route.query is not None:
        codes.add(ErrorCode.VALIDATION_ERROR)
    if route.idempotent:
        codes.update(_IDEMPOTENCY_CODES)
    by_status: dict[int, list[ErrorCode]] = {}
    for code in ErrorCode:
        if code in codes:
            by_status.setdefault(code.status, []).append(code)
    return by_status


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


def _failure(status: int, codes: list[ErrorCode], *, with_body: bool) -> dict[str, Any]:
    headers = {_ERROR_HEADERS[c] for c in codes if c in _ERROR_HEADERS}
    if status == 401:
        headers.add("WWW-Authenticate")
    schema = None
    if with_body:
        # Narrows the shared Error schema to the codes this answer can carry.
        only = {"type": "object", "properties": {"error": {"enum": [c.value for c in codes]}}}
        schema = {"allOf": [schemas.ErrorSchema, only]}
    description = "; ".join(f"{code.value}: {code.doc}" for code in codes)
    return _response(description, schema, headers=tuple(sorted(headers)))


def _operation(route: Route) -> dict[str, Any]:
    responses = {
        status: _response(a.description, a.schema, media_type=a.media_type, headers=a.headers)
        for status, a in route.answers.items()
    }
    for status, codes in _error_codes(route).items():
        # HEAD: every answer, failures included, has no body
        responses[status] = _failure(status, codes, with_body=route.method != "HEAD")
    parameters: list[Any] = list(route.parameters)
    if route.query is not None:
        parameters.append({"in": "query", "schema": route.query})  # one per field
    if route.idempotent:  # contract section 12; a stored answer comes back marked
        parameters.append(idempotency.KEY_HEADER)
        for status in unit_of_work.STORED_STATUSES & set(responses):
            header = idempotency.REPLAYED_HEADER
            responses[status]["headers"] = {**responses[status]["headers"], header: header}
    operation: dict[str, Any] = {
        "operationId": route.name,
        "summary": route.summary,
        "tags": ["customers" if route.signed else "operations"],
    }
    if route.signed:
        operation["security"] = [{SECURITY_SCHEME: []}]
        parameters += [signing.TIMESTAMP_HEADER, signing.NONCE_HEADER]
    if route.body is not None:
        parameters.append("Content-MD5")
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": route.body}},
        }
    operation["parameters"] = [*parameters, "X-Request-Id"]
    operation["responses"] = dict(sorted(responses.items()))
    return operation


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

    spec.components.schema("Error", schema=schemas.ErrorSchema)
    spec.components.schema("Customer", schema=schemas.CustomerSchema)
    for name, header in _HEADERS.items():
        spec.components.header(name, header)
    for name, parameter in PARAMETERS.items():
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
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    for path, operations in paths.items():
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
