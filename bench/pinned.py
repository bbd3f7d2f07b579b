"""service/limit with the load generator pinned away from the service (issue 16).

    python bench/pinned.py [--seconds 8]

On the 2-core machine: `xcloud serve --no-relay --workers 1` on core 0, the load
generator (and pgbench, for the limit) on core 1; PostgreSQL and Kafka are not pinned
(they are already running), so they take what is left of both cores. The same pinning
for both sides of the ratio: pgbench, like the load generator, runs on core 1."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import limit, run  # noqa: E402
from tests import services as test_services  # noqa: E402


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=8)
    args = p.parse_args()
    urls = test_services.local_services("xcloud_bench")
    run.build_loadgen()
    secret = await test_services.fresh_database(urls, run.SECRET_KEY, run.SERVICE_ID)
    run.PIN_SERVER[:] = ["taskset", "-c", "0"]
    run.PIN_LOADGEN[:] = ["taskset", "-c", "1"]
    server = run.start_server(urls, relay=False, topic="bench.unused", workers=1)
    try:
        service = [run.loadgen(server, secret, "register", c, args.seconds) for c in (16, 64)]
    finally:
        run.stop_server(server)
    best = max(r["rps"] for r in service)
    limits = limit.measure(
        urls["db"],
        run.RESULTS / "raw",
        run.SERVICE_ID,
        [8, 16, 32, 64],
        args.seconds,
        ("taskset", "-c", "1"),
    )
    pg = max(x["tps"] for x in limits)
    for r in service:
        print(
            f"service (core 0, 1 worker), loadgen on core 1, c={r['concurrency']}: "
            f"{r['rps']:.0f} req/s, errors {r['errors']}"
        )
    for x in limits:
        print(f"pgbench minimal on core 1, c={x['concurrency']}: {x['tps']:.0f} tx/s")
    print(f"pinned service/limit ratio: {best / pg:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
