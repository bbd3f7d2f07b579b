"""The one error format of the API (contract section 1): a status and a JSON object."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
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
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )


def validation_error(details: dict[str, list[str]]) -> ApiError:
    return ApiError(400, "VALIDATION_ERROR", "The request is not valid", details=details)


def customer_not_found(customer_id: str) -> ApiError:
    return ApiError(
        404,
        "CUSTOMER_NOT_FOUND",
        f"Customer with ID '{customer_id}' not found",
        customerId=customer_id,
    )


# aiohttp's own HTTP exceptions (router misses, size limits) in the contract's words.
HTTP_CODES = {
    400: ("BAD_REQUEST", "Bad request"),
    404: ("NOT_FOUND", "No such route"),
    405: ("METHOD_NOT_ALLOWED", "Method not allowed on this route"),
    408: ("REQUEST_TIMEOUT", "The request did not arrive in time"),
    413: ("PAYLOAD_TOO_LARGE", "Request body is larger than 64 KiB"),
    415: ("UNSUPPORTED_MEDIA_TYPE", "Content-Type must be application/json"),
}


def from_http_exception(exc: web.HTTPException) -> ApiError:
    code, message = HTTP_CODES.get(exc.status, ("HTTP_ERROR", exc.reason))
    headers = {k: v for k, v in exc.headers.items() if k in ("Allow",)}
    return ApiError(exc.status, code, message, headers=headers)
