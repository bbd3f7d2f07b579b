"""Bench lines of contract sections 12 and 13 (issue 17), each a ratio within one run:

  verify req/s              POST /xcloud/v1/api-keys/verify through `xcloud serve`, with
                            p50/p99, beside GET of one customer (same concurrency, same
                            server): both are one signed request and one indexed lookup
  idempotency cost ratio    time per registration with an Idempotency-Key divided by
                            time per registration without one (throughput without / with),
                            measured alternately, twice each, on the same server

Called from bench/run.py with its helpers; runs alone too:

    python -m bench.keys_bench [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.config import Limits  # noqa: E402
from service.domain import api_keys, customer  # noqa: E402
from tests.helpers import DOC_EXAMPLE  # noqa: E402

KEYED_CUSTOMERS = 20_000


async def seed_keys(pool: asyncpg.Pool, count: int) -> tuple[list[str], list[str]]:
    """`count` customers with real keys, written directly (the route under test is
    verification, not registration); (primary keys, customer ids)."""
    data = orjson.dumps(customer.mutable_fields(DOC_EXAMPLE, Limits().as_json())).decode()
    ids = [f"FST-12345678-vk{i}" for i in range(count)]
    keys = [(api_keys.new_key(), api_keys.new_key()) for _ in ids]
    await pool.execute("DELETE FROM api_keys WHERE customer_id LIKE 'FST-12345678-vk%'")
    await pool.execute("DELETE FROM customers WHERE customer_id LIKE 'FST-12345678-vk%'")
    await pool.executemany(
        "INSERT INTO customers (customer_id, status, data, created_at, updated_at)"
        " VALUES ($1, 'ACTIVE', $2::jsonb, now(), now())",
        [(i, data) for i in ids],
    )
    await pool.copy_records_to_table(
        "api_keys",
        columns=["key_hash", "customer_id", "slot", "created_at"],
        records=[
            (api_keys.key_hash(k), i, slot, customer.utc_now())
            for i, pair in zip(ids, keys, strict=True)
            for slot, k in zip(api_keys.SLOTS, pair, strict=True)
        ],
    )
    await pool.execute("ANALYZE api_keys")
    return [p for p, _ in keys], ids


async def measure(
    *,
    urls: dict[str, str],
    pool: asyncpg.Pool,
    secret: str,
    results: Path,
    start_server: Callable[..., Any],
    stop_server: Callable[[Any], None],
    loadgen: Callable[..., dict[str, Any]],
    log: Callable[[str], None],
    concurrency: int = 64,
    seconds: float = 10,
) -> dict[str, Any]:
    """The measurements; also written to results/keys.json."""
    primaries, ids = await seed_keys(pool, KEYED_CUSTOMERS)
    keys_path = results / "raw" / "api-keys.txt"
    keys_path.parent.mkdir(parents=True, exist_ok=True)
    keys_path.write_text("\n".join(primaries[:5000]) + "\n")
    keys_path.chmod(0o600)
    server = start_server(urls, relay=False, topic="bench.unused")
    try:
        log(f"API key verification, concurrency {concurrency}")
        verify = loadgen(server, secret, "verify", concurrency, seconds, keys=keys_path)
        log(f"GET one customer (the baseline), concurrency {concurrency}")
        get = loadgen(server, secret, "get", concurrency, seconds, ids=",".join(ids[:100]))
        plain, keyed = [], []
        for round_ in (1, 2):  # alternated, so drift in the machine hits both alike
            log(f"registrations without / with Idempotency-Key, round {round_}")
            plain.append(loadgen(server, secret, "register", concurrency, seconds / 2))
            keyed.append(loadgen(server, secret, "register", concurrency, seconds / 2, idem=1))
    finally:
        stop_server(server)
        keys_path.unlink(missing_ok=True)  # live keys: not left lying around
    plain_rps = statistics.mean(r["rps"] for r in plain)
    keyed_rps = statistics.mean(r["rps"] for r in keyed)
    out = {
        "concurrency": concurrency,
        "verify": verify,
        "get": get,
        "register_plain": plain,
        "register_keyed": keyed,
        "verify_rps": verify["rps"],
        "verify_get_ratio": verify["rps"] / get["rps"],
        "idempotency_cost_ratio": plain_rps / keyed_rps,
        "plain_rps": plain_rps,
        "keyed_rps": keyed_rps,
        "errors": verify["errors"] + get["errors"] + sum(r["errors"] for r in plain + keyed),
    }
    (results / "keys.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def lines(out: dict[str, Any]) -> list[str]:
    """The bench's closing lines for these measurements."""
    v = out["verify"]
    return [
        f"verify req/s: {out['verify_rps']:.0f} (p50 {v['p50_ms']:.2f} ms, p99 "
        f"{v['p99_ms']:.2f} ms, concurrency {out['concurrency']}; verify/get ratio "
        f"{out['verify_get_ratio']:.2f})",
        f"idempotency cost ratio: {out['idempotency_cost_ratio']:.2f} (registrations/s "
        f"without {out['plain_rps']:.0f}, with Idempotency-Key {out['keyed_rps']:.0f})",
    ]


async def main() -> int:
    from bench import run

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    # Not run.PORT's fixed 18080: SO_REUSEPORT would let a bench of another checkout on
    # this machine share it silently, and each would measure the other's server too.
    from tests.helpers import free_port

    run.PORT = int(os.environ.get("XCLOUD_BENCH_PORT") or free_port())
    urls = run.test_services.local_services("xcloud_bench")
    run.build_loadgen()
    secret = await run.test_services.fresh_database(urls, run.SECRET_KEY, run.SERVICE_ID)
    pool = await asyncpg.create_pool(urls["db"], min_size=1, max_size=4)
    try:
        out = await measure(
            urls=urls,
            pool=pool,
            secret=secret,
            results=run.RESULTS,
            start_server=run.start_server,
            stop_server=run.stop_server,
            loadgen=run.loadgen,
            log=run.log,
            seconds=5 if args.quick else 10,
        )
    finally:
        await pool.close()
    for line in lines(out):
        print(line)
    return run.flagged_runs()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
