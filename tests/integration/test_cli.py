"""`xcloud` as a user runs it: a real subprocess against the real database."""

from __future__ import annotations

import pytest

from service.auth.secretbox import SecretBox
from tests.helpers import SECRET_KEY, clean_env, run_xcloud


def run(args: list[str], env: dict[str, str]):
    return run_xcloud(*args, env=clean_env(**env))


@pytest.fixture
def env(settings) -> dict[str, str]:
    return {"DATABASE_URL": settings.database_url, "XCLOUD_SECRET_KEY": SECRET_KEY}


@pytest.mark.parametrize(
    ("env_change", "variable"),
    [
        ({"DATABASE_URL": ""}, "DATABASE_URL"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"XCLOUD_SECRET_KEY": "short"}, "XCLOUD_SECRET_KEY"),
        ({"XCLOUD_PORT": "eighty"}, "XCLOUD_PORT"),
        ({"XCLOUD_PORT": "70000"}, "XCLOUD_PORT"),
        ({"XCLOUD_TOPIC": "bad topic!"}, "XCLOUD_TOPIC"),
    ],
)
def test_a_bad_variable_exits_2_naming_it(env, env_change, variable):
    result = run(["migrate"], {**env, **env_change})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0]
    assert SECRET_KEY not in result.stderr


def test_serve_needs_kafka(env):
    result = run(["serve"], env)
    assert result.returncode == 2
    assert "KAFKA_BOOTSTRAP_SERVERS" in result.stderr


async def test_clients_add_list_revoke(env, clean_db):
    added = run(["clients", "add", "svc-cli"], env)
    assert added.returncode == 0, added.stderr
    secret = added.stdout.strip().splitlines()[-1]
    sealed = await clean_db.fetchval(
        "SELECT secret_encrypted FROM service_credentials WHERE service_id = 'svc-cli'"
    )
    assert SecretBox(SECRET_KEY).open("svc-cli", sealed) == secret.encode()
    assert secret not in added.stderr

    listed = run(["clients", "list"], env)
    assert listed.returncode == 0
    assert "svc-cli" in listed.stdout and "active" in listed.stdout
    assert secret not in listed.stdout

    revoked = run(["clients", "revoke", "svc-cli"], env)
    assert revoked.returncode == 0
    assert "revoked" in run(["clients", "list"], env).stdout
    assert run(["clients", "revoke", "svc-cli"], env).returncode == 1


def test_clients_add_refuses_a_bad_service_id(env):
    result = run(["clients", "add", "bad id"], env)
    assert result.returncode == 2
