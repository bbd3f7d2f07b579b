"""The API's error codes (contract section 1), each with its HTTP status and meaning:
written once here, and used by the API's errors, the auth checks and the OpenAPI
document. Imports nothing, so any stage may name a code."""

from __future__ import annotations

from enum import StrEnum


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
