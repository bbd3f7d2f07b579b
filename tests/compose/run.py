"""`make compose-test`: the docker-compose.yml path, run for real.

1. a Docker engine (dockerd started when none answers, and said so);
2. the images: official when they can be pulled, else local stand-ins (said so);
3. the app image from the built wheel (`scripts/dist.sh`, then the Dockerfile);
4. `docker compose up`, waiting until the api is healthy;
5. `docker compose run --rm api clients add ...` for a credential;
6. a signed registration to the published port, and its CloudEvent read from the compose
   Kafka through its host listener;
7. `docker compose down -v`, whatever happened.

Last line: `compose: 201 and its event in N s` (N: from sending the request to having its
event). Ports are picked by the kernel on 127.0.0.1 (32768-60999): never the fixed ports of
scripts/services.sh.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid

import aiohttp

from tests.docker_images import ROOT, ensure_engine, resolve
from tests.helpers import example, signed_json
from tests.kafka import read_topic

PROJECT = "xcloud-compose-test"
IMAGE = "xcloud-registry:compose-test"


def step(message: str) -> None:
    print(f"compose-test: {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compose(env: dict[str, str], *args: str, **kw) -> subprocess.CompletedProcess:
    command = ["docker", "compose", "-p", PROJECT, "-f", str(ROOT / "docker-compose.yml"), *args]
    return subprocess.run(command, env=env, cwd=ROOT, **kw)


def wait_healthy(env: dict[str, str], service: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    state = "?"
    while time.monotonic() < deadline:
        out = compose(env, "ps", "-a", "--format", "json", service, capture_output=True, text=True)
        rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        state = rows[0].get("Health") or rows[0].get("State") if rows else "absent"
        if state == "healthy":
            return
        if rows and rows[0].get("State") == "exited":
            break
        time.sleep(2)
    compose(env, "logs", "--tail", "40")
    raise SystemExit(f"compose-test: {service} is not healthy ({state})")


async def register_and_read(api: str, kafka: str, credential: tuple[str, str]) -> float:
    customer = example(customerId=f"FST-20240101-compose{uuid.uuid4().hex[:8]}")
    body = json.dumps(customer).encode()
    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            api + "/xcloud/v1/customers", data=body, headers=signed_json(credential, body)
        ) as resp,
    ):
        text = await resp.text()
        if resp.status != 201:
            raise SystemExit(f"compose-test: expected 201, got {resp.status}: {text}")
    step(f"POST /xcloud/v1/customers -> 201 {customer['customerId']}")
    received = await read_topic(kafka, "xcloud.customers", timeout=60, quiet=1.0, until=1)
    mine = [r for r in received if r.event.get("subject") == customer["customerId"]]
    if not mine or mine[0].event["type"] != "CustomerRegistered":
        raise SystemExit(f"compose-test: no CustomerRegistered event for {customer['customerId']}")
    if mine[0].headers.get("content-type") != b"application/cloudevents+json; charset=UTF-8":
        raise SystemExit(f"compose-test: wrong content-type header: {mine[0].headers}")
    step(f"event {mine[0].event['type']} {mine[0].event['id']} key={mine[0].key}")
    return time.monotonic() - started


def main() -> int:
    t0 = time.monotonic()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        timings[name] = time.monotonic() - since
        return time.monotonic()

    ensure_engine()
    t = lap("engine", t0)
    images = resolve(list(["XCLOUD_POSTGRES_IMAGE", "XCLOUD_KAFKA_IMAGE", "XCLOUD_PYTHON_IMAGE"]))
    t = lap("images", t)

    subprocess.run([str(ROOT / "scripts" / "dist.sh")], check=True, stdout=subprocess.DEVNULL)
    # The legacy builder: Debian's docker.io has no buildx.
    subprocess.run(
        [
            "docker",
            "build",
            "-q",
            "--build-arg",
            f"PYTHON_IMAGE={images['XCLOUD_PYTHON_IMAGE']}",
            "-t",
            IMAGE,
            str(ROOT),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    step(f"built {IMAGE} from the wheel on {images['XCLOUD_PYTHON_IMAGE']}")
    t = lap("app image", t)

    api_port, kafka_port = free_port(), free_port()
    env = {
        **os.environ,
        **images,
        "XCLOUD_IMAGE": IMAGE,
        "XCLOUD_API_PORT": f"127.0.0.1:{api_port}",
        "XCLOUD_KAFKA_HOST_PORT": str(kafka_port),
    }
    compose(env, "down", "-v", "--remove-orphans", capture_output=True)  # a run cut short
    try:
        compose(env, "up", "-d", "--no-build", check=True)
        wait_healthy(env, "api", timeout=300)
        step(f"api healthy on 127.0.0.1:{api_port}")
        t = lap("up", t)
        added = compose(
            env, "run", "--rm", "-T", "api", "clients", "add", "compose-test",
            capture_output=True, text=True,
        )  # fmt: skip
        if added.returncode != 0:
            raise SystemExit(f"compose-test: clients add failed: {added.stderr}")
        secret = added.stdout.strip().splitlines()[-1]
        step("credential compose-test created with docker compose run --rm api clients add")
        latency = asyncio.run(
            register_and_read(
                f"http://127.0.0.1:{api_port}", f"127.0.0.1:{kafka_port}", ("compose-test", secret)
            )
        )
        t = lap("register", t)
    finally:
        compose(env, "down", "-v", "--remove-orphans", capture_output=True)
        t = lap("down", t)
    total = time.monotonic() - t0
    step(
        f"total {total:.0f} s ("
        + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())
        + ")"
    )
    print(f"compose: 201 and its event in {latency:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
