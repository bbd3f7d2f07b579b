"""At 1,000,000 customers, every read the API makes is an index scan (EXPLAIN, not time)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from service.db import customers


@pytest.fixture(scope="module")
async def million(pool):
    await pool.execute("TRUNCATE customers, outbox")
    await pool.execute(
        """INSERT INTO customers (customer_id, status, data, created_at, updated_at)
           SELECT 'FST-12345678-m' || i,
                  (ARRAY['ACTIVE', 'INACTIVE', 'SUSPENDED'])[1 + i % 3],
                  '{}'::jsonb,
                  timestamptz '2024-01-01' + i * interval '1 second', now()
           FROM generate_series(1, 1000000) AS i"""
    )
    # Keys for a fifth of them (two slots each): 400,000 hashes to look one up among.
    await pool.execute(
        """INSERT INTO api_keys (key_hash, customer_id, slot, created_at)
           SELECT sha256(convert_to(s || i, 'UTF8')), 'FST-12345678-m' || i, s, now()
           FROM generate_series(1, 200000) AS i, unnest(ARRAY['primary', 'secondary']) AS s"""
    )
    await pool.execute("ANALYZE customers")
    await pool.execute("ANALYZE api_keys")
    yield pool
    await pool.execute("TRUNCATE customers, api_keys")


def nodes(plan: dict) -> list[str]:
    out = [plan["Node Type"] + ":" + plan.get("Index Name", "")]
    for child in plan.get("Plans", []):
        out.extend(nodes(child))
    return out


async def explain(pool, sql: str, *args) -> list[str]:
    raw = await pool.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
    return nodes(json.loads(raw)[0]["Plan"])


MIDDLE = datetime(2024, 1, 6, tzinfo=UTC)


@pytest.mark.parametrize(
    ("variant", "args", "index"),
    [
        ((False, False), (51,), "customers_created"),
        ((False, True), (51, MIDDLE, "FST-12345678-m432000"), "customers_created"),
        ((True, False), (51, "SUSPENDED"), "customers_status_created"),
        ((True, True), (51, "ACTIVE", MIDDLE, "FST-12345678-m432000"), "customers_status_created"),
    ],
)
async def test_list_pages_are_index_range_scans(million, variant, args, index):
    plan = await explain(million, customers.LIST_SQL[variant], *args)
    assert not any(n.startswith("Seq Scan") for n in plan), plan
    assert not any(n.startswith("Sort") for n in plan), plan
    assert any(n.endswith(":" + index) for n in plan), plan


async def test_get_one_and_existence_use_the_primary_key(million):
    get_plan = await explain(million, customers.GET_SQL, "FST-12345678-m77")
    assert any(n.endswith(":customers_pkey") for n in get_plan), get_plan
    ids = [f"FST-12345678-m{i}" for i in range(1, 101)]
    exists_plan = await explain(million, customers.EXISTING_SQL, ids)
    assert not any(n.startswith("Seq Scan") for n in exists_plan), exists_plan
    assert any("customers_pkey" in n for n in exists_plan), exists_plan
    # And the real queries return the right rows at that size.
    assert (await customers.get(million, "FST-12345678-m77"))["status"] == "SUSPENDED"
    assert len(await customers.existing(million, ids)) == 100


async def test_verifying_a_key_is_one_primary_key_lookup(million):
    from service.db import api_keys

    known = await million.fetchval("SELECT sha256(convert_to('primary' || 777, 'UTF8'))")
    plan = await explain(million, api_keys.VERIFY_SQL, "svc", "n" * 16, known)
    assert not any(n.startswith("Seq Scan") for n in plan), plan
    assert any(n.endswith(":api_keys_pkey") for n in plan), plan
    assert any(n.endswith(":customers_pkey") for n in plan), plan
    row = await million.fetchrow(api_keys.VERIFY_SQL, "svc", "nonce-" + "v" * 16, known)
    assert (row["fresh_nonce"], row["customer_id"], row["slot"]) == (
        True,
        "FST-12345678-m777",
        "primary",
    )
