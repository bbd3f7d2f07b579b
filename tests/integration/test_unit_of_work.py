"""The unit of work claims a write's nonce whatever its handler does before the write:
"a replay is answered first" holds for every refusal, and for failures nobody wrote a
refusal for."""

from __future__ import annotations

import json

import pytest

from service.api import schemas
from service.auth import signing
from tests.helpers import DOC_EXAMPLE, row_counts

CUSTOMER = DOC_EXAMPLE["customerId"]
# (method, path, body) of each write route, refused before its write.
REFUSED_WRITES = [
    ("POST", "/xcloud/v1/customers", b'{"customerId": "nope"}'),
    ("PUT", f"/xcloud/v1/customers/{CUSTOMER}", b'{"customerName": 5}'),
    ("POST", f"/xcloud/v1/customers/{CUSTOMER}/api-keys/tertiary", b"{}"),
    ("POST", "/xcloud/v1/api-keys/verify", b'{"apiKey": 7}'),
]


def _headers(credential, method, path, body, **extra):
    headers = signing.sign_request(
        service_id=credential[0],
        secret=credential[1],
        method=method,
        path_and_query=path,
        body=body,
        content_type="application/json" if body else "",
    )
    if body:
        headers["Content-Type"] = "application/json"
    return {**headers, **extra}


@pytest.mark.parametrize(("method", "path", "body"), REFUSED_WRITES)
async def test_a_refused_write_claims_its_nonce(api, credential, clean_db, method, path, body):
    headers = _headers(credential, method, path, body)
    first = await api.request(method, path, data=body, headers=headers)
    assert first.status == 400, await first.text()
    again = await api.request(method, path, data=body, headers=headers)
    assert (again.status, (await again.json())["error"]) == (401, "REPLAYED_REQUEST")


@pytest.mark.parametrize(("method", "path", "body"), REFUSED_WRITES[:3])
async def test_a_refused_write_reusing_a_stored_key_is_422(
    api, credential, clean_db, method, path, body
):
    key = {"Idempotency-Key": "stored"}
    good = json.dumps(DOC_EXAMPLE).encode()
    stored = await api.post(
        "/xcloud/v1/customers",
        data=good,
        headers=_headers(credential, "POST", "/xcloud/v1/customers", good, **key),
    )
    assert stored.status == 201
    refused = await api.request(
        method, path, data=body, headers=_headers(credential, method, path, body, **key)
    )
    assert (refused.status, (await refused.json())["error"]) == (422, "IDEMPOTENCY_KEY_REUSED")


async def test_an_unforeseen_failure_before_the_write_still_claims_the_nonce(
    api, credential, clean_db, monkeypatch
):
    """No handler wrote a refusal for this: the unit of work claims the nonce anyway."""

    def broken(body):
        raise RuntimeError("a bug in validation")

    monkeypatch.setattr(schemas, "load_create", broken)
    body = json.dumps(DOC_EXAMPLE).encode()
    headers = _headers(credential, "POST", "/xcloud/v1/customers", body)
    first = await api.post("/xcloud/v1/customers", data=body, headers=headers)
    assert (first.status, (await first.json())["error"]) == (500, "INTERNAL_ERROR")
    assert await row_counts(clean_db) == (0, 0)
    monkeypatch.undo()
    again = await api.post("/xcloud/v1/customers", data=body, headers=headers)
    assert (again.status, (await again.json())["error"]) == (401, "REPLAYED_REQUEST")
    assert await row_counts(clean_db) == (0, 0)
