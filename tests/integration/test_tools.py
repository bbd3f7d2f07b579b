"""`xcloud customers|import|fake` as their users run them: real subprocesses, real server.

The server is the in-process test server of the `api` fixture, so every subprocess is
awaited (never waited on with subprocess.run): the server answers on this event loop.
"""

from __future__ import annotations

import asyncio
import copy
import csv
import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from service.tools.client import XCloudClient
from tests.helpers import clean_env, example, row_counts, spawn_xcloud, xcloud


@pytest.fixture
def env(api, credential) -> dict[str, str]:
    service_id, secret = credential
    return {
        **clean_env(),
        "XCLOUD_URL": str(api.make_url("")),
        "XCLOUD_SERVICE_ID": service_id,
        "XCLOUD_SECRET": secret,
    }


def read_report(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


async def fake_lines(count: int, seed: int, env: dict[str, str]) -> list[str]:
    made = await xcloud("fake", str(count), "--seed", str(seed), env=env)
    assert made.returncode == 0, made.stderr
    return made.stdout.splitlines()


async def register_all(xc: XCloudClient, bodies: list[dict]) -> None:
    slots = asyncio.Semaphore(16)

    async def one(body: dict) -> None:
        async with slots:
            await xc.register_customer(body)

    await asyncio.gather(*(one(b) for b in bodies))


# --- customers ----------------------------------------------------------------------------


async def test_customers_commands_round_trip(env, tmp_path, clean_db):
    body = example(customerId="FST-1536316721808-NewCustomer")
    (tmp_path / "c.json").write_text(json.dumps(body))

    created = await xcloud("customers", "register", str(tmp_path / "c.json"), env=env)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["apiKeys"]["primary"]
    assert created.stdout.startswith("{\n  ")  # pretty

    got = await xcloud("customers", "get", body["customerId"], env=env)
    assert got.returncode == 0
    assert json.loads(got.stdout)["contactInfo"] == body["contactInfo"]

    changed = dict(body, customerName="Dewatering Solutions LLC")
    updated = await xcloud(
        "customers", "update", body["customerId"], "-", env=env, stdin=json.dumps(changed)
    )
    assert updated.returncode == 0, updated.stderr
    assert json.loads(updated.stdout)["customerName"] == "Dewatering Solutions LLC"

    listed = await xcloud("customers", "list", "--limit", "10", env=env)
    page = json.loads(listed.stdout)
    assert [c["customerId"] for c in page["customers"]] == [body["customerId"]]
    assert page["nextCursor"] is None
    every = await xcloud("customers", "list", "--all", "--limit", "1", env=env)
    assert [json.loads(line)["customerId"] for line in every.stdout.splitlines()] == [
        body["customerId"]
    ]

    present = await xcloud("customers", "exists", body["customerId"], env=env)
    assert (present.returncode, present.stdout) == (0, "")
    missing = await xcloud(
        "customers", "exists", body["customerId"], "FST-12345678-Nobody", env=env
    )
    assert (missing.returncode, missing.stdout) == (1, "FST-12345678-Nobody\n")

    unknown = await xcloud("customers", "get", "FST-12345678-Nobody", env=env)
    assert unknown.returncode == 1
    assert unknown.last_error_line == "error: CUSTOMER_NOT_FOUND"


async def test_a_wrong_secret_exits_1_with_the_server_code(env, tmp_path, clean_db):
    wrong = {**env, "XCLOUD_SECRET": "not-the-secret"}
    (tmp_path / "c.json").write_text(json.dumps(example()))

    for args in (
        ("customers", "register", str(tmp_path / "c.json")),
        ("customers", "exists", "FST-12345678-Nobody"),  # HEAD: no body, the code still shows
        ("import", str(tmp_path / "c.json")),
    ):
        run = await xcloud(*args, env=wrong)
        assert run.returncode == 1, (args, run.stderr)
        assert run.last_error_line == "error: INVALID_SIGNATURE"
        assert '"error": "INVALID_SIGNATURE"' in run.stderr
        assert "not-the-secret" not in run.stderr + run.stdout
    assert not (tmp_path / "c.json.report.csv").exists()  # stopped before the first line
    assert await row_counts(clean_db) == (0, 0)


async def test_a_validation_error_exits_1_with_the_details(env, tmp_path, clean_db):
    body = example(settings={"dataRetentionDays": "365"})
    body["contactInfo"]["email"] = "not an address"
    (tmp_path / "c.json").write_text(json.dumps(body))

    run = await xcloud("customers", "register", str(tmp_path / "c.json"), env=env)

    assert run.returncode == 1
    assert run.last_error_line == "error: VALIDATION_ERROR"
    error = json.loads(run.stderr[: run.stderr.rindex("error: ")])
    assert set(error["details"]) == {"contactInfo.email", "settings.dataRetentionDays"}
    assert run.stdout == ""
    assert await row_counts(clean_db) == (0, 0)


@pytest.mark.parametrize("variable", ["XCLOUD_URL", "XCLOUD_SERVICE_ID", "XCLOUD_SECRET"])
async def test_a_missing_variable_exits_2_naming_it(env, variable):
    run = await xcloud("customers", "get", "FST-12345678-Nobody", env={**env, variable: ""})
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0]


async def test_an_unreachable_server_exits_3(env, unused_tcp_port):
    gone = {**env, "XCLOUD_URL": f"http://127.0.0.1:{unused_tcp_port}"}
    run = await xcloud("customers", "get", "FST-12345678-Nobody", env=gone)
    assert run.returncode == 3
    assert "cannot reach" in run.stderr


# --- import -------------------------------------------------------------------------------


def broken(i: int, customer: dict, earlier_id: str) -> str:
    """Line i made invalid, in one of eight ways."""
    c = copy.deepcopy(customer)
    kind = (i // 20) % 8
    if kind == 0:
        c["contactInfo"]["email"] = "not-an-email"
    elif kind == 1:
        del c["status"]
    elif kind == 2:
        c["settings"]["dataRetentionDays"] = "365"  # text, not an integer
    elif kind == 3:
        c["contactInfo"]["fax"] = "+1-555-0100"  # unknown nested field
    elif kind == 4:
        c["customerId"] = "CUST-" + c["customerId"]
    elif kind == 5:
        return '{"customerId": "FST-1700000000000-Cut", "customerName": '  # cut short
    elif kind == 6:
        return json.dumps([c])  # not an object
    else:
        c["customerId"] = earlier_id  # the first line with the id wins
    return json.dumps(c)


@pytest.mark.slow
async def test_import_of_10000_lines(env, xc, tmp_path, clean_db):
    customers = [json.loads(line) for line in await fake_lines(10_000, seed=7, env=env)]
    invalid = {i for i in range(len(customers)) if i % 20 == 10}  # 5%
    existing = {i for i in range(len(customers)) if i % 20 == 5}  # 5%
    lines = [
        broken(i, c, customers[i - 1]["customerId"]) if i in invalid else json.dumps(c)
        for i, c in enumerate(customers)
    ]
    path = tmp_path / "customers.jsonl"
    path.write_text("\n".join(lines) + "\n")
    await register_all(xc, [customers[i] for i in sorted(existing)])

    started = time.monotonic()
    run = await xcloud("import", str(path), env=env)
    took = time.monotonic() - started

    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "created 9000, already existed 500, invalid 500, failed 0"
    report = read_report(Path(f"{path}.report.csv"))
    assert [int(r["line"]) for r in report] == list(range(1, 10_001))  # every line, in order
    expected = {
        i: "invalid" if i in invalid else "existed" if i in existing else "created"
        for i in range(len(customers))
    }
    assert {i: r["outcome"] for i, r in enumerate(report)} == expected
    assert all(r["reason"] for r in report if r["outcome"] == "invalid")
    assert "contactInfo.email" in report[10]["reason"]
    assert "duplicate of line 150" in report[150]["reason"]

    # Every valid customer is there, once, with its event; the new ones as sent.
    valid = {c["customerId"]: c for i, c in enumerate(customers) if i not in invalid}
    stored = {r["customer_id"] for r in await clean_db.fetch("SELECT customer_id FROM customers")}
    assert stored == set(valid)
    assert await row_counts(clean_db) == (9500, 9500)
    for i in range(3, 10_000, 997):
        sent = customers[i]
        got = await xc.get_customer(sent["customerId"])
        assert got["contactInfo"] == {"phone": None, **sent["contactInfo"]}
        for key in ("customerName", "businessInfo", "settings", "status"):
            assert got[key] == sent[key]
        assert got["location"] == sent.get("location")
        assert got["description"] == sent.get("description")

    again = await xcloud("import", str(path), env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "created 0, already existed 9500, invalid 500, failed 0"
    assert await row_counts(clean_db) == (9500, 9500)
    print(f"10,000-line import: {took:.1f} s")


@pytest.mark.slow
async def test_an_import_killed_half_way_completes_on_the_next_run(env, tmp_path, clean_db):
    lines = await fake_lines(6000, seed=8, env=env)
    path = tmp_path / "customers.jsonl"
    path.write_text("\n".join(lines) + "\n")

    proc = spawn_xcloud(
        "import",
        str(path),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while await clean_db.fetchval("SELECT count(*) FROM customers") < 2000:
        assert time.monotonic() < deadline and proc.poll() is None
        await asyncio.sleep(0.05)
    proc.kill()
    proc.wait()
    # Requests the server had already read still finish: wait for the count to settle.
    previous, done = -1, await clean_db.fetchval("SELECT count(*) FROM customers")
    while done != previous:
        await asyncio.sleep(0.3)
        previous, done = done, await clean_db.fetchval("SELECT count(*) FROM customers")
    assert 2000 <= done < 6000
    partial = read_report(Path(f"{path}.report.csv"))
    assert partial and {r["outcome"] for r in partial} == {"created"}

    again = await xcloud("import", str(path), env=env)

    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == (
        f"created {6000 - done}, already existed {done}, invalid 0, failed 0"
    )
    assert len(read_report(Path(f"{path}.report.csv"))) == 6000
    assert await row_counts(clean_db) == (6000, 6000)
    assert (
        await clean_db.fetchval(
            "SELECT count(DISTINCT customer_id) FROM outbox WHERE event_type = 'CustomerRegistered'"
        )
        == 6000
    )


async def test_import_csv_with_typed_cells(env, xc, tmp_path, clean_db):
    path = tmp_path / "customers.csv"
    path.write_text(
        "customerId,customerName,contactInfo.email,contactInfo.address.city,"
        "settings.dataRetentionDays,settings.reportingEnabled,location.latitude,status\n"
        "FST-20240101-Csv1,Csv One,one@csv-one.com,Springfield,30,no,41.5,ACTIVE\n"
        "FST-20240101-Csv2,Csv Two,two@csv-two.com,,,,,INACTIVE\n"
        "FST-20240101-Csv3,Csv Three,three@csv-three.com,,thirty,,,ACTIVE\n"
    )

    run = await xcloud("import", str(path), "--report", str(tmp_path / "r.csv"), env=env)

    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "created 2, already existed 0, invalid 1, failed 0"
    one = await xc.get_customer("FST-20240101-Csv1")
    assert one["settings"] == {
        "dataRetentionDays": 30,
        "alertFrequency": "immediate",
        "reportingEnabled": False,
    }
    assert one["location"]["latitude"] == 41.5
    assert one["contactInfo"]["address"]["city"] == "Springfield"
    two = await xc.get_customer("FST-20240101-Csv2")
    assert two["contactInfo"]["address"] is None  # empty cells: fields left out
    report = read_report(tmp_path / "r.csv")
    assert report[2] == {
        "line": "4",
        "customerId": "FST-20240101-Csv3",
        "outcome": "invalid",
        "reason": "settings.dataRetentionDays: Not a valid integer.",
    }


async def test_dry_run_validates_and_sends_nothing(tmp_path, clean_db):
    good = json.dumps(example())
    path = tmp_path / "customers.jsonl"
    path.write_text(f"{good}\n\n{json.dumps(example(status='GONE'))}\n{good}\n")

    run = await xcloud("import", str(path), "--dry-run", env=clean_env())  # no credentials

    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "valid 1, invalid 2 (dry run: nothing sent)"
    outcomes = [(r["line"], r["outcome"]) for r in read_report(Path(f"{path}.report.csv"))]
    assert outcomes == [("1", "valid"), ("3", "invalid"), ("4", "invalid")]
    assert await row_counts(clean_db) == (0, 0)


# --- keys: import --keys-out, customers rotate-key, keys verify (contract section 13) ------
# `xcloud import --keys-out`, `xcloud customers rotate-key`, `xcloud keys verify`: real
# subprocesses against the real server (contract section 13).


KEYS_HEADER = ["customerId", "primaryApiKey", "secondaryApiKey"]


async def test_import_hands_over_every_created_customers_keys(env, xc, tmp_path, clean_db):
    lines = await fake_lines(30, 17, env)
    existing = json.loads(lines[0])
    await xc.register_customer(existing)
    source = tmp_path / "customers.jsonl"
    source.write_text("\n".join(lines) + "\n")
    keys_path = tmp_path / "keys.csv"

    run = await xcloud("import", str(source), "--keys-out", str(keys_path), env=env)
    assert run.returncode == 0, run.stderr
    assert stat.S_IMODE(os.stat(keys_path).st_mode) == 0o600
    with keys_path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == KEYS_HEADER
    assert len(rows) == 1 + 29  # the one that existed has no keys here
    assert existing["customerId"] not in {r[0] for r in rows}
    # Every key handed over really is that customer's.
    for customer_id, primary, secondary in rows[1:6]:
        assert (await xc.verify_api_key(primary)) == {
            "customerId": customer_id,
            "slot": "primary",
            "status": json.loads(
                lines[[json.loads(x)["customerId"] for x in lines].index(customer_id)]
            )["status"],
        }
        assert (await xc.verify_api_key(secondary))["slot"] == "secondary"
    for key in (rows[1][1], rows[1][2]):
        assert key not in run.stdout + run.stderr  # keys only in the file

    again = await xcloud("import", str(source), "--keys-out", str(keys_path), env=env)
    assert again.returncode == 2
    assert "never overwrites" in again.stderr
    with keys_path.open(newline="") as f:
        assert len(list(csv.reader(f))) == 30  # untouched
    dry = await xcloud(
        "import", str(source), "--dry-run", "--keys-out", str(tmp_path / "k2"), env=env
    )
    assert dry.returncode == 2
    assert not (tmp_path / "k2").exists()


async def test_an_import_that_creates_nothing_leaves_no_keys_file(env, tmp_path, clean_db):
    source = tmp_path / "bad.jsonl"
    source.write_text(json.dumps(example(status="nope")) + "\n")
    keys_path = tmp_path / "keys.csv"
    run = await xcloud("import", str(source), "--keys-out", str(keys_path), env=env)
    assert run.returncode == 0, run.stderr
    assert not keys_path.exists()


async def test_rotate_key_and_verify_from_the_command_line(env, xc, clean_db):
    body = example()
    keys = (await xc.register_customer(body))["apiKeys"]
    found = await xcloud("keys", "verify", "-", env=env, stdin=keys["secondary"] + "\n")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout) == {
        "customerId": body["customerId"],
        "slot": "secondary",
        "status": "ACTIVE",
    }
    rotated = await xcloud("customers", "rotate-key", body["customerId"], "secondary", env=env)
    assert rotated.returncode == 0, rotated.stderr
    new_key = json.loads(rotated.stdout)["apiKey"]
    old = await xcloud("keys", "verify", keys["secondary"], env=env)
    assert old.returncode == 1
    assert old.last_error_line == "error: API_KEY_NOT_FOUND"
    assert keys["secondary"] not in old.stderr
    assert (await xcloud("keys", "verify", new_key, env=env)).returncode == 0
    bad_slot = await xcloud("customers", "rotate-key", body["customerId"], "third", env=env)
    assert bad_slot.returncode == 2
    unknown = await xcloud("customers", "rotate-key", "FST-12345678-nobody", "primary", env=env)
    assert unknown.returncode == 1
    assert unknown.last_error_line == "error: CUSTOMER_NOT_FOUND"
