"""`xcloud import --keys-out`, `xcloud customers rotate-key`, `xcloud keys verify`: real
subprocesses against the real server (contract section 13)."""

from __future__ import annotations

import csv
import json
import os
import stat

from tests.helpers import example, xcloud
from tests.integration.test_tools import env, fake_lines  # noqa: F401 - fixture

KEYS_HEADER = ["customerId", "primaryApiKey", "secondaryApiKey"]


async def test_import_hands_over_every_created_customers_keys(env, xc, tmp_path, clean_db):  # noqa: F811
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


async def test_an_import_that_creates_nothing_leaves_no_keys_file(env, tmp_path, clean_db):  # noqa: F811
    source = tmp_path / "bad.jsonl"
    source.write_text(json.dumps(example(status="nope")) + "\n")
    keys_path = tmp_path / "keys.csv"
    run = await xcloud("import", str(source), "--keys-out", str(keys_path), env=env)
    assert run.returncode == 0, run.stderr
    assert not keys_path.exists()


async def test_rotate_key_and_verify_from_the_command_line(env, xc, clean_db):  # noqa: F811
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
