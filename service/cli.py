"""`xcloud`: the one console script (contract section 11)."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from aiokafka.errors import KafkaError

from service import config, exit_codes, logs
from service.auth.secretbox import SecretBox
from service.db import connect, credentials, migrate
from service.exit_codes import Exit, ExitCode
from service.tools import customer_cli

T = TypeVar("T")

_SERVICE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _settings(*, need_kafka: bool = False) -> config.Settings:
    try:
        return config.load(need_kafka=need_kafka)
    except config.ConfigError as exc:
        raise Exit(ExitCode.USAGE, f"configuration error: {exc}") from None


def _service_id(value: str) -> str:
    if not _SERVICE_ID.fullmatch(value):
        raise argparse.ArgumentTypeError("service id must be 1-64 of [A-Za-z0-9._-]")
    return value


def _positive(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 256:
        raise argparse.ArgumentTypeError("must be a whole number from 1 to 256")
    return int(value)


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings()
    try:
        applied = asyncio.run(migrate.apply(settings.database_url))
    except migrate.NoMigrations as exc:
        raise Exit(
            ExitCode.USAGE, f"migrate: {exc}; the package is incomplete: reinstall it"
        ) from None
    print(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}")
    return ExitCode.OK


def cmd_serve(args: argparse.Namespace) -> int:
    from service import server

    settings = _settings(need_kafka=not args.no_relay)
    with_relay = not args.no_relay
    if args.worker_index is not None:  # started by the supervisor below
        server.run_worker(settings, reuse_port=True)
        return ExitCode.OK
    workers = args.workers or server.default_workers()
    if workers == 1 and not with_relay:  # nothing to supervise
        server.run_worker(settings, reuse_port=False)
        return ExitCode.OK
    return server.supervise(workers, with_relay=with_relay)


def cmd_relay(args: argparse.Namespace) -> int:
    from service.outbox import relay

    settings = _settings(need_kafka=True)
    main = relay.run_until_signalled(relay.config_from(settings), exit_with_parent=args.supervised)
    try:
        try:
            import uvloop
        except ImportError:  # optional: plain asyncio works, a little slower
            asyncio.run(main)
        else:
            uvloop.run(main)
    except KafkaError as exc:  # one the relay cannot wait out (a bad topic setting, say)
        raise Exit(ExitCode.FAILED, f"relay failed: {type(exc).__name__}: {exc}") from None
    return ExitCode.OK


async def _with_conn(dsn: str, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    conn = await connect.wait_for(lambda: asyncpg.connect(dsn), "PostgreSQL")
    try:
        return await work(conn)
    finally:
        await conn.close()


def cmd_clients(args: argparse.Namespace) -> int:
    settings = _settings()
    box = SecretBox(settings.secret_key)
    if args.action == "add":
        secret = asyncio.run(
            _with_conn(settings.database_url, lambda c: credentials.add(c, box, args.service_id))
        )
        print(f"service id: {args.service_id}", file=sys.stderr)
        print(secret)  # alone, last line of stdout: scripts take it with `tail -1`
        return ExitCode.OK
    if args.action == "revoke":
        done = asyncio.run(
            _with_conn(settings.database_url, lambda c: credentials.revoke(c, args.service_id))
        )
        if not done:
            raise Exit(ExitCode.FAILED, f"no active credential for {args.service_id}")
        print(f"revoked {args.service_id}")
        return ExitCode.OK
    rows = asyncio.run(_with_conn(settings.database_url, credentials.list_all))
    for row in rows:
        state = f"revoked {row.revoked_at.isoformat()}" if row.revoked_at else "active"
        print(f"{row.service_id}\t{row.created_at.isoformat()}\t{state}")
    return ExitCode.OK


def _environment() -> str:
    """The server's variables and their defaults, from config.Settings (written once)."""
    lines = ["environment (the server's commands; the default):"]
    lines += [f"  {name:<34} {default}" for name, default in config.variables()]
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xcloud", description="XCloud customer registry")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="apply the SQL migrations in sql/").set_defaults(
        func=cmd_migrate
    )

    serve = sub.add_parser("serve", help="run the HTTP API (with the outbox relay)")
    serve.add_argument(
        "--no-relay", action="store_true", help="do not run a relay process beside the workers"
    )
    serve.add_argument(
        "--workers",
        type=_positive,
        default=None,
        help="worker processes sharing the port (default: one per CPU)",
    )
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    relay = sub.add_parser("relay", help="run the outbox relay alone")
    relay.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    relay.set_defaults(func=cmd_relay)

    clients = sub.add_parser("clients", help="service credentials")
    csub = clients.add_subparsers(dest="action", required=True)
    add = csub.add_parser("add", help="create a credential; prints its secret last")
    add.add_argument("service_id", type=_service_id)
    csub.add_parser("list", help="list credentials")
    revoke = csub.add_parser("revoke", help="revoke a credential")
    revoke.add_argument("service_id", type=_service_id)
    clients.set_defaults(func=cmd_clients)

    for documented in (p, *sub.choices.values(), *csub.choices.values()):
        documented.epilog = exit_codes.help_text() + "\n" + _environment()
        documented.formatter_class = argparse.RawDescriptionHelpFormatter
    customer_cli.add_commands(sub)  # theirs: the same exit codes, the caller's variables
    return p


def main(argv: list[str] | None = None) -> int:
    logs.setup()
    args = parser().parse_args(argv)  # a usage error exits 2 (ExitCode.USAGE) here
    command: Callable[[argparse.Namespace], int] = args.func
    return exit_codes.run(command, args)


if __name__ == "__main__":
    sys.exit(main())
