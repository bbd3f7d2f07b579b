"""The customer, free of I/O: its representation, its API keys, its ETag, its lane."""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from service.domain import api_keys

CUSTOMER_ID = re.compile(r"FST-[0-9]{8,14}-[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
STATUSES = ("ACTIVE", "INACTIVE", "SUSPENDED")
ALERT_FREQUENCIES = ("immediate", "hourly", "daily", "weekly", "never")
DEFAULT_SETTINGS = {
    "dataRetentionDays": 365,
    "alertFrequency": "immediate",
    "reportingEnabled": True,
}


def is_customer_id(value: str) -> bool:
    return CUSTOMER_ID.fullmatch(value) is not None


# Outbox lanes: one customer's events always share a lane; see docs/relay.md.
LANES = 32
_ADDRESS_KEYS = ("street", "city", "state", "postalCode", "country")
_BUSINESS_KEYS = ("industry", "sector", "timezone")
_LOCATION_KEYS = ("latitude", "longitude", "name")


def utc_now() -> datetime:
    """Now, to the millisecond: what the API shows is exactly what the database holds."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def rfc3339(moment: datetime) -> str:
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


def lane_of(customer_id: str) -> int:
    return zlib.crc32(customer_id.encode("utf-8")) % LANES


def _fill(value: dict[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any] | None:
    return None if value is None else {k: value.get(k) for k in keys}


def mutable_fields(valid: dict[str, Any], limits: dict[str, int]) -> dict[str, Any]:
    """The stored document: every optional field present, null when absent, defaults in."""
    contact = valid["contactInfo"]
    settings = valid.get("settings") or {}
    return {
        "customerName": valid["customerName"],
        "description": valid.get("description"),
        "contactInfo": {
            "email": contact["email"],
            "phone": contact.get("phone"),
            "address": _fill(contact.get("address"), _ADDRESS_KEYS),
        },
        "businessInfo": _fill(valid.get("businessInfo"), _BUSINESS_KEYS),
        "settings": {
            k: default if settings.get(k) is None else settings[k]
            for k, default in DEFAULT_SETTINGS.items()
        },
        "location": _fill(valid.get("location"), _LOCATION_KEYS),
        "limits": limits,
    }


def representation(
    customer_id: str,
    status: str,
    data: dict[str, Any],
    created_at: datetime,
    updated_at: datetime,
) -> dict[str, Any]:
    """Contract section 4, in its documented key order. Never holds a key or key hash."""
    created = rfc3339(created_at)
    return {
        "customerId": customer_id,
        "customerName": data["customerName"],
        "description": data["description"],
        "contactInfo": data["contactInfo"],
        "businessInfo": data["businessInfo"],
        "settings": data["settings"],
        "location": data["location"],
        "status": status,
        "limits": data["limits"],
        "createdAt": created,
        "updatedAt": created if updated_at == created_at else rfc3339(updated_at),
    }


@dataclass(frozen=True, slots=True)
class ApiKeys:
    primary: str
    secondary: str

    @classmethod
    def generate(cls) -> ApiKeys:
        return cls(api_keys.new_key(), api_keys.new_key())

    def hashes(self) -> tuple[bytes, bytes]:
        return api_keys.key_hash(self.primary), api_keys.key_hash(self.secondary)


def etag(customer_id: str, version: int, updated_at: datetime) -> str:
    tag = hashlib.sha256(f"{customer_id}\x00{version}\x00{updated_at.isoformat()}".encode())
    return '"' + tag.hexdigest()[:32] + '"'
