"""Bulk registration of customers from CSV or JSON Lines (`xcloud import`).

The flow, one record at a time, memory bounded by the concurrency:

    read + convert -> validate locally (the service's own schema) -> drop in-file duplicates
    -> HEAD the valid ids 100 at a time, skip the existing ones -> POST the rest, bounded
    -> one report row per record, written in line order as results come in

Resuming needs no state file: a second run HEADs every id again, so only the customers
still missing are sent, and its report still has a row for every line.

Each record is sent with an Idempotency-Key of its own, the same on every retry, so a
registration whose 201 was lost is answered with that 201 (its API keys) on the retry.
With --keys-out the keys of every customer created go to a file only its owner can read.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import random
import re
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import aiohttp
from marshmallow import Schema, ValidationError, fields

from service.api import schemas
from service.tools.client import (
    Conflict,
    InvalidRequest,
    ServerError,
    ServiceUnavailable,
    XCloudClient,
    XCloudError,
)

T = TypeVar("T")

HEAD_BATCH = 100  # the most ids one HEAD takes (contract section 8)
# The ids of one HEAD, comma-joined, stay under this many bytes, so that its request line
# (and the X-Missing-Customer-Ids answer) fit the 8 KiB line limits of common servers,
# proxies and clients, aiohttp's included, not only this server's 16 KiB.
HEAD_IDS_BYTES = 7_800

CREATED, EXISTED, INVALID, FAILED, VALID = "created", "existed", "invalid", "failed", "valid"
REPORT_FIELDS = ("line", "customerId", "outcome", "reason")


class InputError(Exception):
    """The file as a whole cannot be imported (unknown format, bad CSV header)."""


@dataclass(frozen=True, slots=True)
class Record:
    """One input record: a body ready to send, or the reason it cannot be sent."""

    line: int
    customer_id: str
    body: dict[str, Any] | None
    reason: str = ""


# --- reading ----------------------------------------------------------------------------


def detect_format(path: Path, given: str | None) -> str:
    if given:
        return given
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise InputError(f"cannot tell the format of {path} from its name: use --format csv|jsonl")


def read_records(path: Path, fmt: str) -> Iterator[Record]:
    """Every non-blank record of the file, validated; duplicates of an id are marked."""
    raw = _read_csv(path) if fmt == "csv" else _read_jsonl(path)
    return _first_wins(_validated(raw))


def count_records(path: Path, fmt: str) -> int:
    """For the progress bar's total: the same records, without converting them."""
    if fmt == "csv":
        with path.open(newline="", encoding="utf-8-sig") as f:
            return max(0, sum(1 for row in csv.reader(f) if any(row)) - 1)
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    # Bytes, decoded per line: one bad line is one invalid record, not a dead import.
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                doc = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield number, None, "not UTF-8 text"
                continue
            except ValueError as exc:
                yield number, None, f"not valid JSON: {exc}"
                continue
            if not isinstance(doc, dict):
                yield number, None, "not a JSON object"
                continue
            yield number, doc, ""


def _read_csv(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    # utf-8-sig: spreadsheets often start a CSV with a byte order mark.
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        converters = csv_converters(header)
        while True:
            start = reader.line_num + 1  # a quoted cell may span lines: report the first
            row = next(reader, None)
            if row is None:
                return
            if not any(row):
                continue
            if len(row) != len(header):
                # The id still goes to the report when its cell is there to read.
                at = header.index("customerId") if "customerId" in header else len(row)
                doc = {"customerId": row[at]} if at < len(row) else None
                yield start, doc, f"{len(row)} cells, the header has {len(header)}"
                continue
            yield start, csv_body(header, row, converters), ""


# --- CSV cells: typed by the schema -------------------------------------------------------


def _to_int(text: str) -> int | str:
    return int(text) if re.fullmatch(r"[+-]?[0-9]+", text.strip()) else text


def _to_number(text: str) -> int | float | str:
    stripped = text.strip()
    if re.fullmatch(r"[+-]?[0-9]+", stripped):
        return int(stripped)
    try:
        return float(stripped)
    except ValueError:
        return text


_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


def _to_bool(text: str) -> bool | str:
    word = text.strip().lower()
    return True if word in _TRUE else False if word in _FALSE else text


# Text that does not convert is passed on unchanged, so the schema reports it with its
# path ("settings.dataRetentionDays: Not a valid integer.") like any other error.
_CONVERTERS: dict[type, Callable[[str], object]] = {
    schemas.StrictInteger: _to_int,
    schemas.StrictNumber: _to_number,
    schemas.StrictBoolean: _to_bool,
}


def _leaf_fields(schema: Schema, prefix: str = "") -> dict[str, fields.Field[Any]]:
    leaves: dict[str, fields.Field[Any]] = {}
    for name, field in schema.fields.items():
        path = f"{prefix}{name}"
        if isinstance(field, fields.Nested):
            leaves.update(_leaf_fields(field.schema, path + "."))
        else:
            leaves[path] = field
    return leaves


CSV_COLUMNS: dict[str, fields.Field[Any]] = _leaf_fields(schemas.CustomerCreateSchema())


def csv_converters(header: list[str]) -> list[Callable[[str], object]]:
    """One converter per column; raises InputError for a column that is no customer field."""
    seen: set[str] = set()
    converters: list[Callable[[str], object]] = []
    for column in header:
        if column not in CSV_COLUMNS:
            raise InputError(
                f"CSV column {column!r} is not a customer field; columns are dotted paths "
                f"such as contactInfo.email (known: {', '.join(CSV_COLUMNS)})"
            )
        if column in seen:
            raise InputError(f"CSV column {column!r} appears twice")
        seen.add(column)
        converters.append(_CONVERTERS.get(type(CSV_COLUMNS[column]), str))
    return converters


def csv_body(
    header: list[str], row: list[str], converters: list[Callable[[str], object]]
) -> dict[str, Any]:
    """A row as the nested JSON body; an empty cell leaves its field out."""
    body: dict[str, Any] = {}
    for column, cell, convert in zip(header, row, converters, strict=True):
        if cell == "":
            continue
        *parents, leaf = column.split(".")
        node = body
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = convert(cell)
    return body


# --- validation and duplicates ------------------------------------------------------------


def validation_reason(details: dict[str, list[str]]) -> str:
    return "; ".join(f"{path}: {' '.join(messages)}" for path, messages in details.items())


def _validated(raw: Iterable[tuple[int, dict[str, Any] | None, str]]) -> Iterator[Record]:
    for line, doc, problem in raw:
        customer_id = doc.get("customerId") if isinstance(doc, dict) else None
        customer_id = customer_id if isinstance(customer_id, str) else ""
        if problem or doc is None:  # the readers give a document whenever no problem
            yield Record(line, customer_id, None, problem)
            continue
        try:
            schemas.load_create(doc)
        except ValidationError as exc:
            yield Record(line, customer_id, None, validation_reason(schemas.dotted(exc.messages)))
            continue
        yield Record(line, customer_id, doc)


def _first_wins(records: Iterable[Record]) -> Iterator[Record]:
    first_line: dict[str, int] = {}
    for record in records:
        if record.body is not None:
            if record.customer_id in first_line:
                reason = f"duplicate of line {first_line[record.customer_id]} (the first wins)"
                record = Record(record.line, record.customer_id, None, reason)
            else:
                first_line[record.customer_id] = record.line
        yield record


# --- the report ---------------------------------------------------------------------------


class Report:
    """line,customerId,outcome,reason: one row per record, in line order, flushed as written.

    Results arrive out of order (requests run concurrently); a row waits only for the rows
    before it, so a killed run leaves every row up to its oldest request still in flight.
    """

    def __init__(self, out: IO[str], on_row: Callable[[str], None] | None = None) -> None:
        self._out = out
        self._writer = csv.writer(out, lineterminator="\n")
        self._writer.writerow(REPORT_FIELDS)
        self._next = 0
        self._waiting: dict[int, tuple[int, str, str, str]] = {}
        self._on_row = on_row
        self.counts: Counter[str] = Counter()

    def add(self, seq: int, record: Record, outcome: str, reason: str = "") -> None:
        self.counts[outcome] += 1
        if self._on_row is not None:
            self._on_row(outcome)
        self._waiting[seq] = (record.line, record.customer_id, outcome, reason)
        if seq != self._next:
            return
        while self._next in self._waiting:
            self._writer.writerow(self._waiting.pop(self._next))
            self._next += 1
        self._out.flush()

    def close(self) -> None:
        """Write what still waits (after an interruption: rows behind a gap), in order."""
        for seq in sorted(self._waiting):
            self._writer.writerow(self._waiting.pop(seq))
        self._out.flush()


def summary(counts: Counter[str], *, dry_run: bool = False) -> str:
    if dry_run:
        return f"valid {counts[VALID]}, invalid {counts[INVALID]} (dry run: nothing sent)"
    return (
        f"created {counts[CREATED]}, already existed {counts[EXISTED]}, "
        f"invalid {counts[INVALID]}, failed {counts[FAILED]}"
    )


# --- sending ------------------------------------------------------------------------------

# Worth another try: the server or the line to it, not the request itself.
_TRANSIENT_ERRORS = (aiohttp.ClientError, TimeoutError, ConnectionError)


@dataclass
class Options:
    concurrency: int = 16
    retries: int = 3
    backoff: float = 0.5  # seconds before the first retry; doubled each time, with jitter


class _Unreachable(Exception):
    """The server could not be reached even after the retries: stop sending."""


def _in_use(exc: BaseException) -> bool:
    """409 IDEMPOTENCY_KEY_IN_USE: our own earlier attempt is still running."""
    return isinstance(exc, Conflict) and exc.code == "IDEMPOTENCY_KEY_IN_USE"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, XCloudError):
        return f"{exc.status} {exc.code}: {exc.message}".rstrip(": ")
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


async def _with_retries(options: Options, attempt_once: Callable[[], Awaitable[T]]) -> T:
    """Run attempt_once; retry on 5xx and connection errors; raise the last error."""
    for attempt in range(options.retries + 1):
        try:
            return await attempt_once()
        except (ServiceUnavailable, ServerError, Conflict, *_TRANSIENT_ERRORS) as exc:
            if attempt == options.retries or (isinstance(exc, Conflict) and not _in_use(exc)):
                raise
        delay = options.backoff * 2**attempt
        await asyncio.sleep(random.uniform(delay / 2, delay))
    raise AssertionError("unreachable")


async def register_one(
    client: XCloudClient,
    body: dict[str, Any],
    options: Options,
    on_created: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[str, str]:
    """(outcome, reason) of one POST, retried when the failure is not the request's, with
    one Idempotency-Key: a retry of a registration that happened gets its 201 back.
    `on_created` receives the 201 answer (the API keys)."""
    attempts = 0
    key = uuid.uuid4().hex
    created: list[dict[str, Any]] = []

    async def attempt() -> None:
        nonlocal attempts
        attempts += 1
        created.append(await client.register_customer(body, idempotency_key=key))

    try:
        await _with_retries(options, attempt)
    except Conflict as exc:
        if _in_use(exc):
            return FAILED, _describe(exc) + _after(attempts)
        if attempts > 1:  # a key the server no longer remembered (24 h), or none
            return EXISTED, "CUSTOMER_EXISTS on a retry: an earlier attempt may have created it"
        return EXISTED, ""
    except InvalidRequest as exc:
        details = exc.body.get("details")
        if isinstance(details, dict):
            return INVALID, "server: " + validation_reason(details)
        return INVALID, "server: " + _describe(exc)
    except XCloudError as exc:
        if exc.status == 413:
            return INVALID, "server: " + _describe(exc)
        return FAILED, _describe(exc) + _after(attempts)
    except _TRANSIENT_ERRORS as exc:
        raise _Unreachable(_describe(exc) + _after(attempts)) from exc
    if on_created is not None:
        on_created(created[-1])
    return CREATED, ""


def _after(attempts: int) -> str:
    return f" (after {attempts} attempts)" if attempts > 1 else ""


async def missing_of(client: XCloudClient, ids: list[str], options: Options) -> set[str] | None:
    """The ids that do not exist, or None when HEAD failed: then all are sent (409 sorts it)."""
    try:
        return set(await _with_retries(options, lambda: client.missing_customers(ids)))
    except (XCloudError, *_TRANSIENT_ERRORS):
        return None


async def run_import(
    records: Iterable[Record],
    client: XCloudClient,
    report: Report,
    options: Options,
    on_created: Callable[[dict[str, Any]], None] | None = None,
) -> bool:
    """Register every valid record that does not exist yet; False if the server was lost.

    At most `options.concurrency` POSTs are in flight, and the reader advances only as
    they finish, so memory stays bounded whatever the file's size.
    """
    slots = asyncio.Semaphore(options.concurrency)
    running: set[asyncio.Task[None]] = set()
    lost: list[str] = []  # why the server was given up on, once it was

    async def send(seq: int, record: Record) -> None:
        try:
            if lost:
                report.add(seq, record, FAILED, f"not sent: {lost[0]}")
                return
            try:
                outcome, reason = await register_one(client, record.body or {}, options, on_created)
            except _Unreachable as exc:
                lost.append(f"server unreachable: {exc}")
                outcome, reason = FAILED, str(exc)
            except Exception as exc:  # one record's surprise must not end the import
                outcome, reason = FAILED, _describe(exc)
            report.add(seq, record, outcome, reason)
        finally:
            slots.release()

    async def flush(batch: list[tuple[int, Record]]) -> None:
        missing = None
        if not lost:
            missing = await missing_of(client, [r.customer_id for _, r in batch], options)
        for seq, record in batch:
            if missing is not None and record.customer_id not in missing:
                report.add(seq, record, EXISTED)
                continue
            await slots.acquire()
            task = asyncio.create_task(send(seq, record))
            running.add(task)
            task.add_done_callback(running.discard)

    try:
        batch: list[tuple[int, Record]] = []
        size = 0  # of the batch's ids, comma-joined
        for seq, record in enumerate(records):
            if record.body is None:
                report.add(seq, record, INVALID, record.reason)
                continue
            grown = size + len(record.customer_id.encode()) + (1 if batch else 0)
            if batch and grown > HEAD_IDS_BYTES:
                await flush(batch)
                batch, grown = [], len(record.customer_id.encode())
            batch.append((seq, record))
            size = grown
            if len(batch) == HEAD_BATCH:
                await flush(batch)
                batch, size = [], 0
        if batch:
            await flush(batch)
        if running:
            await asyncio.gather(*running)
    finally:
        for task in running:
            task.cancel()
    return not lost


def dry_run(records: Iterable[Record], report: Report) -> None:
    for seq, record in enumerate(records):
        if record.body is None:
            report.add(seq, record, INVALID, record.reason)
        else:
            report.add(seq, record, VALID)


# --- the keys of the customers created (--keys-out) ---------------------------------------

KEYS_FIELDS = ("customerId", "primaryApiKey", "secondaryApiKey")


class KeysFile:
    """customerId,primaryApiKey,secondaryApiKey: a new file, mode 0600, a row flushed per
    customer created, so a killed import keeps every key it was given."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # O_EXCL: never overwrite (nor follow a planted symlink); 0600 from the first byte.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.fchmod(fd, 0o600)  # whatever the umask
        self._out = os.fdopen(fd, "w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._out, lineterminator="\n")
        self._writer.writerow(KEYS_FIELDS)
        self._out.flush()
        self.rows = 0

    def add(self, created: dict[str, Any]) -> None:
        keys = created["apiKeys"]
        self._writer.writerow((created["customerId"], keys["primary"], keys["secondary"]))
        self._out.flush()
        self.rows += 1

    def close(self) -> None:
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()
