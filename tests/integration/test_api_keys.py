"""API keys: rotate and verify (contract section 13), against real PostgreSQL and Kafka."""

from __future__ import annotations

import dataclasses
import json
import uuid

import asyncpg
import pytest

from service.domain import api_keys
from service.outbox import relay
from service.tools.client import NotFound
from tests.helpers import DOC_EXAMPLE, example, row_counts
from tests.integration.test_relay import running
from tests.kafka import read_topic

CUSTOMER = DOC_EXAMPLE["customerId"]
ROTATE = f"/xcloud/v1/customers/{CUSTOMER}/api-keys"
VERIFY = "/xcloud/v1/api-keys/verify"


async def verify(xc, key: object):
    return await xc.request("POST", VERIFY, json.dumps({"apiKey": key}).encode())


async def test_rotation_replaces_one_slot_and_keeps_the_other(xc, clean_db):
    keys = (await xc.register_customer(DOC_EXAMPLE))["apiKeys"]
    for slot in ("primary", "secondary"):
        found = await verify(xc, keys[slot])
        assert (found.status, found.body) == (
            200,
            {"customerId": CUSTOMER, "slot": slot, "status": "ACTIVE"},
        )

    rotated = await xc.request("POST", f"{ROTATE}/secondary")
    assert rotated.status == 200, rotated.body
    assert list(rotated.body) == ["customerId", "slot", "apiKey", "rotatedAt"]
    assert rotated.body["customerId"] == CUSTOMER
    assert rotated.body["slot"] == "secondary"
    new_key = rotated.body["apiKey"]
    assert api_keys.well_formed(new_key)
    assert new_key not in keys.values()
    assert rotated.body["rotatedAt"].endswith("Z")

    gone = await verify(xc, keys["secondary"])
    assert (gone.status, gone.body["error"]) == (404, "API_KEY_NOT_FOUND")
    assert (await verify(xc, keys["primary"])).body["slot"] == "primary"
    assert (await verify(xc, new_key)).body == {
        "customerId": CUSTOMER,
        "slot": "secondary",
        "status": "ACTIVE",
    }
    assert await clean_db.fetchval("SELECT count(*) FROM api_keys") == 2


async def test_rotation_writes_its_event_without_key_material(xc, clean_db):
    await xc.register_customer(DOC_EXAMPLE)
    rotated = (await xc.request("POST", f"{ROTATE}/primary")).body
    row = await clean_db.fetchrow(
        "SELECT event_type, payload FROM outbox WHERE event_type <> 'CustomerRegistered'"
    )
    assert row["event_type"] == "CustomerApiKeyRotated"
    event = json.loads(bytes(row["payload"]))
    assert event["type"] == "CustomerApiKeyRotated"
    assert event["subject"] == CUSTOMER
    assert event["data"] == {
        "customerId": CUSTOMER,
        "slot": "primary",
        "rotatedAt": rotated["rotatedAt"],
    }
    text = bytes(row["payload"]).decode()
    assert rotated["apiKey"] not in text
    assert api_keys.key_hash(rotated["apiKey"]).hex() not in text


async def test_rotation_event_reaches_kafka_in_order(settings, xc, clean_db):
    topic_settings = dataclasses.replace(settings, topic=f"xcloud.test.{uuid.uuid4().hex[:10]}")
    await xc.register_customer(DOC_EXAMPLE)
    await xc.request("POST", f"{ROTATE}/primary")
    await xc.update_customer(CUSTOMER, example(customerName="After Rotation"))
    async with running(relay.config_from(topic_settings)):
        got = await read_topic(settings.kafka_bootstrap_servers, topic_settings.topic, until=3)
    assert [r.event["type"] for r in got] == [
        "CustomerRegistered",
        "CustomerApiKeyRotated",
        "CustomerUpdated",
    ]
    assert {r.key for r in got} == {CUSTOMER}


async def test_rotation_errors(xc, clean_db):
    unknown = await xc.request("POST", "/xcloud/v1/customers/FST-12345678-nobody/api-keys/primary")
    assert unknown.status == 404
    assert unknown.body == {
        "error": "CUSTOMER_NOT_FOUND",
        "message": "Customer with ID 'FST-12345678-nobody' not found",
        "customerId": "FST-12345678-nobody",
    }
    await xc.register_customer(DOC_EXAMPLE)
    for slot in ("tertiary", "Primary", "primary%20"):
        bad = await xc.request("POST", f"{ROTATE}/{slot}")
        assert bad.status == 400, slot
        assert bad.body["error"] == "VALIDATION_ERROR"
        assert "slot" in bad.body["details"]
    with_body = await xc.request("POST", f"{ROTATE}/primary", b"{}")
    assert with_body.status == 400
    assert (await xc.request("GET", f"{ROTATE}/primary")).status == 405
    assert await row_counts(clean_db) == (1, 1)  # no rotation happened


async def test_rotation_with_an_idempotency_key_replays_the_same_key(xc, clean_db):
    await xc.register_customer(DOC_EXAMPLE)
    headers = {"Idempotency-Key": "rotate-once"}
    first = await xc.request("POST", f"{ROTATE}/primary", headers=headers)
    again = await xc.request("POST", f"{ROTATE}/primary", headers=headers)
    assert first.status == again.status == 200
    assert again.body == first.body
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await verify(xc, first.body["apiKey"])).status == 200
    assert await row_counts(clean_db) == (1, 2)  # one rotation event
    other_slot = await xc.request("POST", f"{ROTATE}/secondary", headers=headers)
    assert other_slot.status == 422


@pytest.mark.parametrize(
    "key",
    [
        "",
        "xck_short",
        "xck_" + "A" * 42 + "=",
        "xck_" + "A" * 43,  # well formed, but nobody's
        "xck_" + "A" * 43 + "\n",
        "x" * 10_000,
    ],
    ids=["empty", "short", "bad-char", "unknown", "trailing-newline", "huge"],
)
async def test_verify_malformed_and_unknown_keys_are_the_same_404(xc, clean_db, key):
    await xc.register_customer(DOC_EXAMPLE)
    resp = await verify(xc, key)
    assert resp.status == 404
    assert resp.body == {"error": "API_KEY_NOT_FOUND", "message": "No customer holds this API key"}


async def test_verify_body_errors(xc, clean_db):
    assert (await xc.request("POST", VERIFY, b"[1]")).body["error"] == "INVALID_JSON"
    assert (await xc.request("POST", VERIFY, b"{nope")).body["error"] == "INVALID_JSON"
    for body in ({}, {"apiKey": 5}, {"apiKey": None}, {"apiKey": "x", "more": 1}):
        resp = await xc.request("POST", VERIFY, json.dumps(body).encode())
        assert resp.status == 400, body
        assert resp.body["error"] == "VALIDATION_ERROR"
    no_body = await xc.request("POST", VERIFY)
    assert no_body.status == 415


async def test_verify_reports_the_current_status_and_writes_nothing(xc, clean_db):
    keys = (await xc.register_customer(DOC_EXAMPLE))["apiKeys"]
    await xc.update_customer(CUSTOMER, example(status="SUSPENDED"))
    before = await row_counts(clean_db)
    found = await verify(xc, keys["primary"])
    assert found.body["status"] == "SUSPENDED"
    assert await row_counts(clean_db) == before


async def test_a_verify_request_cannot_be_replayed(api, credential, clean_db, xc):
    from tests.helpers import signed_json

    keys = (await xc.register_customer(DOC_EXAMPLE))["apiKeys"]
    body = json.dumps({"apiKey": keys["primary"]}).encode()
    headers = signed_json(credential, body, VERIFY)
    assert (await api.post(VERIFY, data=body, headers=headers)).status == 200
    again = await api.post(VERIFY, data=body, headers=headers)
    assert again.status == 401
    assert (await again.json())["error"] == "REPLAYED_REQUEST"


async def test_no_two_customers_or_slots_can_share_a_key_hash(xc, clean_db):
    await xc.register_customer(DOC_EXAMPLE)
    taken = await clean_db.fetchval("SELECT key_hash FROM api_keys WHERE slot = 'primary'")
    # Another customer's secondary, or the same customer's other slot: refused by the
    # database itself, whatever code path would try it.
    with pytest.raises(asyncpg.UniqueViolationError):
        await clean_db.execute(
            "INSERT INTO api_keys VALUES ($1, 'FST-12345678-other', 'secondary', now())", taken
        )
    with pytest.raises(asyncpg.UniqueViolationError):
        await clean_db.execute("UPDATE api_keys SET key_hash = $1 WHERE slot = 'secondary'", taken)
    with pytest.raises(asyncpg.UniqueViolationError):  # and one key per slot
        await clean_db.execute(
            "INSERT INTO api_keys VALUES ('\\x01', $1, 'primary', now())", CUSTOMER
        )


async def test_client_and_metrics(api, xc, clean_db):
    keys = (await xc.register_customer(DOC_EXAMPLE))["apiKeys"]
    assert (await xc.verify_api_key(keys["primary"]))["slot"] == "primary"
    with pytest.raises(NotFound) as missing:
        await xc.verify_api_key("xck_" + "B" * 43)
    assert missing.value.code == "API_KEY_NOT_FOUND"
    rotated = await xc.rotate_api_key(CUSTOMER, "primary")
    assert (await xc.verify_api_key(rotated["apiKey"]))["customerId"] == CUSTOMER
    await verify(xc, "nonsense")
    text = await (await api.get("/metrics")).text()
    for outcome in ("found", "unknown", "malformed"):
        assert f'xcloud_api_key_verifications_total{{outcome="{outcome}"}}' in text
    for key in [*keys.values(), rotated["apiKey"]]:
        assert key not in text
