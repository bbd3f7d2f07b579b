"""`xcloud customers ...`, `xcloud import` and `xcloud fake`: the tools of the API's callers.

They talk to a running service through the signing client, with the caller's credential
from XCLOUD_URL, XCLOUD_SERVICE_ID and XCLOUD_SECRET (not the server's settings: these
commands need no database). Heavy modules are imported inside the commands, so that
`xcloud migrate` and friends do not pay for them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from service.exit_codes import Exit, ExitCode, help_text

if TYPE_CHECKING:
    from service.tools.client import XCloudClient
    from service.tools.importer import KeysFile, Options, Record, Report

T = TypeVar("T")

EXIT_CODES = help_text()
IMPORT_HELP = """\
Register every valid customer of FILE that does not exist yet.

  CSV          a header row of dotted field paths (customerId, contactInfo.email,
               settings.dataRetentionDays, ...); cells are typed by the schema
               (integers, numbers, true/false/yes/no/1/0); an empty cell leaves
               its field out
  JSON Lines   one customer object per line (.jsonl, .ndjson, .json)

Each line is validated locally with the service's own schema; for an id given
twice the first line wins. Existing customers are found with HEAD, 100 ids at a
time, and skipped: running the same file again resumes an interrupted import.
The report (line,customerId,outcome,reason) has one row per record, in line
order, written as the run goes: created, existed, invalid or failed (valid, in
a dry run). Invalid and existing lines do not change the exit code; a failed
line (a 5xx or network error that outlasted the retries) makes it 1, and a
server lost for good makes it 3 (the lines not sent are reported failed).

Every registration carries its own Idempotency-Key, the same on each retry: a
retry after a lost answer gets the first 201 back, keys included. With
--keys-out FILE, customerId,primaryApiKey,secondaryApiKey of every customer
created goes to FILE, a new file readable only by you (it is never overwritten).
Customers that already existed are not in it: their keys were shown when they
were registered (rotate them with `xcloud customers rotate-key` if lost).
"""
ENVIRONMENT = """
environment:
  XCLOUD_URL         the service, e.g. http://127.0.0.1:8080
  XCLOUD_SERVICE_ID  the calling service's id (xcloud clients add ID)
  XCLOUD_SECRET      its secret
"""


TOOLS_INSTALL = "pip install 'xcloud-registry[tools]'"


def _require_tools(command: str, module: str) -> None:
    """Exit(2) with the install line when the [tools] extra (Faker, tqdm) is missing: the
    server's install leaves it out on purpose."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise Exit(ExitCode.USAGE, f"`xcloud {command}` needs the tools extra: {TOOLS_INSTALL}")


# --- credentials and calling the server ----------------------------------------------------


def credentials_from_env(env: dict[str, str] | None = None) -> tuple[str, str, str]:
    """(url, service id, secret); Exit(2) naming the first missing or bad variable."""
    env = dict(os.environ) if env is None else env
    url = env.get("XCLOUD_URL", "")
    if not url:
        raise Exit(
            ExitCode.USAGE, "configuration error: XCLOUD_URL: is required (http://host:port)"
        )
    if not url.startswith(("http://", "https://")):
        raise Exit(
            ExitCode.USAGE, "configuration error: XCLOUD_URL: must start with http:// or https://"
        )
    service_id = env.get("XCLOUD_SERVICE_ID", "")
    if not service_id:
        raise Exit(ExitCode.USAGE, "configuration error: XCLOUD_SERVICE_ID: is required")
    secret = env.get("XCLOUD_SECRET", "")
    if not secret:  # never echoed, not even in part
        raise Exit(ExitCode.USAGE, "configuration error: XCLOUD_SECRET: is required")
    return url, service_id, secret


def _server_error(exc: Exception) -> Exit:
    """The server's JSON error body on stderr, then Exit(1) with the line `error: CODE`."""
    body = getattr(exc, "body", None) or {"status": getattr(exc, "status", None)}
    print(json.dumps(body, indent=2, ensure_ascii=False), file=sys.stderr)
    return Exit(ExitCode.FAILED, f"error: {getattr(exc, 'code', 'HTTP_ERROR')}")


def _talk(work: Callable[[XCloudClient], Awaitable[int]]) -> int:
    """Run `work` with a client; map the failures to the exit codes."""
    import aiohttp

    from service.tools.client import XCloudClient, XCloudError

    url, service_id, secret = credentials_from_env()

    async def main() -> int:
        async with XCloudClient(url, service_id, secret) as client:
            return await work(client)

    try:
        return asyncio.run(main())
    except XCloudError as exc:
        raise _server_error(exc) from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
        raise Exit(ExitCode.UNREACHABLE, f"cannot reach the server at {url}: {reason}") from None


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _read_body(source: str) -> dict[str, Any]:
    """A JSON object from a file, or from stdin for '-'."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise Exit(ExitCode.USAGE, f"cannot read {source}: {exc}") from None
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise Exit(ExitCode.USAGE, f"{source} is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Exit(ExitCode.USAGE, f"{source} must hold one JSON object")
    return body


# --- customers ----------------------------------------------------------------------------


def cmd_register(args: argparse.Namespace) -> int:
    body = _read_body(args.file)

    async def work(client: XCloudClient) -> int:
        _print_json(await client.register_customer(body))
        return ExitCode.OK

    return _talk(work)


def cmd_get(args: argparse.Namespace) -> int:
    async def work(client: XCloudClient) -> int:
        _print_json(await client.get_customer(args.customer_id))
        return ExitCode.OK

    return _talk(work)


def cmd_list(args: argparse.Namespace) -> int:
    async def work(client: XCloudClient) -> int:
        if not args.all:
            page = await client.list_customers(
                limit=args.limit, status=args.status, cursor=args.cursor
            )
            _print_json(page)
            return ExitCode.OK
        cursor = args.cursor
        while True:  # every page, one customer per line as it comes
            page = await client.list_customers(limit=args.limit, status=args.status, cursor=cursor)
            for customer in page["customers"]:
                print(json.dumps(customer, ensure_ascii=False))
            cursor = page["nextCursor"]
            if cursor is None:
                return ExitCode.OK

    return _talk(work)


def cmd_rotate_key(args: argparse.Namespace) -> int:
    async def work(client: XCloudClient) -> int:
        _print_json(await client.rotate_api_key(args.customer_id, args.slot))
        return ExitCode.OK

    return _talk(work)


def cmd_verify_key(args: argparse.Namespace) -> int:
    # '-' reads the key from stdin: an argument shows in `ps` and the shell's history.
    key = sys.stdin.readline().strip() if args.key == "-" else args.key

    async def work(client: XCloudClient) -> int:
        _print_json(await client.verify_api_key(key))
        return ExitCode.OK

    return _talk(work)


def cmd_update(args: argparse.Namespace) -> int:
    body = _read_body(args.file)

    async def work(client: XCloudClient) -> int:
        _print_json(await client.update_customer(args.customer_id, body))
        return ExitCode.OK

    return _talk(work)


def _ids(args: list[str]) -> list[str]:
    """Ids from the arguments; '-' reads more from stdin (whitespace or comma separated)."""
    from service.domain.customer import is_customer_id

    ids: list[str] = []
    for arg in args:
        text = sys.stdin.read() if arg == "-" else arg
        ids.extend(i for i in text.replace(",", " ").split() if i)
    if not ids:
        raise Exit(ExitCode.USAGE, "no customer id given")
    bad = [i for i in ids if not is_customer_id(i)]
    if bad:
        raise Exit(ExitCode.USAGE, f"not a valid customer id: {bad[0]}")
    return list(dict.fromkeys(ids))


def cmd_exists(args: argparse.Namespace) -> int:
    from service.tools.client import XCloudError

    ids = _ids(args.customer_ids)

    async def work(client: XCloudClient) -> int:
        missing: list[str] = []
        for start in range(0, len(ids), 100):  # HEAD takes at most 100 ids
            try:
                missing += await client.missing_customers(ids[start : start + 100])
            except XCloudError as exc:
                if not exc.body:
                    # A HEAD answer has no body, so no error code: a GET tells it.
                    await client.list_customers(limit=1)
                raise
        for customer_id in missing:
            print(customer_id)
        return ExitCode.FAILED if missing else ExitCode.OK

    return _talk(work)


# --- import -------------------------------------------------------------------------------


def _progress(total: int | None) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit=" lines",
        file=sys.stderr,
        disable=not sys.stderr.isatty(),  # a bar only for a person watching
        dynamic_ncols=True,
    )


def cmd_import(args: argparse.Namespace) -> int:
    _require_tools("import", "tqdm")
    from service.tools import importer

    path = Path(args.file)
    if not path.is_file():
        raise Exit(ExitCode.USAGE, f"cannot read {path}: no such file")
    try:
        fmt = importer.detect_format(path, args.format)
        records = importer.read_records(path, fmt)
        first = next(records, None)  # reads the CSV header: a bad one stops us here
    except importer.InputError as exc:
        raise Exit(ExitCode.USAGE, str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise Exit(ExitCode.USAGE, f"cannot read {path}: {exc}") from None
    records = _chain(first, records)
    report_path = Path(args.report) if args.report else path.with_name(path.name + ".report.csv")
    keys_file = None
    if args.keys_out:
        if args.dry_run:
            raise Exit(ExitCode.USAGE, "--keys-out needs a real run: a dry run creates no keys")
        try:
            keys_file = importer.KeysFile(Path(args.keys_out))
        except FileExistsError:
            raise Exit(
                ExitCode.USAGE, f"{args.keys_out} exists: --keys-out never overwrites"
            ) from None
        except OSError as exc:
            raise Exit(ExitCode.USAGE, f"cannot create {args.keys_out}: {exc}") from None
    started: list[importer.Report] = []

    @contextlib.contextmanager
    def reporting() -> Iterator[importer.Report]:
        """The report and the progress bar, completed and closed however the run ends."""
        try:
            out = report_path.open("w", newline="", encoding="utf-8")
        except OSError as exc:
            raise Exit(ExitCode.USAGE, f"cannot write the report {report_path}: {exc}") from None
        bar = _progress(importer.count_records(path, fmt) if sys.stderr.isatty() else None)

        def on_row(_: str) -> None:
            bar.set_postfix_str(importer.summary(report.counts), refresh=False)
            bar.update()

        report = importer.Report(out, on_row=on_row)
        started.append(report)
        try:
            yield report
        finally:
            report.close()
            out.close()
            bar.close()

    code = ExitCode.OK
    try:
        if args.dry_run:
            with reporting() as report:
                importer.dry_run(records, report)
        else:
            options = importer.Options(concurrency=args.concurrency, retries=args.retries)
            code = _import(records, reporting, options, credentials_from_env(), keys_file)
    except KeyboardInterrupt:
        code = ExitCode.INTERRUPTED
    except (UnicodeDecodeError, csv.Error) as exc:  # the CSV broke after its first rows
        raise Exit(
            ExitCode.USAGE, f"cannot read {path} past the last line reported: {exc}"
        ) from None
    finally:
        if keys_file is not None:
            keys_file.close()
            if keys_file.rows:
                print(
                    f"xcloud: keys of {keys_file.rows} customers: {keys_file.path}", file=sys.stderr
                )
            else:  # nothing created: no empty file left to block the next run
                keys_file.path.unlink(missing_ok=True)
    if not started:
        return code
    counts = started[0].counts
    line = importer.summary(counts, dry_run=args.dry_run)
    print(("interrupted (run again to resume): " if code == ExitCode.INTERRUPTED else "") + line)
    print(f"xcloud: report: {report_path}", file=sys.stderr)
    if code == ExitCode.UNREACHABLE:
        print(
            "xcloud: lost the server: the lines not sent are reported failed; run again",
            file=sys.stderr,
        )
    if code == ExitCode.OK and counts[importer.FAILED]:
        code = ExitCode.FAILED
    return code


def _chain(first: T | None, rest: Iterator[T]) -> Iterator[T]:
    if first is not None:
        yield first
        yield from rest


def _import(
    records: Iterator[Record],
    reporting: Callable[[], contextlib.AbstractContextManager[Report]],
    options: Options,
    credential: tuple[str, str, str],
    keys_file: KeysFile | None = None,
) -> ExitCode:
    import aiohttp

    from service.tools import importer
    from service.tools.client import XCloudClient, XCloudError

    url, service_id, secret = credential

    async def main() -> ExitCode:
        # SIGTERM ends the run like Ctrl-C: the report is completed with what is known.
        task = asyncio.current_task()
        assert task is not None
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        # The importer retries (with each record's Idempotency-Key) itself.
        async with XCloudClient(url, service_id, secret, retries=0) as client:
            # One cheap signed call first: a wrong secret or URL stops us before line 1,
            # and before the report of an earlier run is overwritten.
            try:
                await client.list_customers(limit=1)
            except XCloudError as exc:
                raise _server_error(exc) from None
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise Exit(
                    ExitCode.UNREACHABLE, f"cannot reach the server at {url}: {exc}"
                ) from None
            with reporting() as report:
                on_created = keys_file.add if keys_file is not None else None
                reached = await importer.run_import(records, client, report, options, on_created)
            return ExitCode.OK if reached else ExitCode.UNREACHABLE

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:  # SIGTERM
        return ExitCode.INTERRUPTED


# --- fake ---------------------------------------------------------------------------------


def cmd_fake(args: argparse.Namespace) -> int:
    _require_tools("fake", "faker")
    from service.tools import fake

    try:
        generated = fake.customers(
            args.count, seed=args.seed, prefix=args.prefix, timestamp_ms=args.timestamp
        )
        out = sys.stdout
        for customer in generated:
            out.write(json.dumps(customer, ensure_ascii=False, separators=(",", ":")) + "\n")
        out.flush()
    except ValueError as exc:
        raise Exit(ExitCode.USAGE, str(exc)) from None
    return ExitCode.OK


# --- registration -------------------------------------------------------------------------


def _count(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if not value.isdigit() or not low <= int(value) <= high:
            raise argparse.ArgumentTypeError(f"must be a whole number from {low} to {high}")
        return int(value)

    return parse


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `customers`, `import` and `fake` on the `xcloud` parser."""
    fmt = argparse.RawDescriptionHelpFormatter

    customers = sub.add_parser(
        "customers",
        help="register, read, list, update customers on a running service",
        description="Call the customer API of a running service, signed with your credential. "
        "Answers are printed as JSON on stdout.",
        epilog=EXIT_CODES + ENVIRONMENT,
        formatter_class=fmt,
    )
    csub = customers.add_subparsers(dest="action", required=True)

    register = csub.add_parser("register", help="POST a customer from a JSON file ('-': stdin)")
    register.add_argument("file", metavar="FILE")
    register.set_defaults(func=cmd_register)

    get = csub.add_parser("get", help="one customer")
    get.add_argument("customer_id", metavar="CUSTOMER_ID")
    get.set_defaults(func=cmd_get)

    listing = csub.add_parser("list", help="a page of customers; --all: every one, JSON Lines")
    listing.add_argument("--limit", type=_count(1, 100), default=None, help="page size, 1-100")
    listing.add_argument("--status", choices=("ACTIVE", "INACTIVE", "SUSPENDED"))
    listing.add_argument("--cursor", help="nextCursor of the previous page")
    listing.add_argument(
        "--all", action="store_true", help="follow nextCursor; one customer per line"
    )
    listing.set_defaults(func=cmd_list)

    update = csub.add_parser("update", help="PUT a customer's fields from a JSON file")
    update.add_argument("customer_id", metavar="CUSTOMER_ID")
    update.add_argument("file", metavar="FILE")
    update.set_defaults(func=cmd_update)

    exists = csub.add_parser(
        "exists", help="exit 0 if every id exists, else 1 and the missing ids on stdout"
    )
    exists.add_argument("customer_ids", nargs="+", metavar="CUSTOMER_ID", help="'-': stdin")
    exists.set_defaults(func=cmd_exists)
    rotate = csub.add_parser(
        "rotate-key", help="replace one of a customer's API keys; prints the new one, once"
    )
    rotate.add_argument("customer_id", metavar="CUSTOMER_ID")
    rotate.add_argument("slot", choices=("primary", "secondary"))
    rotate.set_defaults(func=cmd_rotate_key)
    for parser in (register, get, listing, update, exists, rotate):
        parser.epilog, parser.formatter_class = EXIT_CODES + ENVIRONMENT, fmt

    keys = sub.add_parser(
        "keys",
        help="customers' API keys",
        epilog=EXIT_CODES + ENVIRONMENT,
        formatter_class=fmt,
    )
    ksub = keys.add_subparsers(dest="action", required=True)
    verify = ksub.add_parser(
        "verify",
        help="whose key is it: customerId, slot, status; exit 1 (API_KEY_NOT_FOUND) if nobody's",
        epilog=EXIT_CODES + ENVIRONMENT,
        formatter_class=fmt,
    )
    verify.add_argument("key", metavar="KEY", help="the API key; '-': read it from stdin")
    verify.set_defaults(func=cmd_verify_key)

    imp = sub.add_parser(
        "import",
        help="register many customers from CSV or JSON Lines, with a report",
        description=IMPORT_HELP,
        epilog=EXIT_CODES + ENVIRONMENT,
        formatter_class=fmt,
    )
    imp.add_argument("file", metavar="FILE")
    imp.add_argument("--format", choices=("csv", "jsonl"), help="default: from FILE's suffix")
    imp.add_argument("--report", metavar="PATH", help="default: FILE.report.csv")
    imp.add_argument(
        "--concurrency", type=_count(1, 256), default=16, help="requests in flight (16)"
    )
    imp.add_argument(
        "--retries", type=_count(0, 10), default=3, help="per request on 5xx/network errors (3)"
    )
    imp.add_argument(
        "--dry-run", action="store_true", help="validate locally, send nothing, no credentials"
    )
    imp.add_argument(
        "--keys-out",
        metavar="FILE",
        help="write customerId,primaryApiKey,secondaryApiKey of each customer created to "
        "FILE (new, mode 0600; never overwritten)",
    )
    imp.set_defaults(func=cmd_import)

    fake = sub.add_parser(
        "fake",
        help="N realistic customers as JSON Lines on stdout",
        description="N realistic, valid customers with ids FST-{timestamp}-{identifier}, as "
        "JSON Lines on stdout: for tests, demos and benchmarks.",
    )
    fake.add_argument("count", type=_count(0, 10_000_000), metavar="N")
    fake.add_argument("--seed", type=int, help="the same seed gives the same customers")
    fake.add_argument("--prefix", help="identifier prefix: ids FST-{timestamp}-{prefix}{n}")
    fake.add_argument(
        "--timestamp",
        type=_count(10_000_000, 99_999_999_999_999),
        help="milliseconds for the ids (default: now; 1700000000000 with --seed)",
    )
    fake.set_defaults(func=cmd_fake)
