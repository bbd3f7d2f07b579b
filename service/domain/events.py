"""The CloudEvents 1.0 envelope of contract section 9, built once, at write time.

The event types are defined here only; the SQL that writes outbox rows takes them from here.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import orjson

from service.domain.customer import rfc3339

SOURCE = "/xcloud/v1/customers"
CONTENT_TYPE = "application/cloudevents+json; charset=UTF-8"
REGISTERED = "CustomerRegistered"
UPDATED = "CustomerUpdated"
KEY_ROTATED = "CustomerApiKeyRotated"  # data: customerId, slot, rotatedAt; never a key


def envelope(event_type: str, customer: dict[str, Any], time: datetime) -> tuple[uuid.UUID, bytes]:
    """(event id, the exact bytes that go on the topic)."""
    event_id = uuid.uuid4()
    event = {
        "specversion": "1.0",
        "id": str(event_id),
        "source": SOURCE,
        "type": event_type,
        "subject": customer["customerId"],
        "time": rfc3339(time),
        "datacontenttype": "application/json",
        "data": customer,
    }
    return event_id, orjson.dumps(event)
