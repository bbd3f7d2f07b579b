"""The signing client's retries (pure: a stand-in server, no database)."""

from __future__ import annotations

import pytest
from aiohttp import web

from service.tools.client import Conflict, ServerError, ServiceUnavailable, XCloudClient

BODY = {"customerId": "FST-12345678-x"}


def stand_in(answers: list[tuple[int, dict]]):
    """A server answering `answers` in turn; records what each attempt carried."""
    seen: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        status, body = answers[min(len(seen), len(answers)) - 1]
        headers = {"Retry-After": "0"} if status == 409 else None
        return web.json_response(body, status=status, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app, seen


async def test_a_5xx_is_retried_with_the_same_key_and_a_fresh_nonce(aiohttp_server):
    app, seen = stand_in([(503, {"error": "SERVICE_UNAVAILABLE"}), (201, {"ok": True})])
    server = await aiohttp_server(app)
    async with XCloudClient(str(server.make_url("")), "svc", "s", backoff=0) as xc:
        assert await xc.register_customer(BODY) == {"ok": True}
    assert len(seen) == 2
    assert seen[0]["Idempotency-Key"] == seen[1]["Idempotency-Key"]
    assert seen[0]["X-XCloud-Nonce"] != seen[1]["X-XCloud-Nonce"]


async def test_in_use_is_waited_out_and_retries_are_bounded(aiohttp_server):
    in_use = (409, {"error": "IDEMPOTENCY_KEY_IN_USE"})
    app, seen = stand_in([in_use, (201, {"ok": True})])
    server = await aiohttp_server(app)
    async with XCloudClient(str(server.make_url("")), "svc", "s", backoff=0) as xc:
        assert await xc.register_customer(BODY, idempotency_key="mine") == {"ok": True}
        assert [h["Idempotency-Key"] for h in seen] == ["mine", "mine"]
    app, seen = stand_in([(500, {"error": "INTERNAL_ERROR"})])
    server = await aiohttp_server(app)
    async with XCloudClient(str(server.make_url("")), "svc", "s", retries=2, backoff=0) as xc:
        with pytest.raises(ServerError):
            await xc.update_customer("FST-12345678-x", BODY)
    assert len(seen) == 3


async def test_customer_exists_is_not_retried_nor_a_keyless_write(aiohttp_server):
    app, seen = stand_in([(409, {"error": "CUSTOMER_EXISTS"})])
    server = await aiohttp_server(app)
    async with XCloudClient(str(server.make_url("")), "svc", "s", backoff=0) as xc:
        with pytest.raises(Conflict):
            await xc.register_customer(BODY)
    assert len(seen) == 1
    app, seen = stand_in([(503, {"error": "SERVICE_UNAVAILABLE"})])
    server = await aiohttp_server(app)
    url = str(server.make_url(""))
    async with XCloudClient(url, "svc", "s", backoff=0, idempotency_keys=False) as xc:
        with pytest.raises(ServiceUnavailable):
            await xc.register_customer(BODY)
    assert len(seen) == 1 and "Idempotency-Key" not in seen[0]
