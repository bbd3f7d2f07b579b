"""The one error format of the API (contract section 1): a status and a JSON object.

Every code an error body can carry is an `ErrorCode`, with its status: the handlers,
the middlewares, the auth checks and the OpenAPI document all take them from here.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from service.error_codes import ErrorCode


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

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}

    def response(self) -> web.Response:
        return json_response(self.body(), status=self.status, headers=self.headers)


def json_response(
    body: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON answer, UTF-8 and compact (orjson: the hot path's serialiser)."""
    return json_bytes_response(orjson.dumps(body), status=status, headers=headers)


def json_bytes_response(
    body: bytes, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON answer already serialised (a write's answer, stored and replayed as is)."""
    return web.Response(
        body=body, status=status, headers=headers, content_type="application/json", charset="utf-8"
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
