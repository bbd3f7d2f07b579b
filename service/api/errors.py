"""The one error format of the API (contract section 1): a status and a JSON object.

Every code an error body can carry is an `ErrorCode`, with its status: the handlers,
the middlewares, the auth checks and the OpenAPI document all take them from here.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import orjson
from aiohttp import web


class ErrorCode(StrEnum):
    """An error body's `error`, its HTTP status and what it means (for the document)."""

    status: int
    doc: str

    def __new__(cls, code: str, status: int, doc: str) -> ErrorCode:
        member = str.__new__(cls, code)
        member._value_ = code
        member.status = status
        member.doc = doc
        return member

    # The order of the document's lists (the contract's order, mostly by status).
    VALIDATION_ERROR = "VALIDATION_ERROR", 400, "carries details: dotted field path -> messages"
    INVALID_JSON = "INVALID_JSON", 400, "the body is not JSON, or not a JSON object"
    CONTENT_MD5_MISMATCH = "CONTENT_MD5_MISMATCH", 400, "Content-MD5 does not match the body"
    BAD_REQUEST = "BAD_REQUEST", 400, "not valid HTTP, or the connection closed mid-body"
    # Authentication (contract section 2), in the order the checks run
    AUTH_REQUIRED = "AUTH_REQUIRED", 401, "an auth header missing or malformed"
    STALE_REQUEST = "STALE_REQUEST", 401, "the timestamp is outside the window"
    INVALID_SIGNATURE = "INVALID_SIGNATURE", 401, "unknown or revoked service, or wrong signature"
    REPLAYED_REQUEST = "REPLAYED_REQUEST", 401, "the nonce was used already"
    NOT_FOUND = "NOT_FOUND", 404, "no such route"
    CUSTOMER_NOT_FOUND = "CUSTOMER_NOT_FOUND", 404, "carries customerId"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED", 405, "the route has no such method"
    CUSTOMER_EXISTS = "CUSTOMER_EXISTS", 409, "carries customerId"
    PRECONDITION_FAILED = "PRECONDITION_FAILED", 412, "If-Match does not match the ETag"
    IDEMPOTENCY_KEY_IN_USE = "IDEMPOTENCY_KEY_IN_USE", 409, "the key's first request runs still"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED", 422, "the key was used for another request"
    API_KEY_NOT_FOUND = "API_KEY_NOT_FOUND", 404, "no customer holds this API key"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE", 413, "a body larger than 64 KiB"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT", 408, "the body did not arrive in time"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE", 415, "Content-Type is not JSON"
    INTERNAL_ERROR = "INTERNAL_ERROR", 500, "unexpected; carries requestId"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE", 503, "the database is unavailable"
    # aiohttp's own refusals of any other status (from_http_exception): the status varies.
    HTTP_ERROR = "HTTP_ERROR", 0, "another refusal by aiohttp, with its own status"


class ApiError(Exception):
    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        """`status` only for HTTP_ERROR, whose status is aiohttp's; others have their own."""
        super().__init__(message)
        self.status = code.status if status is None else status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def response(self) -> web.Response:
        body = {"error": self.code, "message": self.message, **self.extra}
        return json_response(body, status=self.status, headers=self.headers)


def json_response(
    body: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON answer, UTF-8 and compact (orjson: the hot path's serialiser)."""
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )


def validation_error(details: dict[str, list[str]]) -> ApiError:
    return ApiError(ErrorCode.VALIDATION_ERROR, "The request is not valid", details=details)


def customer_not_found(customer_id: str) -> ApiError:
    return ApiError(
        ErrorCode.CUSTOMER_NOT_FOUND,
        f"Customer with ID '{customer_id}' not found",
        customerId=customer_id,
    )


# aiohttp's own HTTP exceptions (router misses, size limits) in the contract's words.
HTTP_CODES = {
    code.status: (code, message)
    for code, message in (
        (ErrorCode.BAD_REQUEST, "Bad request"),
        (ErrorCode.NOT_FOUND, "No such route"),
        (ErrorCode.METHOD_NOT_ALLOWED, "Method not allowed on this route"),
        (ErrorCode.REQUEST_TIMEOUT, "The request did not arrive in time"),
        (ErrorCode.PAYLOAD_TOO_LARGE, "Request body is larger than 64 KiB"),
        (ErrorCode.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json"),
    )
}


def from_http_exception(exc: web.HTTPException) -> ApiError:
    code, message = HTTP_CODES.get(exc.status, (ErrorCode.HTTP_ERROR, exc.reason))
    headers = {k: v for k, v in exc.headers.items() if k in ("Allow",)}
    return ApiError(code, message, status=exc.status, headers=headers)
