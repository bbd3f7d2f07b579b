"""Customers' API keys (contract section 13): their form and their hash.

A key is shown once and stored only as its SHA-256. The hash is the primary key of
api_keys (sql/003), so a hash belongs to one customer and one slot at most.
"""

from __future__ import annotations

import hashlib
import re
import secrets

SLOTS = ("primary", "secondary")
PREFIX = "xck_"
# The form every key has had: the prefix and 32 random bytes in URL-safe base64. Anything
# else cannot be a key, and is answered without a database round trip.
_FORM = re.compile(r"xck_[A-Za-z0-9_-]{43}")


def new_key() -> str:
    # 256 bits; the prefix lets secret scanners recognise a leaked key.
    return PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def well_formed(key: str) -> bool:
    return _FORM.fullmatch(key) is not None
