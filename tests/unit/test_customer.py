"""The customer (service/domain/customer.py), without I/O: the stored document, the
representation of contract section 4, the ETag, the lane, the API keys, the clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from service.domain import customer
from tests.helpers import DOC_EXAMPLE, SECTION_4_KEYS

LIMITS = {"maxDevices": 100, "maxUsers": 50, "maxDataPoints": 1000000}
CREATED = datetime(2024, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)
MINIMAL = {
    "customerId": "FST-12345678-Min",
    "customerName": "Minimal",
    "contactInfo": {"email": "a@b.example"},
    "status": "ACTIVE",
}


def represent(body, updated=CREATED):
    data = customer.mutable_fields(body, LIMITS)
    return customer.representation(body["customerId"], body["status"], data, CREATED, updated)


def test_absent_optional_fields_are_null_and_settings_defaults_filled_in():
    shown = represent(MINIMAL)
    assert list(shown) == SECTION_4_KEYS  # all of them, in the documented order
    assert shown["description"] is None
    assert shown["contactInfo"] == {"email": "a@b.example", "phone": None, "address": None}
    assert shown["businessInfo"] is None and shown["location"] is None
    assert shown["settings"] == customer.DEFAULT_SETTINGS
    assert shown["limits"] == LIMITS


def test_given_fields_are_shown_as_given_and_partial_objects_get_every_key():
    body = {
        **MINIMAL,
        "contactInfo": {"email": "a@b.example", "address": {"city": "Springfield"}},
        "businessInfo": {"timezone": "Europe/Paris"},
        "settings": {"alertFrequency": "weekly", "reportingEnabled": False},
        "location": {"latitude": 1.5, "longitude": 0},
    }
    shown = represent(body)
    assert shown["contactInfo"]["address"] == {
        "street": None,
        "city": "Springfield",
        "state": None,
        "postalCode": None,
        "country": None,
    }
    assert shown["businessInfo"] == {"industry": None, "sector": None, "timezone": "Europe/Paris"}
    # A setting given (even False) is kept; only absent or null ones get the default.
    assert shown["settings"] == {
        "dataRetentionDays": 365,
        "alertFrequency": "weekly",
        "reportingEnabled": False,
    }
    assert shown["location"] == {"latitude": 1.5, "longitude": 0, "name": None}


def test_the_documents_example_round_trips_and_unknown_keys_are_not_stored():
    shown = represent({**DOC_EXAMPLE, "apiKeys": {"primary": "xck_secret"}, "extra": 1})
    for key in ("customerName", "description", "status"):
        assert shown[key] == DOC_EXAMPLE[key]
    assert shown["contactInfo"] == DOC_EXAMPLE["contactInfo"]
    assert shown["settings"] == DOC_EXAMPLE["settings"]
    assert "apiKeys" not in shown and "xck_secret" not in str(shown) and "extra" not in shown


def test_created_and_updated_times_are_rfc3339_utc_and_equal_until_an_update():
    shown = represent(MINIMAL)
    assert shown["createdAt"] == shown["updatedAt"] == "2024-03-04T05:06:07.890Z"
    later = represent(MINIMAL, CREATED + timedelta(seconds=1, milliseconds=5))
    assert later["createdAt"] == "2024-03-04T05:06:07.890Z"
    assert later["updatedAt"] == "2024-03-04T05:06:08.895Z"


def test_the_etag_is_quoted_and_changes_with_the_version_and_the_time():
    tag = customer.etag("FST-12345678-Tag", 1, CREATED)
    assert tag.startswith('"') and tag.endswith('"') and len(tag) == 34
    assert tag == customer.etag("FST-12345678-Tag", 1, CREATED)
    others = {
        customer.etag("FST-12345678-Tag", 2, CREATED),
        customer.etag("FST-12345678-Tag", 1, CREATED + timedelta(milliseconds=1)),
        customer.etag("FST-12345678-Ta", 1, CREATED),
    }
    assert tag not in others and len(others) == 3


def test_the_customer_id_pattern_is_whole_string():
    assert customer.is_customer_id("FST-1536316721808-NewCustomer")
    for bad in ("FST-1234567-x", "FST-123456789012345-x", "FST-12345678-", "FST-12345678-_x"):
        assert not customer.is_customer_id(bad), bad
    assert not customer.is_customer_id("FST-12345678-ok\n")


def test_rfc3339_of_another_zone_is_the_same_instant_in_utc():
    east = timezone(timedelta(hours=-7))
    assert customer.rfc3339(CREATED.astimezone(east)) == "2024-03-04T05:06:07.890Z"


def test_rfc3339_is_utc_with_z_and_milliseconds():
    moment = datetime(2024, 1, 1, 10, 30, 0, 123456, tzinfo=UTC)
    assert customer.rfc3339(moment) == "2024-01-01T10:30:00.123Z"


def test_now_is_whole_milliseconds():
    assert customer.utc_now().microsecond % 1000 == 0


def test_lane_is_stable_and_in_range():
    assert customer.lane_of("FST-1536316721808-NewCustomer") == customer.lane_of(
        "FST-1536316721808-NewCustomer"
    )
    lanes = {customer.lane_of(f"FST-12345678-c{i}") for i in range(2000)}
    assert lanes == set(range(customer.LANES))


def test_api_keys_are_distinct_and_long():
    keys = customer.ApiKeys.generate()
    assert keys.primary != keys.secondary
    assert len(keys.primary) >= 40
    assert keys.hashes()[0] != keys.hashes()[1]
