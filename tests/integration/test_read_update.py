"""GET list, GET one, PUT and HEAD (contract sections 4-8) against the real database."""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest

from service.api.pagination import CursorSigner, Position
from service.api.schemas import CustomerSchema
from service.domain import customer
from service.tools.client import XCloudClient, make_customer_id
from tests.helpers import DOC_EXAMPLE, example

BASE = "/xcloud/v1/customers"


async def register(xc: XCloudClient, customer_id: str, **changes) -> dict:
    body = example(customerId=customer_id, **changes)
    resp = await xc.request("POST", BASE, json.dumps(body).encode())
    assert resp.status == 201, resp.body
    return resp.body


async def put(xc: XCloudClient, customer_id: str, body: object, **kw):
    return await xc.request("PUT", f"{BASE}/{customer_id}", json.dumps(body).encode(), **kw)


async def outbox_events(pool, event_type: str) -> list[dict]:
    rows = await pool.fetch(
        "SELECT payload FROM outbox WHERE event_type = $1 ORDER BY id", event_type
    )
    return [json.loads(r["payload"]) for r in rows]


# --- GET one ------------------------------------------------------------------------


async def test_get_one_returns_the_representation_with_a_strong_etag(xc, clean_db):
    created = await register(xc, DOC_EXAMPLE["customerId"])
    resp = await xc.request("GET", f"{BASE}/{DOC_EXAMPLE['customerId']}")
    assert resp.status == 200
    assert CustomerSchema().validate(resp.body) == {}
    assert resp.body["createdAt"] == resp.body["updatedAt"] == created["createdAt"]
    assert resp.body["limits"] == created["limits"]
    assert resp.body["location"] is None
    etag = resp.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
    registered = (await outbox_events(clean_db, "CustomerRegistered"))[0]
    assert registered["data"] == resp.body  # the event carries exactly the representation
    for key in created["apiKeys"].values():
        assert key not in json.dumps(resp.body)


async def test_get_one_unknown_and_malformed(xc, clean_db):
    missing = await xc.request("GET", f"{BASE}/FST-12345678-Nobody")
    assert missing.status == 404
    assert missing.body == {
        "error": "CUSTOMER_NOT_FOUND",
        "message": "Customer with ID 'FST-12345678-Nobody' not found",
        "customerId": "FST-12345678-Nobody",
    }
    bad = await xc.request("GET", f"{BASE}/not-an-id")
    assert bad.status == 400
    assert bad.body["error"] == "VALIDATION_ERROR"


async def test_if_none_match_gives_304(xc, clean_db):
    await register(xc, DOC_EXAMPLE["customerId"])
    first = await xc.request("GET", f"{BASE}/{DOC_EXAMPLE['customerId']}")
    again = await xc.request(
        "GET",
        f"{BASE}/{DOC_EXAMPLE['customerId']}",
        headers={"If-None-Match": first.headers["ETag"]},
    )
    assert again.status == 304
    assert again.headers["ETag"] == first.headers["ETag"]


# --- PUT ----------------------------------------------------------------------------


async def test_put_replaces_and_writes_one_updated_event(xc, clean_db):
    cid = DOC_EXAMPLE["customerId"]
    created = await register(xc, cid)
    before = await xc.request("GET", f"{BASE}/{cid}")
    body = example(
        customerName="Renamed Inc",
        status="SUSPENDED",
        location={"latitude": 39.78, "longitude": -89.65, "name": "Springfield"},
    )
    del body["customerId"]  # may be left out
    resp = await put(xc, cid, body)
    assert resp.status == 200, resp.body
    assert resp.body["customerName"] == "Renamed Inc"
    assert resp.body["status"] == "SUSPENDED"
    assert resp.body["location"] == {"latitude": 39.78, "longitude": -89.65, "name": "Springfield"}
    assert resp.body["createdAt"] == created["createdAt"]
    assert resp.body["updatedAt"] >= created["createdAt"]
    assert resp.body["limits"] == created["limits"]
    assert resp.headers["ETag"] != before.headers["ETag"]

    after = await xc.request("GET", f"{BASE}/{cid}")
    assert after.body == resp.body
    assert after.headers["ETag"] == resp.headers["ETag"]
    updated = await outbox_events(clean_db, "CustomerUpdated")
    assert len(updated) == 1
    assert updated[0]["type"] == "CustomerUpdated"
    assert updated[0]["subject"] == cid
    assert updated[0]["data"] == resp.body


async def test_put_with_nothing_changed_writes_no_event(xc, clean_db):
    cid = DOC_EXAMPLE["customerId"]
    await register(xc, cid)
    before = await xc.request("GET", f"{BASE}/{cid}")
    resp = await put(xc, cid, DOC_EXAMPLE)
    assert resp.status == 200
    assert resp.body == before.body
    assert resp.headers["ETag"] == before.headers["ETag"]
    assert await outbox_events(clean_db, "CustomerUpdated") == []


async def test_optional_fields_left_out_return_to_defaults(xc, clean_db):
    cid = DOC_EXAMPLE["customerId"]
    await register(
        xc,
        cid,
        settings={"dataRetentionDays": 30, "alertFrequency": "daily", "reportingEnabled": False},
    )
    resp = await put(
        xc, cid, {"customerName": "Bare", "contactInfo": {"email": "b@bare.io"}, "status": "ACTIVE"}
    )
    assert resp.status == 200
    assert resp.body["settings"] == {
        "dataRetentionDays": 365,
        "alertFrequency": "immediate",
        "reportingEnabled": True,
    }
    assert resp.body["description"] is None
    assert resp.body["businessInfo"] is None
    assert resp.body["contactInfo"] == {"email": "b@bare.io", "phone": None, "address": None}


async def test_put_rules(xc, clean_db):
    cid = DOC_EXAMPLE["customerId"]
    await register(xc, cid)
    other_id = await put(xc, cid, example(customerId="FST-12345678-Other"))
    assert other_id.status == 400
    assert "customerId" in other_id.body["details"]
    invalid = await put(xc, cid, example(settings={"dataRetentionDays": "30"}))
    assert invalid.status == 400
    assert "settings.dataRetentionDays" in invalid.body["details"]
    unknown = await put(xc, cid, example(extra=1))
    assert "extra" in unknown.body["details"]
    not_json = await xc.request("PUT", f"{BASE}/{cid}", b"{nope")
    assert not_json.body["error"] == "INVALID_JSON"
    missing = await put(xc, "FST-12345678-Nobody", example(customerId="FST-12345678-Nobody"))
    assert missing.status == 404
    assert missing.body["error"] == "CUSTOMER_NOT_FOUND"
    assert await outbox_events(clean_db, "CustomerUpdated") == []


async def test_if_match(xc, clean_db):
    cid = DOC_EXAMPLE["customerId"]
    await register(xc, cid)
    tag = (await xc.request("GET", f"{BASE}/{cid}")).headers["ETag"]
    stale = await put(xc, cid, example(customerName="A"), headers={"If-Match": '"stale"'})
    assert stale.status == 412
    assert stale.body["error"] == "PRECONDITION_FAILED"
    assert (await xc.request("GET", f"{BASE}/{cid}")).body["customerName"] == (
        DOC_EXAMPLE["customerName"]
    )
    fresh = await put(xc, cid, example(customerName="B"), headers={"If-Match": tag})
    assert fresh.status == 200
    reused = await put(xc, cid, example(customerName="C"), headers={"If-Match": tag})
    assert reused.status == 412  # the tag changed with the update
    star = await put(xc, cid, example(customerName="D"), headers={"If-Match": "*"})
    assert star.status == 200
    assert len(await outbox_events(clean_db, "CustomerUpdated")) == 2


async def test_twenty_concurrent_puts_leave_events_in_commit_order(xc, clean_db):
    cid = DOC_EXAMPLE["customerId"]
    await register(xc, cid)
    names = [f"Name {i}" for i in range(20)]
    results = await asyncio.gather(*(put(xc, cid, example(customerName=n)) for n in names))
    assert all(r.status == 200 for r in results)
    final = (await xc.request("GET", f"{BASE}/{cid}")).body
    events = await outbox_events(clean_db, "CustomerUpdated")
    # Every PUT changes the name whatever state it lands on: twenty changes, twenty events.
    assert len(events) == 20
    assert sorted(e["data"]["customerName"] for e in events) == sorted(names)
    version = await clean_db.fetchval("SELECT version FROM customers WHERE customer_id = $1", cid)
    assert version == 21  # created as 1, then twenty updates
    assert events[-1]["data"] == final  # the last event is the final state
    stamps = [e["data"]["updatedAt"] for e in events]
    assert stamps == sorted(stamps)
    # Each event follows from a distinct committed state: no name appears twice in a row.
    seq = [e["data"]["customerName"] for e in events]
    assert all(a != b for a, b in itertools.pairwise(seq))
    assert len({r.body["customerName"] for r in results}) == 20


# --- HEAD ---------------------------------------------------------------------------


async def test_head_many_ids(xc, clean_db):
    ids = [make_customer_id(f"H{i}", 1_700_000_000_000 + i) for i in range(5)]
    for cid in ids:
        await register(xc, cid)
    all_there = await xc.request("HEAD", f"{BASE}/{','.join(ids)}")
    assert all_there.status == 200
    assert all_there.body is None
    missing = ["FST-12345678-Gone1", "FST-12345678-Gone2"]
    some = await xc.request("HEAD", f"{BASE}/{','.join([ids[0], missing[0], ids[1], missing[1]])}")
    assert some.status == 404
    assert some.headers["X-Missing-Customer-Ids"] == ",".join(missing)
    assert some.body is None


async def test_head_limits_and_malformed_ids(xc, clean_db):
    ids = [f"FST-12345678-Id{i}" for i in range(101)]
    too_many = await xc.request("HEAD", f"{BASE}/{','.join(ids)}")
    assert too_many.status == 400
    hundred = await xc.request("HEAD", f"{BASE}/{','.join(ids[:100])}")
    assert hundred.status == 404
    assert len(hundred.headers["X-Missing-Customer-Ids"].split(",")) == 100
    for bad in (
        "FST-12345678-ok,bad%20id",
        "FST-12345678-ok,,FST-12345678-b",
        "x",
        "FST-12345678-a%0D%0AX-Injected:%201",
    ):
        resp = await xc.request("HEAD", f"{BASE}/{bad}")
        assert resp.status == 400, bad
        assert "X-Injected" not in resp.headers


async def test_head_of_one_id_agrees_with_get(xc, clean_db):
    cid = DOC_EXAMPLE["customerId"]
    await register(xc, cid)
    for probe in (cid, "FST-12345678-Nobody", "not-an-id"):
        head = await xc.request("HEAD", f"{BASE}/{probe}")
        get = await xc.request("GET", f"{BASE}/{probe}")
        assert head.status == get.status, probe
    head = await xc.request("HEAD", f"{BASE}/{cid}")
    get = await xc.request("GET", f"{BASE}/{cid}")
    assert head.headers["ETag"] == get.headers["ETag"]
    tag = {"If-None-Match": get.headers["ETag"]}
    assert (await xc.request("HEAD", f"{BASE}/{cid}", headers=tag)).status == 304
    assert (await xc.request("GET", f"{BASE}/{cid}", headers=tag)).status == 304


# --- GET list -----------------------------------------------------------------------


async def test_list_pages_in_created_order(xc, clean_db):
    ids = [make_customer_id(f"L{i:02d}", 1_700_000_000_000 + i) for i in range(12)]
    for i, cid in enumerate(ids):
        await register(xc, cid, status="ACTIVE" if i % 3 else "INACTIVE")
    page1 = await xc.request("GET", f"{BASE}?limit=5")
    assert page1.status == 200
    assert [c["customerId"] for c in page1.body["customers"]] == ids[:5]
    page2 = await xc.request("GET", f"{BASE}?limit=5&cursor={page1.body['nextCursor']}")
    page3 = await xc.request("GET", f"{BASE}?limit=5&cursor={page2.body['nextCursor']}")
    assert [c["customerId"] for c in page2.body["customers"]] == ids[5:10]
    assert [c["customerId"] for c in page3.body["customers"]] == ids[10:]
    assert page3.body["nextCursor"] is None
    inactive = await xc.request("GET", f"{BASE}?status=INACTIVE")
    assert [c["customerId"] for c in inactive.body["customers"]] == ids[::3]
    assert all(CustomerSchema().validate(c) == {} for c in page1.body["customers"])


async def test_list_defaults_and_empty(xc, clean_db):
    empty = await xc.request("GET", BASE)
    assert empty.status == 200
    assert empty.body == {"customers": [], "nextCursor": None}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=abc", "limit"),
        ("limit=5.5", "limit"),
        ("limit=-1", "limit"),
        ("status=active", "status"),
        ("sort=name", "sort"),
        ("limit=5&limit=6", "limit"),
        ("cursor=garbage", "cursor"),
        ("cursor=", "cursor"),
        ("cursor=abc.%C3%A9", "cursor"),
        ("cursor=%00%ff", "cursor"),
    ],
)
async def test_list_bad_parameters(xc, clean_db, query, field):
    resp = await xc.request("GET", f"{BASE}?{query}")
    assert resp.status == 400, resp.body
    assert resp.body["error"] == "VALIDATION_ERROR"
    assert field in resp.body["details"]


async def test_tampered_foreign_and_mismatched_cursors_are_400(xc, clean_db, settings):
    for i in range(3):
        await register(xc, make_customer_id(f"C{i}", 1_700_000_000_000 + i))
    cursor = (await xc.request("GET", f"{BASE}?limit=1")).body["nextCursor"]
    payload, mac = cursor.split(".")
    flipped = payload[:-1] + ("A" if payload[-1] != "A" else "B")
    foreign = CursorSigner("another-service-key-" + "z" * 40).encode(
        Position(customer.utc_now(), "FST-12345678-x"), None
    )
    for bad in (f"{flipped}.{mac}", foreign, cursor + "x", mac):
        resp = await xc.request("GET", f"{BASE}?cursor={bad}")
        assert resp.status == 400, bad
        assert "cursor" in resp.body["details"]
    other_filter = await xc.request("GET", f"{BASE}?cursor={cursor}&status=ACTIVE")
    assert other_filter.status == 400


async def test_walking_1000_customers_in_pages_of_7_while_others_are_added(xc, clean_db):
    await clean_db.execute(
        """INSERT INTO customers (customer_id, status, data, created_at, updated_at)
           SELECT 'FST-12345678-walk' || i, 'ACTIVE', '{}'::jsonb,
                  now() - interval '1 hour' + (i % 300) * interval '1 second',
                  now()
           FROM generate_series(1, 1000) AS i"""
    )
    # Give the seeded rows the representation's fields so the API can show them.
    await clean_db.execute(
        """UPDATE customers SET data = jsonb_build_object(
               'customerName', customer_id, 'description', null,
               'contactInfo', jsonb_build_object('email', 'w@walk.io', 'phone', null,
                                                 'address', null),
               'businessInfo', null, 'location', null,
               'settings', jsonb_build_object('dataRetentionDays', 365,
                   'alertFrequency', 'immediate', 'reportingEnabled', true),
               'limits', jsonb_build_object('maxDevices', 100, 'maxUsers', 50,
                                            'maxDataPoints', 1000000))"""
    )
    stop = asyncio.Event()

    async def keep_inserting() -> int:
        n = 0
        while not stop.is_set():
            await register(xc, make_customer_id(f"Late{n}"))
            n += 1
            await asyncio.sleep(0.005)
        return n

    inserter = asyncio.create_task(keep_inserting())
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        url = f"{BASE}?limit=7" + (f"&cursor={cursor}" if cursor else "")
        page = await xc.request("GET", url)
        assert page.status == 200
        assert len(page.body["customers"]) <= 7
        seen.extend(c["customerId"] for c in page.body["customers"])
        pages += 1
        cursor = page.body["nextCursor"]
        if cursor is None:
            break
    stop.set()
    late = await inserter
    assert late > 0
    walked = [s for s in seen if "walk" in s]
    assert len(walked) == len(set(walked)) == 1000, "none missing, none repeated"
    assert len(seen) == len(set(seen))
    assert pages >= 1000 // 7


async def test_client_methods_for_every_endpoint(xc, clean_db):
    cid = DOC_EXAMPLE["customerId"]
    await xc.register_customer(DOC_EXAMPLE)
    assert (await xc.get_customer(cid))["customerId"] == cid
    listed = await xc.list_customers(limit=1, status="ACTIVE")
    assert [c["customerId"] for c in listed["customers"]] == [cid]
    updated = await xc.update_customer(cid, example(customerName="Via Client"))
    assert updated["customerName"] == "Via Client"
    assert await xc.missing_customers([cid, "FST-12345678-Nope"]) == ["FST-12345678-Nope"]
    assert await xc.missing_customers([cid]) == []
