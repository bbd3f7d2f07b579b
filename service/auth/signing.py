"""HMAC-SHA256 request signing and verification (contract section 2). Pure: no I/O.

The client signs with `sign_request`; the server runs `parse_headers`, `check_fresh`,
`check_signature` and `check_content_md5` in that order, then claims the nonce in
the database. Each check raises AuthError with the contract's status and code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from multidict import MultiMapping

from service.error_codes import ErrorCode

SCHEME = "HMAC-SHA256"
WINDOW_SECONDS = 300
TIMESTAMP_HEADER = "X-XCloud-Timestamp"
NONCE_HEADER = "X-XCloud-Nonce"

_AUTHORIZATION = re.compile(r"^HMAC-SHA256 ([A-Za-z0-9._-]{1,64}):([A-Za-z0-9+/]{43}=)$")
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_MD5 = re.compile(r"^[A-Za-z0-9+/]{22}==$")
# Compared against when the service id is unknown, so both cases cost the same.
_UNKNOWN_SERVICE_SECRET = secrets.token_bytes(32)


class AuthError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.status = code.status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """The authentication headers of one request, parsed but not yet trusted."""

    service_id: str
    signature: str
    timestamp: int
    nonce: str
    content_md5: str
    timestamp_text: str  # signed as sent (contract 2, line 6), even 0-padded


def content_md5(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode("ascii")  # noqa: S324 - the contract's choice


def string_to_sign(
    *,
    method: str,
    path: str,
    query: str,
    content_md5: str,
    content_type: str,
    timestamp: str,
    nonce: str,
    service_id: str,
) -> str:
    return "\n".join(
        (method.upper(), path, query, content_md5, content_type, timestamp, nonce, service_id)
    )


def signature(secret: str | bytes, to_sign: str) -> str:
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    digest = hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def new_nonce() -> str:
    return secrets.token_urlsafe(24)  # 32 characters of [A-Za-z0-9_-]


def sign_request(
    *,
    service_id: str,
    secret: str,
    method: str,
    path_and_query: str,
    body: bytes | None = None,
    content_type: str = "",
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers that authenticate one request. `path_and_query` exactly as sent."""
    path, _, query = path_and_query.partition("?")
    md5 = content_md5(body) if body else ""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or new_nonce()
    to_sign = string_to_sign(
        method=method,
        path=path,
        query=query,
        content_md5=md5,
        content_type=content_type,
        timestamp=ts,
        nonce=nonce,
        service_id=service_id,
    )
    headers = {
        "Authorization": f"{SCHEME} {service_id}:{signature(secret, to_sign)}",
        TIMESTAMP_HEADER: ts,
        NONCE_HEADER: nonce,
    }
    if md5:
        headers["Content-MD5"] = md5
    if content_type:
        headers["Content-Type"] = content_type
    return headers


def _required() -> AuthError:
    return AuthError(ErrorCode.AUTH_REQUIRED, "Missing or malformed authentication headers")


# Every header the string to sign is made of (Content-Type included): each must come
# at most once, so that a proxy reading the last copy sees what the signature covers,
# and in printable ASCII, so that the string to sign is well defined.
SIGNED_HEADERS = ("Authorization", TIMESTAMP_HEADER, NONCE_HEADER, "Content-MD5", "Content-Type")


def _single(headers: MultiMapping[str], name: str) -> str:
    values = headers.getall(name, ())
    if len(values) > 1:
        raise _required()
    value = values[0] if values else ""
    if not (value.isascii() and value.isprintable()):  # also refuses raw bytes >= 0x80
        raise _required()
    return value


def parse_headers(headers: MultiMapping[str], *, has_body: bool) -> SignedRequest:
    """Step 1: every auth header present, sent once and well formed, else 401 AUTH_REQUIRED."""
    authorization, timestamp, nonce, md5, _ = (_single(headers, h) for h in SIGNED_HEADERS)
    match = _AUTHORIZATION.match(authorization)
    if not match or not _TIMESTAMP.match(timestamp) or not _NONCE.match(nonce):
        raise _required()
    if (has_body or md5) and not _MD5.match(md5):
        raise _required()
    return SignedRequest(match[1], match[2], int(timestamp), nonce, md5, timestamp)


def check_fresh(req: SignedRequest, now: float) -> None:
    """Step 2: the timestamp within the window of the server's clock."""
    if abs(now - req.timestamp) > WINDOW_SECONDS:
        raise AuthError(
            ErrorCode.STALE_REQUEST, "Request timestamp is outside the 300-second window"
        )


def check_signature(
    req: SignedRequest,
    secret: bytes | None,
    *,
    method: str,
    path: str,
    query: str,
    content_type: str,
) -> None:
    """Step 3: unknown service and wrong signature look the same, in answer and in time."""
    to_sign = string_to_sign(
        method=method,
        path=path,
        query=query,
        content_md5=req.content_md5,
        content_type=content_type,
        timestamp=req.timestamp_text,
        nonce=req.nonce,
        service_id=req.service_id,
    )
    expected = signature(secret if secret is not None else _UNKNOWN_SERVICE_SECRET, to_sign)
    good = hmac.compare_digest(expected.encode("ascii"), req.signature.encode("ascii"))
    if secret is None or not good:
        raise AuthError(ErrorCode.INVALID_SIGNATURE, "Unknown service or invalid signature")


def check_content_md5(req: SignedRequest, body: bytes) -> None:
    """Step 4: the body received is the body that was signed."""
    if (body or req.content_md5) and not hmac.compare_digest(content_md5(body), req.content_md5):
        raise AuthError(ErrorCode.CONTENT_MD5_MISMATCH, "Content-MD5 does not match the body")


def replayed() -> AuthError:
    """Step 5 happens in the database; this is its answer."""
    return AuthError(ErrorCode.REPLAYED_REQUEST, "This nonce was already used")
