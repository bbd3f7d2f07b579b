"""Opaque, tamper-proof list cursors: the keyset position, signed with a server key.

A cursor names the last row of a page (createdAt, customerId) and the status filter it
was made under; the server refuses one it did not sign or that is used with another
filter, so a client can neither forge positions nor mix walks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class BadCursor(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Position:
    created_at: datetime
    customer_id: str


class CursorSigner:
    def __init__(self, secret_key: str) -> None:
        self._key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"xcloud list cursors v1"
        ).derive(secret_key.encode("utf-8"))

    def _mac(self, payload: bytes) -> str:
        digest = hmac.new(self._key, payload, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def encode(self, position: Position, status: str | None) -> str:
        micros = (position.created_at - _EPOCH) // _MICROSECOND  # exact, unlike a float
        body = json.dumps([micros, position.customer_id, status], separators=(",", ":"))
        payload = base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")
        return f"{payload}.{self._mac(payload.encode())}"

    def decode(self, cursor: str, status: str | None) -> Position:
        payload, _, mac = cursor.partition(".")
        if (
            not payload
            or not cursor.isascii()
            or not hmac.compare_digest(mac, self._mac(payload.encode()))
        ):
            raise BadCursor("Not a cursor this service issued.")
        try:
            raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
            micros, customer_id, cursor_status = json.loads(raw)
            if not isinstance(micros, int) or not isinstance(customer_id, str):
                raise TypeError
            created_at = _EPOCH + micros * _MICROSECOND
        except (ValueError, TypeError, OverflowError):
            raise BadCursor("Not a cursor this service issued.") from None
        if cursor_status != status:
            raise BadCursor("The cursor belongs to a list with another status filter.")
        return Position(created_at, customer_id)
