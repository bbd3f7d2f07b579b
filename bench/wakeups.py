"""How the relay learns of new rows, measured: commit-to-publish latency nearly idle and
under load for each way of waking it (issue 16).

    python bench/wakeups.py [--seconds 8] [--load 300]

  notify+poll  the default: each API process sends one NOTIFY per 5 ms at most after its
               commits; the relay's adaptive poll (5 ms doubling to 2 s) as a safety net
  poll 20 ms   no NOTIFY at all (XCLOUD_WAKEUP_INTERVAL_MS=0); the adaptive poll capped
               at 20 ms
  poll 2 s     no NOTIFY, the default poll: what a lost wake-up costs at worst"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import run  # noqa: E402
from tests import services as test_services  # noqa: E402

MODES = {
    "notify+poll": {"XCLOUD_WAKEUP_INTERVAL_MS": "5", "XCLOUD_RELAY_POLL_MAX_MS": "2000"},
    "poll 20 ms": {"XCLOUD_WAKEUP_INTERVAL_MS": "0", "XCLOUD_RELAY_POLL_MAX_MS": "20"},
    "poll 2 s": {"XCLOUD_WAKEUP_INTERVAL_MS": "0", "XCLOUD_RELAY_POLL_MAX_MS": "2000"},
}


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--load", type=int, default=300)
    args = p.parse_args()
    urls = test_services.local_services("xcloud_bench")
    run.build_loadgen()
    secret = await test_services.fresh_database(urls, run.SECRET_KEY, run.SERVICE_ID)
    pool = await asyncpg.create_pool(urls["db"], min_size=1, max_size=2)
    print("| wake-up | rate/s | achieved/s | p50 ms | p99 ms |\n|---|---|---|---|---|")
    try:
        # 1/s: truly idle between registrations (an adaptive poll has grown long);
        # 10/s: sparse; then under load.
        for rate, seconds in ((1, 3 * args.seconds), (10, args.seconds), (args.load, args.seconds)):
            for name, env in MODES.items():
                os.environ.update(env)
                r = await run._latency(urls, pool, secret, rate, seconds)
                print(
                    f"| {name} | {rate} | {r['achieved_rps']:.0f} | {r['p50_ms']:.1f} "
                    f"| {r['p99_ms']:.1f} |",
                    flush=True,
                )
    finally:
        await pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
