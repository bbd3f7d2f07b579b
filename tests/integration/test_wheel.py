"""The package as a user installs it: the built wheel in a fresh virtualenv outside the
checkout (no editable install, no PYTHONPATH), run from another directory against the real
PostgreSQL and Kafka: migrate, clients add, serve, one signed 201 and its event."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.helpers import SECRET_KEY, example, free_port, run_xcloud, signed_json, wait_healthy
from tests.kafka import read_topic

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without anything that could reach the checkout."""
    drop = ("XCLOUD_", "DATABASE_", "KAFKA_", "PYTHON", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT))
    )
    return {**env, **extra}


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtualenv holding the wheel and its runtime dependencies only."""
    dist = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [str(ROOT / "scripts" / "dist.sh"), str(dist)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert built.returncode == 0, built.stderr
    home = tmp_path_factory.mktemp("wheel-install") / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(home)], check=True)
    pip = [str(home / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    # --no-index: everything comes from the wheels just built; a real, non-editable install.
    subprocess.run(
        [*pip, "install", "--no-index", "--find-links", str(dist), "xcloud-registry"],
        check=True,
        env=_clean_env(),
    )
    return home


@pytest.fixture
async def wheel_database(services) -> str:
    base = services.database_url.rsplit("/", 1)[0]
    name = f"xcloud_wheel_{os.getpid()}"
    admin = await asyncpg.connect(base + "/postgres")
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {name}")
        yield f"{base}/{name}"
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


def xcloud(venv: Path, cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv / "bin" / "xcloud"), *args],
        cwd=cwd,
        env=_clean_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_the_wheel_installed_in_a_fresh_venv_serves_a_201_and_its_event(
    venv, wheel_database, services, tmp_path
):
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import service; print(service.__file__)"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(venv)) and "site-packages" in where, where
    assert not (venv / "bin" / "faker").exists(), "the server's install holds no tools deps"

    topic = f"xcloud.wheel.{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {
        "DATABASE_URL": wheel_database,
        "KAFKA_BOOTSTRAP_SERVERS": services.kafka_bootstrap,
        "XCLOUD_SECRET_KEY": SECRET_KEY,
        "XCLOUD_TOPIC": topic,
        "XCLOUD_HOST": "127.0.0.1",
        "XCLOUD_PORT": str(port),
    }

    migrated = xcloud(venv, tmp_path, env, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    every_file = sorted(p.stem for p in (ROOT / "sql").glob("[0-9][0-9][0-9]_*.sql"))
    assert migrated.stdout.strip() == f"migrations applied: {', '.join(every_file)}"

    added = xcloud(venv, tmp_path, env, "clients", "add", "wheel-test")
    assert added.returncode == 0, added.stderr
    secret = added.stdout.strip().splitlines()[-1]

    server = subprocess.Popen(
        [str(venv / "bin" / "xcloud"), "serve", "--workers", "1"],
        cwd=tmp_path,
        env=_clean_env(**env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_healthy(url, timeout=60)
        customer = example(customerId=f"FST-20240101-wheel{uuid.uuid4().hex[:8]}")
        body = json.dumps(customer).encode()
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                url + "/xcloud/v1/customers",
                data=body,
                headers=signed_json(("wheel-test", secret), body),
            ) as resp,
        ):
            assert resp.status == 201, await resp.text()
        received = await read_topic(services.kafka_bootstrap, topic, until=1, timeout=60)
        assert [r.event["type"] for r in received] == ["CustomerRegistered"]
        assert received[0].key == received[0].event["subject"] == customer["customerId"]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            _, err = await asyncio.to_thread(server.communicate, timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert server.returncode == 0, err[-2000:]


def test_the_server_install_names_the_tools_extra(venv, tmp_path):
    result = xcloud(venv, tmp_path, {}, "fake", "1")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "xcloud: `xcloud fake` needs the tools extra: pip install 'xcloud-registry[tools]'"
    )


def test_migrate_without_migration_files_exits_2(venv, tmp_path, services):
    """A package that lost its sql/ (the old wheel's bug) must say so, not 'up to date'."""
    site = next((venv / "lib").glob("python3*/site-packages"))
    broken = tmp_path / "broken"
    shutil.copytree(site / "service", broken / "service")
    shutil.rmtree(broken / "service" / "sql")
    result = run_xcloud(
        "migrate",
        python=str(venv / "bin" / "python"),
        cwd=tmp_path,
        env=_clean_env(
            PYTHONPATH=str(broken),
            DATABASE_URL=services.database_url,
            XCLOUD_SECRET_KEY=SECRET_KEY,
        ),
    )
    assert result.returncode == 2, result.stderr
    assert "no migration files" in result.stderr
    assert "up to date" not in result.stdout
