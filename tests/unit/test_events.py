"""The event envelope (contract section 9), built without I/O: its fields, its bytes."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

from service.domain import events

CUSTOMER = {"customerId": "FST-12345678-Ev1", "customerName": "Café Ünïcode", "status": "ACTIVE"}
WHEN = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def test_the_envelope_is_the_contracts_cloudevent():
    event_id, raw = events.envelope("CustomerRegistered", CUSTOMER, WHEN)
    assert isinstance(event_id, uuid.UUID)
    assert json.loads(raw) == {
        "specversion": "1.0",
        "id": str(event_id),
        "source": "/xcloud/v1/customers",
        "type": "CustomerRegistered",
        "subject": "FST-12345678-Ev1",
        "time": "2024-05-06T07:08:09.123Z",
        "datacontenttype": "application/json",
        "data": CUSTOMER,
    }


def test_the_bytes_are_utf8_json_and_the_time_is_utc():
    east = timezone(timedelta(hours=5, minutes=30))
    _, raw = events.envelope("CustomerUpdated", CUSTOMER, WHEN.astimezone(east))
    assert "Café Ünïcode".encode() in raw  # UTF-8 as such, not \\u escapes
    assert json.loads(raw.decode("utf-8"))["time"] == "2024-05-06T07:08:09.123Z"


def test_each_envelope_has_its_own_id_and_the_data_is_not_shared():
    ids = {events.envelope("CustomerUpdated", CUSTOMER, WHEN)[0] for _ in range(100)}
    assert len(ids) == 100
    customer = dict(CUSTOMER)
    _, raw = events.envelope("CustomerUpdated", customer, WHEN)
    customer["customerName"] = "changed after"  # the bytes were made at write time
    assert json.loads(raw)["data"]["customerName"] == "Café Ünïcode"


def test_the_content_type_header_is_the_contracts():
    assert events.CONTENT_TYPE == "application/cloudevents+json; charset=UTF-8"
