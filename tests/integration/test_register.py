"""POST /xcloud/v1/customers against the real database (contract sections 1, 3, 4)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re

import pytest

from service.api.schemas import CustomerCreatedSchema
from service.tools.client import Conflict, InvalidRequest, XCloudClient, make_customer_id
from tests.helpers import DOC_EXAMPLE, SECTION_4_KEYS, example, row_counts, signed_json

PATH = "/xcloud/v1/customers"
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


async def post(xc: XCloudClient, body: object, **kw):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await xc.request("POST", PATH, raw, **kw)


async def test_doc_example_gets_201_then_the_exact_409(xc, clean_db):
    first = await post(xc, DOC_EXAMPLE)
    assert first.status == 201, first.body
    assert first.headers["Location"] == "/xcloud/v1/customers/FST-1536316721808-NewCustomer"
    assert CustomerCreatedSchema().validate(first.body) == {}
    assert set(first.body) == {
        "customerId",
        "customerName",
        "status",
        "createdAt",
        "apiKeys",
        "limits",
    }
    assert first.body["customerId"] == DOC_EXAMPLE["customerId"]
    assert first.body["customerName"] == "Dewatering Solutions Inc"
    assert first.body["status"] == "ACTIVE"
    assert RFC3339_Z.match(first.body["createdAt"])
    assert first.body["limits"] == {"maxDevices": 100, "maxUsers": 50, "maxDataPoints": 1000000}
    keys = first.body["apiKeys"]
    assert keys["primary"] != keys["secondary"]
    assert all(len(k) >= 32 for k in keys.values())

    again = await post(xc, DOC_EXAMPLE)
    assert again.status == 409
    assert again.body == {
        "error": "CUSTOMER_EXISTS",
        "message": "Customer with ID 'FST-1536316721808-NewCustomer' already exists",
        "customerId": "FST-1536316721808-NewCustomer",
    }
    assert await row_counts(clean_db) == (1, 1)


async def test_api_keys_are_stored_only_as_hashes(xc, clean_db):
    keys = (await post(xc, DOC_EXAMPLE)).body["apiKeys"]
    row = await clean_db.fetchrow("SELECT * FROM customers")
    hashes = dict(await clean_db.fetch("SELECT slot, key_hash FROM api_keys"))
    assert hashes["primary"] == hashlib.sha256(keys["primary"].encode()).digest()
    assert hashes["secondary"] == hashlib.sha256(keys["secondary"].encode()).digest()
    dump = json.dumps({k: str(v) for k, v in row.items()})
    outbox = await clean_db.fetchval("SELECT payload FROM outbox")
    for key in keys.values():
        assert key not in dump
        assert key.encode() not in outbox


async def test_outbox_row_holds_the_registered_event(xc, clean_db):
    created = (await post(xc, DOC_EXAMPLE)).body
    row = await clean_db.fetchrow("SELECT * FROM outbox")
    assert row["event_type"] == "CustomerRegistered"
    assert row["customer_id"] == DOC_EXAMPLE["customerId"]
    event = json.loads(row["payload"])
    assert event["id"] == str(row["event_id"])
    assert event["specversion"] == "1.0"
    assert event["type"] == "CustomerRegistered"
    assert event["subject"] == DOC_EXAMPLE["customerId"]
    assert event["source"] == "/xcloud/v1/customers"
    assert event["datacontenttype"] == "application/json"
    data = event["data"]
    assert data["createdAt"] == data["updatedAt"] == created["createdAt"]
    assert data["contactInfo"] == DOC_EXAMPLE["contactInfo"]
    assert data["location"] is None
    assert data["settings"] == DOC_EXAMPLE["settings"]
    assert data["limits"] == created["limits"]
    assert list(data) == SECTION_4_KEYS


async def test_optional_fields_left_out_get_defaults_and_nulls(xc, clean_db):
    body = {
        "customerId": make_customer_id("Minimal"),
        "customerName": "Minimal Ltd",
        "contactInfo": {"email": "ops@minimal.example.org"},
        "status": "INACTIVE",
    }
    assert (await post(xc, body)).status == 201
    data = json.loads(await clean_db.fetchval("SELECT payload FROM outbox"))["data"]
    assert data["settings"] == {
        "dataRetentionDays": 365,
        "alertFrequency": "immediate",
        "reportingEnabled": True,
    }
    assert data["description"] is None and data["businessInfo"] is None
    assert data["contactInfo"] == {
        "email": "ops@minimal.example.org",
        "phone": None,
        "address": None,
    }


INVALID = [
    # (change to the example, the dotted path that must be reported)
    ({"customerId": "ABC-1536316721808-X"}, "customerId"),
    ({"customerId": "FST-123-short"}, "customerId"),
    ({"customerId": "FST-1536316721808-NewCustomer\n"}, "customerId"),
    ({"customerId": "FST-1536316721808-" + "a" * 65}, "customerId"),
    ({"customerId": "FST-1536316721808-_leading"}, "customerId"),
    ({"customerName": ""}, "customerName"),
    ({"customerName": "   "}, "customerName"),
    ({"customerName": "x" * 201}, "customerName"),
    ({"customerName": None}, "customerName"),
    ({"customerName": 42}, "customerName"),
    ({"description": "d" * 2001}, "description"),
    ({"status": "active"}, "status"),
    ({"status": "DELETED"}, "status"),
    ({"contactInfo": None}, "contactInfo"),
    ({"contactInfo": "mail"}, "contactInfo"),
    ({"contactInfo": {"phone": "+1-555-0123"}}, "contactInfo.email"),
    ({"contactInfo": {"email": "not-an-address"}}, "contactInfo.email"),
    ({"contactInfo": {"email": "a" * 250 + "@x.com"}}, "contactInfo.email"),
    ({"contactInfo": {"email": "a@b.com", "phone": "555-01"}}, "contactInfo.phone"),
    ({"contactInfo": {"email": "a@b.com", "phone": "+1 555 0123 4567 8901"}}, "contactInfo.phone"),
    ({"contactInfo": {"email": "a@b.com", "phone": "call 5550123"}}, "contactInfo.phone"),
    (
        {"contactInfo": {"email": "a@b.com", "address": {"city": "c" * 201}}},
        "contactInfo.address.city",
    ),
    (
        {"contactInfo": {"email": "a@b.com", "address": {"country": "c" * 101}}},
        "contactInfo.address.country",
    ),
    (
        {"contactInfo": {"email": "a@b.com", "address": {"planet": "Earth"}}},
        "contactInfo.address.planet",
    ),
    ({"businessInfo": {"timezone": "Mars/Olympus"}}, "businessInfo.timezone"),
    ({"businessInfo": {"industry": "i" * 201}}, "businessInfo.industry"),
    ({"settings": {"dataRetentionDays": "365"}}, "settings.dataRetentionDays"),
    ({"settings": {"dataRetentionDays": 365.0}}, "settings.dataRetentionDays"),
    ({"settings": {"dataRetentionDays": True}}, "settings.dataRetentionDays"),
    ({"settings": {"dataRetentionDays": 0}}, "settings.dataRetentionDays"),
    ({"settings": {"dataRetentionDays": 3651}}, "settings.dataRetentionDays"),
    ({"settings": {"alertFrequency": "monthly"}}, "settings.alertFrequency"),
    ({"settings": {"reportingEnabled": "true"}}, "settings.reportingEnabled"),
    ({"settings": {"reportingEnabled": 1}}, "settings.reportingEnabled"),
    ({"location": {"latitude": 90.5}}, "location.latitude"),
    ({"location": {"longitude": -181}}, "location.longitude"),
    ({"location": {"latitude": "45"}}, "location.latitude"),
    ({"location": {"latitude": False}}, "location.latitude"),
    ({"location": {"name": "n" * 201}}, "location.name"),
    ({"favouriteColour": "blue"}, "favouriteColour"),
    ({"settings": {"dataRetentionDays": 30, "theme": "dark"}}, "settings.theme"),
    ({"customerName": "Nul\u0000Byte"}, "customerName"),
]


@pytest.mark.parametrize(("change", "path"), INVALID, ids=[p for _, p in INVALID])
async def test_each_rule_is_a_validation_error_that_writes_nothing(xc, clean_db, change, path):
    resp = await post(xc, example(**change))
    assert resp.status == 400, resp.body
    assert resp.body["error"] == "VALIDATION_ERROR"
    assert path in resp.body["details"], resp.body
    assert all(isinstance(m, list) and m for m in resp.body["details"].values())
    assert await row_counts(clean_db) == (0, 0)


@pytest.mark.parametrize("missing", ["customerId", "customerName", "contactInfo", "status"])
async def test_required_fields(xc, clean_db, missing):
    body = example()
    del body[missing]
    resp = await post(xc, body)
    assert resp.status == 400
    assert resp.body["details"] == {missing: ["Missing data for required field."]}


async def test_null_is_accepted_for_optional_fields(xc, clean_db):
    body = example(description=None, businessInfo=None, settings=None, location=None)
    body["contactInfo"]["phone"] = None
    assert (await post(xc, body)).status == 201


async def test_phone_of_the_contract_passes(xc, clean_db):
    body = example()
    for phone in ("+1-555-0123", "(555) 012.3456", "+44 20 7946 0958"):
        body["customerId"] = make_customer_id(f"Ph{len(phone)}")
        body["contactInfo"]["phone"] = phone
        resp = await post(xc, body)
        assert resp.status == 201, (phone, resp.body)


@pytest.mark.parametrize(
    "raw",
    [b"{", b"not json", b"[1, 2]", b'"text"', b"\xff\xfe{}", b"[" * 5000 + b"]" * 5000],
    ids=["truncated", "text", "array", "string", "bad-utf8", "deep"],
)
async def test_invalid_json(xc, clean_db, raw):
    resp = await post(xc, raw)
    assert resp.status == 400
    assert resp.body["error"] == "INVALID_JSON"
    assert await row_counts(clean_db) == (0, 0)


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded"])
async def test_wrong_content_type_is_415(xc, clean_db, ctype):
    resp = await post(xc, DOC_EXAMPLE, content_type=ctype)
    assert resp.status == 415
    assert resp.body["error"] == "UNSUPPORTED_MEDIA_TYPE"
    assert await row_counts(clean_db) == (0, 0)


async def test_charset_parameter_is_fine(xc, clean_db):
    resp = await post(xc, DOC_EXAMPLE, content_type="application/json; charset=utf-8")
    assert resp.status == 201


async def test_body_over_64_kib_is_413(xc, clean_db):
    big = example(description="x" * (70 * 1024))
    resp = await post(xc, big)
    assert resp.status == 413
    assert resp.body["error"] == "PAYLOAD_TOO_LARGE"
    assert await row_counts(clean_db) == (0, 0)


async def test_unicode_text_round_trips(xc, clean_db):
    body = example(customerName="Wasserwerk Zürich 💧", description="日本語の説明")
    assert (await post(xc, body)).status == 201
    data = json.loads(await clean_db.fetchval("SELECT payload FROM outbox"))["data"]
    assert data["customerName"] == "Wasserwerk Zürich 💧"
    assert data["description"] == "日本語の説明"


async def test_a_lone_surrogate_is_not_valid_json_text(xc, clean_db):
    """A lone UTF-16 surrogate escape encodes no character: PostgreSQL could not store it."""
    raw = json.dumps(example()).replace("Dewatering", "\\ud800Dewatering").encode()
    resp = await post(xc, raw)
    assert resp.status == 400
    assert resp.body["error"] == "INVALID_JSON"
    assert await row_counts(clean_db) == (0, 0)


async def test_fifty_concurrent_registrations_of_one_id(xc, clean_db):
    results = await asyncio.gather(*(post(xc, DOC_EXAMPLE) for _ in range(50)))
    statuses = sorted(r.status for r in results)
    assert statuses == [201] + [409] * 49
    assert await row_counts(clean_db) == (1, 1)


async def test_outbox_failure_leaves_no_customer(xc, clean_db):
    await clean_db.execute(
        """CREATE FUNCTION fail_outbox() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'injected outbox failure'; END $$;
           CREATE TRIGGER fail_outbox BEFORE INSERT ON outbox
           FOR EACH ROW EXECUTE FUNCTION fail_outbox();"""
    )
    try:
        resp = await post(xc, DOC_EXAMPLE, headers={"X-Request-Id": "atomicity-check-1"})
    finally:
        await clean_db.execute("DROP TRIGGER fail_outbox ON outbox; DROP FUNCTION fail_outbox();")
    assert resp.status == 500
    assert resp.body == {
        "error": "INTERNAL_ERROR",
        "message": "Unexpected error",
        "requestId": "atomicity-check-1",
    }
    assert "injected" not in json.dumps(resp.body)
    assert await row_counts(clean_db) == (0, 0)


async def test_client_raises_typed_errors_with_the_server_code(xc, clean_db):
    await xc.register_customer(DOC_EXAMPLE)
    with pytest.raises(Conflict) as conflict:
        await xc.register_customer(DOC_EXAMPLE)
    assert conflict.value.code == "CUSTOMER_EXISTS"
    assert conflict.value.status == 409
    with pytest.raises(InvalidRequest) as invalid:
        await xc.register_customer(example(status="nope"))
    assert invalid.value.code == "VALIDATION_ERROR"
    assert "status" in invalid.value.body["details"]


async def test_request_id_is_echoed_when_sane_and_made_when_not(xc, clean_db):
    sane = await post(xc, DOC_EXAMPLE, headers={"X-Request-Id": "abc.DEF_123-x"})
    assert sane.headers["X-Request-Id"] == "abc.DEF_123-x"
    insane = await post(xc, DOC_EXAMPLE, headers={"X-Request-Id": "bad id with spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", insane.headers["X-Request-Id"])


async def test_unknown_route_and_wrong_method_are_json(api):
    missing = await api.get("/xcloud/v1/nothing-here")
    assert missing.status == 404
    assert (await missing.json())["error"] == "NOT_FOUND"
    wrong = await api.delete("/xcloud/v1/customers")
    assert wrong.status == 405
    assert (await wrong.json())["error"] == "METHOD_NOT_ALLOWED"
    assert wrong.headers["X-Request-Id"]


async def test_a_chunked_body_over_64_kib_is_413(api, credential, clean_db):
    """No Content-Length to check up front: the read itself stops at the limit."""
    body = json.dumps(example(description="x" * (70 * 1024))).encode()
    headers = signed_json(credential, body, PATH)

    async def chunks():
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    resp = await api.post(PATH, data=chunks(), headers=headers)
    assert resp.status == 413
    assert (await resp.json())["error"] == "PAYLOAD_TOO_LARGE"
    assert await row_counts(clean_db) == (0, 0)
