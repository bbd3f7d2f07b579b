"""Where a worker's CPU goes while it serves registrations (py-spy, issue 16).

    python bench/profile.py [--seconds 10] [--concurrency 16]

Starts `xcloud serve --no-relay --workers 2`, drives registrations with the load
generator, samples one worker with `py-spy record -f raw` (which must be installed:
`pip install py-spy`), and prints the share of samples spent in each part (a sample is
counted in every part on its stack, so the shares add up to more than 100%) and the
busiest functions by own time."""

from __future__ import annotations

import argparse
import asyncio
import collections
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import run  # noqa: E402
from tests import services as test_services  # noqa: E402

PARTS = {
    "marshmallow validation": ("marshmallow/",),
    "email-validator": ("email_validator/",),
    "asyncpg (pool, protocol)": ("asyncpg/",),
    "aiohttp (HTTP parsing, responses)": ("aiohttp/",),
    "HMAC / MD5 auth": ("service/auth/signing.py",),
    "handlers": ("service/api/handlers.py",),
    "logging (access log)": ("logging/", "pythonjsonlogger/", "service/logs.py"),
    "prometheus metrics": ("prometheus_client/",),
    "orjson / events / customers": ("service/domain/events.py", "service/domain/customer.py"),
    "event loop (uvloop, idle)": ("uvloop/",),
}


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--concurrency", type=int, default=16)
    args = p.parse_args()
    urls = test_services.local_services("xcloud_bench")
    run.build_loadgen()
    secret = await test_services.fresh_database(urls, run.SECRET_KEY, run.SERVICE_ID)
    server = run.start_server(urls, relay=False, topic="bench.unused", workers=2)
    raw = run.RESULTS / "raw" / "worker.pyspy"
    try:
        worker = int(
            subprocess.run(
                ["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True
            ).stdout.split()[0]
        )
        load: dict = {}
        t = threading.Thread(
            target=lambda: load.update(
                run.loadgen(server, secret, "register", args.concurrency, args.seconds + 4)
            )
        )
        t.start()
        subprocess.run(
            [
                *(str(Path(sys.executable).parent / "py-spy"), "record", "-r", "200", "-f", "raw"),
                *("-d", str(int(args.seconds)), "-o", str(raw), "--pid", str(worker)),
            ],
            check=True,
            capture_output=True,
        )
        t.join()
    finally:
        run.stop_server(server)
    parts: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        for part, needles in PARTS.items():
            if any(needle in f for f in frames for needle in needles):
                parts[part] += n
        own[frames[-1]] += n
    print(f"{total} samples; load: {load.get('rps', 0):.0f} req/s at c={args.concurrency}")
    for part, n in parts.most_common():
        print(f"{100 * n / total:5.1f}%  {part}")
    print("busiest functions (own time):")
    for frame, n in own.most_common(15):
        print(f"{100 * n / total:5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
