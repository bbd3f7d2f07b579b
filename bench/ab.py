"""A/B of two source trees in one run: registrations/s and CPU per registration.

    python bench/ab.py A_DIR B_DIR [--rounds 3] [--seconds 10] [--concurrency 16]

Each tree is served in turn (`python -m service.cli serve --no-relay` with the tree as
working directory, so its `service` package is the one imported), alternating A, B, A,
B... so drift on a shared machine hits both. CPU is read from /proc for the server's
process tree (supervisor and workers) and for PostgreSQL's backends, divided by the
registrations served: steadier than requests/s when the machine is busy."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import run  # noqa: E402
from tests import services as test_services  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def tree(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    children = [int(p) for p in out.split()]
    return [pid] + [q for c in children for q in tree(c)]


def postgres_pids() -> list[int]:
    """The local PostgreSQL of scripts/services.sh: its postmaster and every backend."""
    postmaster = int((ROOT / ".cache" / "pg" / "postmaster.pid").read_text().split()[0])
    return tree(postmaster)


def serve(src: Path, urls: dict[str, str], workers: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "DATABASE_URL": urls["db"],
        "KAFKA_BOOTSTRAP_SERVERS": urls["kafka"],
        "XCLOUD_SECRET_KEY": run.SECRET_KEY,
        "XCLOUD_HOST": "127.0.0.1",
        "XCLOUD_PORT": str(run.PORT),
        "PYTHONPATH": str(src),
    }
    argv = [sys.executable, "-m", "service.cli", "serve", "--no-relay", "--workers", str(workers)]
    (run.RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    log = open(run.RESULTS / "raw" / f"ab-{src.name}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(argv, cwd=src, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{run.PORT}/readyz", timeout=1):
                time.sleep(1.0)
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start")


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    urls = test_services.local_services("xcloud_bench")
    run.build_loadgen()
    secret = await test_services.fresh_database(urls, run.SECRET_KEY, run.SERVICE_ID)
    results: dict[str, list[tuple[float, float, float]]] = {"A": [], "B": []}
    for i in range(args.rounds):
        for name, src in (("A", args.a), ("B", args.b)):
            proc = serve(src.resolve(), urls, args.workers)
            try:
                server = run.Server(proc, f"http://127.0.0.1:{run.PORT}")
                pids, pg = tree(proc.pid), postgres_pids()
                before, pg_before = cpu_seconds(pids), cpu_seconds(pg)
                load = run.loadgen(server, secret, "register", args.concurrency, args.seconds)
                served = load["rps"] * args.seconds
                app_ms = (cpu_seconds(pids) - before) * 1000 / served
                pg_ms = (cpu_seconds(pg) - pg_before) * 1000 / served
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
            results[name].append((load["rps"], app_ms, pg_ms))
            print(
                f"round {i + 1} {name}: {load['rps']:.0f} req/s, service CPU {app_ms:.3f} ms/req,"
                f" PostgreSQL CPU {pg_ms:.3f} ms/req, errors {load['errors']}",
                flush=True,
            )
    for name in ("A", "B"):
        rows = results[name]
        n = len(rows)
        print(
            f"{name} mean: {sum(r[0] for r in rows) / n:.0f} req/s, "
            f"service CPU {sum(r[1] for r in rows) / n:.3f} ms/req, "
            f"PostgreSQL CPU {sum(r[2] for r in rows) / n:.3f} ms/req"
        )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
