"""`xcloud serve`: one process, or a supervisor and N workers sharing one port.

Each worker is a fresh interpreter (not a fork) that binds the port with SO_REUSEPORT,
so the kernel spreads connections over them. Unless --no-relay, the supervisor also runs
one outbox relay (`xcloud relay`) as a process of its own: a relay never shares an event
loop with HTTP handlers, so publishing takes no time from requests and a slow broker
cannot stall them. The supervisor restarts a worker or the relay that dies, and on
SIGTERM/SIGINT stops them all gracefully (the relay finishes its batch in flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from service.api import httpserver
from service.api.app import create_app, create_ops_app
from service.config import Settings
from service.exit_codes import ExitCode

log = logging.getLogger("xcloud.server")

# How long in-flight requests get to finish after SIGTERM, before the app shuts down.
SHUTDOWN_GRACE_SECONDS = 15.0


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def run_worker(settings: Settings, *, reuse_port: bool) -> None:
    """Serve until SIGTERM/SIGINT: stop accepting, finish in-flight requests, close the
    pool (what aiohttp's run_app does, in that order; run_app cannot take the runner that
    gives parser errors the contract's format)."""
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # uvloop is optional: plain asyncio works, a little slower
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app = create_app(settings)
    if reuse_port:  # started by the supervisor: do not outlive it
        app.cleanup_ctx.append(_exit_with_parent)
    main = loop.create_task(_serve(app, settings, reuse_port=reuse_port))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not main.done():
            main.cancel()  # its `finally` shuts the runners down gracefully
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
        rest = asyncio.all_tasks(loop)
        for task in rest:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _serve(app: web.Application, settings: Settings, *, reuse_port: bool) -> None:
    runners = [
        httpserver.Runner(
            app, handle_signals=True, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS
        )
    ]  # the app logs one JSON line per request itself: no aiohttp access log
    sites = [(runners[0], settings.port)]
    try:
        await runners[0].setup()  # starts the app: pool, relay
        if settings.metrics_port is not None:
            runners.append(httpserver.Runner(create_ops_app(app), access_log=None))
            await runners[1].setup()
            sites.append((runners[1], settings.metrics_port))
        for runner, port in sites:
            await web.TCPSite(runner, settings.host, port, reuse_port=reuse_port).start()
        log.info(
            "serving",
            extra={
                "host": settings.host,
                "port": settings.port,
                "metrics_port": settings.metrics_port,
                "pid": os.getpid(),
            },
        )
        await asyncio.Event().wait()  # until cancelled by a signal
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


async def _exit_with_parent(app: web.Application) -> AsyncIterator[None]:
    """A worker whose supervisor was killed (SIGKILL, OOM) stops gracefully instead of
    holding the port as an orphan."""
    task = asyncio.create_task(watch_parent(lambda: os.kill(os.getpid(), signal.SIGTERM)))
    yield
    task.cancel()


async def watch_parent(stop: Callable[[], None]) -> None:
    """Call `stop` once this process's parent is gone (workers and the relay)."""
    parent = os.getppid()
    while os.getppid() == parent:  # noqa: ASYNC110 - no event tells us; we must look
        await asyncio.sleep(1.0)
    log.warning("supervisor gone; stopping", extra={"pid": os.getpid()})
    stop()


RELAY = "relay"  # the supervisor's name for its relay child (workers are numbered)


def supervise(workers: int, *, with_relay: bool) -> int:
    metrics_dir = tempfile.mkdtemp(prefix="xcloud-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    stopping = False

    def spawn(index: int | str) -> subprocess.Popen[bytes]:
        if index == RELAY:
            argv = [sys.executable, "-m", "service.cli", "relay", "--supervised"]
        else:
            argv = [sys.executable, "-m", "service.cli", "serve", "--worker-index", str(index)]
        return subprocess.Popen(argv)  # noqa: S603 - this interpreter, our own module

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    names: list[int | str] = [*range(workers), *([RELAY] if with_relay else [])]
    children = {i: spawn(i) for i in names}
    started = {i: time.monotonic() for i in children}
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "supervising workers",
        extra={
            "workers": workers,
            "pids": [p.pid for p in children.values()],
            "relay_pid": children[RELAY].pid if with_relay else None,
        },
    )
    try:
        while not stopping:
            time.sleep(0.2)
            for index, proc in list(children.items()):
                code = proc.poll()
                if code is None or stopping:
                    continue
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(proc.pid)
                what = "relay" if index == RELAY else "worker"
                if code == ExitCode.USAGE:  # a configuration error: a restart fails alike
                    log.error("%s exited with a configuration error; stopping", what)
                    on_signal(signal.SIGTERM, None)
                    return ExitCode.USAGE
                log.warning("%s died; restarting", what, extra={"worker": index, "exit": code})
                if time.monotonic() - started[index] < 1.0:
                    time.sleep(1.0)  # do not spin on a worker that dies at once
                children[index] = spawn(index)
                started[index] = time.monotonic()
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS + 75  # grace + relay's batch
        for proc in children.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker did not stop in time; killing it", extra={"pid": proc.pid})
                proc.kill()
                proc.wait()
        return ExitCode.OK
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
