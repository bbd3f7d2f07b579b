"""Contract section 12 as HTTP sees it: the Idempotency-Key header and the answers a key
gets (the rules themselves live in the unit of work, service/usecases/unit_of_work.py)."""

from __future__ import annotations

import re

from multidict import CIMultiDictProxy

from service.api.errors import ApiError, validation_error
from service.error_codes import ErrorCode

KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
_KEY = re.compile(r"[!-~]{1,255}")


def key_of(headers: CIMultiDictProxy[str]) -> str | None:
    """The request's Idempotency-Key, None without one; 400 for a bad or repeated one."""
    values = headers.getall(KEY_HEADER, [])
    if not values:
        return None
    if len(values) > 1 or not _KEY.fullmatch(values[0]):
        raise validation_error(
            {KEY_HEADER: ["Must be sent once, 1-255 characters from '!' to '~'."]}
        )
    return values[0]


def in_use() -> ApiError:
    return ApiError(
        ErrorCode.IDEMPOTENCY_KEY_IN_USE,
        "A request with this Idempotency-Key is still in progress; retry shortly",
        headers={"Retry-After": "1"},
    )


def reused() -> ApiError:
    return ApiError(
        ErrorCode.IDEMPOTENCY_KEY_REUSED,
        "This Idempotency-Key was used for a different request",
    )
