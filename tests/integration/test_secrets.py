"""No secret leaves: not in logs, events, error answers, metrics or a database dump."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from service.tools.client import make_customer_id
from tests.helpers import DOC_EXAMPLE, SECRET_KEY, example

PATH = "/xcloud/v1/customers"


def pg_dump() -> str:
    for candidate in (
        "/usr/lib/postgresql/15/bin/pg_dump",
        *sorted(str(p) for p in Path("/usr/lib/postgresql").glob("*/bin/pg_dump")),
    ):
        if Path(candidate).exists():
            return candidate
    return "pg_dump"


def access_lines(service_log, count: int) -> list[dict]:
    """The access-log lines, after checking that they are there with their extra fields: the
    search below really covers the INFO lines and what they carry."""
    lines = [r for r in service_log.records() if r.get("logger") == "xcloud.access"]
    assert len(lines) >= count, f"{len(lines)} access-log lines for {count} requests"
    assert all({"request_id", "service_id", "route", "status"} <= line.keys() for line in lines)
    return lines


async def test_secrets_appear_nowhere(api, xc, credential, clean_db, settings, service_log):
    service_secret = credential[1]
    created = await xc.register_customer(DOC_EXAMPLE)
    api_keys = list(created["apiKeys"].values())
    hashes = [
        bytes(h).hex() for h in await clean_db.fetchval("SELECT array_agg(key_hash) FROM api_keys")
    ]
    assert len(hashes) == 2
    # Failures of every kind, so error paths are scanned too.
    answers = [
        await xc.request("POST", PATH, json.dumps(DOC_EXAMPLE).encode()),
        await xc.request("POST", PATH, b"{nope"),
        await xc.request("POST", PATH, json.dumps(example(status="x")).encode()),
        await xc.request("GET", f"{PATH}/FST-12345678-none"),
        await xc.request(
            "PUT",
            f"{PATH}/{DOC_EXAMPLE['customerId']}",
            json.dumps(example(customerName="Renamed")).encode(),
        ),
        await xc.request("GET", f"{PATH}?cursor=forged"),
    ]
    answers.append(
        await xc.request(
            "GET",
            f"{PATH}/{make_customer_id('x')}",
            headers={"X-XCloud-Nonce": "tampered-nonce-12345678"},
        )
    )
    metrics = await (await api.get("/metrics")).text()
    events = [
        bytes(r["payload"]).decode() for r in await clean_db.fetch("SELECT payload FROM outbox")
    ]
    haystacks = {
        "answers": json.dumps([a.body for a in answers] + [dict(a.headers) for a in answers]),
        "metrics": metrics,
        "events": "\n".join(events),
        "logs": service_log.text,
    }
    assert len(events) == 2  # registered + updated: events really were scanned
    statuses = {line["status"] for line in access_lines(service_log, len(answers) + 2)}
    assert {201, 400, 401, 404, 409} <= statuses, statuses
    for where, text in haystacks.items():
        for secret in [service_secret, SECRET_KEY, *api_keys, *hashes]:
            assert secret not in text, f"a secret in the {where}"


async def test_a_database_dump_holds_no_usable_secret(xc, credential, clean_db, settings):
    created = await xc.register_customer(DOC_EXAMPLE, idempotency_key="dumped")
    rotated = await xc.rotate_api_key(DOC_EXAMPLE["customerId"], "primary", idempotency_key="r")
    created["apiKeys"]["rotated"] = rotated["apiKey"]
    url = urlsplit(settings.database_url)
    dump = subprocess.run(
        [
            pg_dump(),
            "-h",
            url.hostname,
            "-p",
            str(url.port),
            "-U",
            url.username or "postgres",
            "--data-only",
            url.path.lstrip("/"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "service_credentials" in dump and DOC_EXAMPLE["customerId"] in dump  # a real dump
    assert "idempotency_keys" in dump and "dumped" in dump  # stored answers were dumped too
    assert credential[1] not in dump
    for key in created["apiKeys"].values():
        assert key not in dump


async def test_keys_appear_nowhere_across_idempotency_rotation_and_verify(
    api, xc, clean_db, service_log
):
    """Section 12 and 13 paths: replays, conflicts, rotation, verification of every kind."""
    customer_id = DOC_EXAMPLE["customerId"]
    body = json.dumps(DOC_EXAMPLE).encode()
    key = {"Idempotency-Key": "secret-scan"}
    first = await xc.request("POST", PATH, body, headers=key)
    api_keys = list(first.body["apiKeys"].values())
    rotate = f"{PATH}/{customer_id}/api-keys/secondary"
    answers = [
        await xc.request("POST", PATH, body, headers=key),  # replay
        await xc.request("POST", PATH, json.dumps(example(customerName="x")).encode(), headers=key),
        await xc.request("POST", rotate, headers={"Idempotency-Key": "rot"}),
        await xc.request("POST", rotate, headers={"Idempotency-Key": "rot"}),  # replay
        await xc.request("POST", f"{PATH}/{customer_id}/api-keys/third"),
    ]
    api_keys.append(answers[2].body["apiKey"])
    for candidate in [*api_keys, "xck_" + "Q" * 43, "not-a-key"]:
        answers.append(
            await xc.request(
                "POST", "/xcloud/v1/api-keys/verify", json.dumps({"apiKey": candidate}).encode()
            )
        )
    hashes = [bytes(h) for h in await clean_db.fetchval("SELECT array_agg(key_hash) FROM api_keys")]
    import base64
    import hashlib

    every_hash = hashes + [hashlib.sha256(k.encode()).digest() for k in api_keys]
    hash_texts = [h.hex() for h in every_hash] + [base64.b64encode(h).decode() for h in every_hash]
    errors = [a for a in answers if a.status >= 400]
    assert {a.body["error"] for a in errors} >= {
        "IDEMPOTENCY_KEY_REUSED",
        "VALIDATION_ERROR",
        "API_KEY_NOT_FOUND",
    }
    metrics = await (await api.get("/metrics")).text()
    events = [
        bytes(r["payload"]).decode() for r in await clean_db.fetch("SELECT payload FROM outbox")
    ]
    assert len(events) == 2  # registered + rotated
    haystacks = {
        "errors": json.dumps([a.body for a in errors] + [dict(a.headers) for a in answers]),
        "metrics": metrics,
        "events": "\n".join(events),
        "logs": service_log.text,
    }
    access_lines(service_log, len(answers) + 1)
    for where, text in haystacks.items():
        for secret in [*api_keys, *hash_texts]:
            assert secret not in text, f"a key or key hash in the {where}"
