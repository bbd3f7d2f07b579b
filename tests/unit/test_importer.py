"""The import and fake tools without a server: reading, typing, reporting, retrying."""

from __future__ import annotations

import asyncio
import io
import json
from collections import Counter

import pytest

from service.api import schemas
from service.tools import fake, importer
from service.tools.client import Conflict, InvalidRequest, ServiceUnavailable
from tests.helpers import example


def convert(header: str, row: str) -> dict:
    columns = header.split(",")
    return importer.csv_body(columns, row.split(","), importer.csv_converters(columns))


# --- CSV ----------------------------------------------------------------------------------


def test_csv_dotted_header_builds_the_nested_body_with_typed_cells():
    body = convert(
        "customerId,contactInfo.email,contactInfo.address.city,settings.dataRetentionDays,"
        "settings.reportingEnabled,location.latitude,location.longitude,status",
        "FST-20240101-A,a@a-corp.com,Springfield,30,Yes,41.5,-89,ACTIVE",
    )
    assert body == {
        "customerId": "FST-20240101-A",
        "contactInfo": {"email": "a@a-corp.com", "address": {"city": "Springfield"}},
        "settings": {"dataRetentionDays": 30, "reportingEnabled": True},
        "location": {"latitude": 41.5, "longitude": -89},
        "status": "ACTIVE",
    }


@pytest.mark.parametrize(
    ("cell", "value"),
    [
        ("true", True),
        ("FALSE", False),
        ("1", True),
        ("0", False),
        ("no", False),
        ("maybe", "maybe"),
    ],
)
def test_csv_booleans(cell, value):
    assert convert("settings.reportingEnabled", cell) == {"settings": {"reportingEnabled": value}}


def test_csv_empty_cells_leave_fields_out_and_text_that_does_not_convert_stays_text():
    body = convert("customerName,settings.dataRetentionDays,location.name", "Acme,thirty,")
    assert body == {"customerName": "Acme", "settings": {"dataRetentionDays": "thirty"}}
    with pytest.raises(Exception) as exc:
        schemas.load_create(example(settings=body["settings"]))
    assert "settings.dataRetentionDays" in schemas.dotted(exc.value.messages)


def test_csv_text_stays_text_even_when_it_looks_like_a_number():
    assert convert("contactInfo.address.postalCode", "01234") == {
        "contactInfo": {"address": {"postalCode": "01234"}}
    }


@pytest.mark.parametrize(
    "header", ["customerId,planet", "customerId,contactInfo", "customerId,customerId"]
)
def test_csv_a_column_that_is_no_customer_field_stops_the_file(header):
    with pytest.raises(importer.InputError):
        importer.csv_converters(header.split(","))


def test_csv_records_carry_their_first_line(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text(
        "customerId,customerName,contactInfo.email,status\n"
        'FST-20240101-A,"Two\nlines",a@a-corp.com,ACTIVE\n'
        "\n"
        "FST-20240101-B,short\n"
    )
    records = list(importer.read_records(path, "csv"))
    assert [(r.line, r.customer_id, r.body is not None) for r in records] == [
        (2, "FST-20240101-A", True),
        (5, "FST-20240101-B", False),
    ]
    assert records[1].reason == "2 cells, the header has 4"


# --- JSON Lines ---------------------------------------------------------------------------


def test_jsonl_each_bad_line_is_one_invalid_record_and_the_first_id_wins(tmp_path):
    good = json.dumps(example())
    path = tmp_path / "c.jsonl"
    path.write_bytes(
        b"\n".join(
            [
                good.encode(),
                b"",
                b"{not json",
                b"[1, 2]",
                b'{"customerId": "\xff"}',
                json.dumps(example(status="GONE")).encode(),
                good.encode(),
            ]
        )
        + b"\n"
    )
    records = list(importer.read_records(path, "jsonl"))
    assert [r.line for r in records] == [1, 3, 4, 5, 6, 7]
    assert records[0].body == example()
    reasons = [r.reason for r in records[1:]]
    assert reasons[0].startswith("not valid JSON")
    assert reasons[1:3] == ["not a JSON object", "not UTF-8 text"]
    assert reasons[3].startswith("status: ")
    assert reasons[4] == "duplicate of line 1 (the first wins)"


@pytest.mark.parametrize(
    ("name", "fmt"), [("a.csv", "csv"), ("a.JSONL", "jsonl"), ("a.ndjson", "jsonl")]
)
def test_format_from_the_file_name(tmp_path, name, fmt):
    assert importer.detect_format(tmp_path / name, None) == fmt


def test_an_unknown_suffix_needs_format(tmp_path):
    with pytest.raises(importer.InputError, match="--format"):
        importer.detect_format(tmp_path / "a.txt", None)


# --- report -------------------------------------------------------------------------------


def record(n: int) -> importer.Record:
    return importer.Record(n + 1, f"FST-20240101-C{n}", {})


def test_report_rows_come_out_in_line_order_as_soon_as_they_can():
    out = io.StringIO()
    report = importer.Report(out)
    report.add(1, record(1), importer.CREATED)
    assert out.getvalue() == "line,customerId,outcome,reason\n"  # waits for row 0
    report.add(0, record(0), importer.INVALID, "why, with a comma")
    report.add(3, record(3), importer.EXISTED)
    assert out.getvalue().splitlines()[1:] == [
        '1,FST-20240101-C0,invalid,"why, with a comma"',
        "2,FST-20240101-C1,created,",
    ]
    report.close()  # interrupted: what waits behind the gap is still written
    assert out.getvalue().splitlines()[-1] == "4,FST-20240101-C3,existed,"
    assert report.counts == Counter(invalid=1, created=1, existed=1)
    assert importer.summary(report.counts) == ("created 1, already existed 1, invalid 1, failed 0")


# --- sending, against a stand-in client ---------------------------------------------------


class StubClient:
    """Answers like the server would; counts what is in flight."""

    def __init__(self, existing=(), failures=None) -> None:
        self.existing = set(existing)
        self.failures = failures or {}  # id -> exceptions to raise first, in order
        self.in_flight = self.most_in_flight = 0
        self.posted: list[str] = []
        self.heads: list[list[str]] = []
        self.keys_sent: dict[str, list[str]] = {}

    async def missing_customers(self, ids):
        self.heads.append(list(ids))
        return [i for i in ids if i not in self.existing]

    async def register_customer(self, body, *, idempotency_key=None):
        customer_id = body["customerId"]
        self.keys_sent.setdefault(customer_id, []).append(idempotency_key)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.001)
            pending = self.failures.get(customer_id)
            if pending:
                raise pending.pop(0)
            if customer_id in self.existing:
                raise Conflict(409, "CUSTOMER_EXISTS", "exists", {})
            self.existing.add(customer_id)
            self.posted.append(customer_id)
            return {"customerId": customer_id}
        finally:
            self.in_flight -= 1


FAST = importer.Options(concurrency=4, retries=2, backoff=0)


def unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(503, "SERVICE_UNAVAILABLE", "db down", {})


async def test_a_transient_failure_is_retried_and_a_409_after_a_retry_is_explained():
    client = StubClient(failures={"X": [unavailable()], "Y": [ConnectionResetError()]})
    assert await importer.register_one(client, {"customerId": "X"}, FAST) == ("created", "")
    sent = client.keys_sent["X"]
    assert len(sent) == 2 and sent[0] == sent[1] and sent[0]  # one key for every retry
    client.existing.add("Y")  # as if the lost attempt had landed
    outcome, reason = await importer.register_one(client, {"customerId": "Y"}, FAST)
    assert outcome == "existed" and "earlier attempt" in reason


async def test_retries_run_out_into_failed_and_a_400_is_invalid():
    client = StubClient(failures={"X": [unavailable() for _ in range(3)]})
    outcome, reason = await importer.register_one(client, {"customerId": "X"}, FAST)
    assert (outcome, reason) == ("failed", "503 SERVICE_UNAVAILABLE: db down (after 3 attempts)")
    details = {"details": {"contactInfo.email": ["Not a valid email address."]}}
    client.failures["Z"] = [InvalidRequest(400, "VALIDATION_ERROR", "bad", details)]
    assert await importer.register_one(client, {"customerId": "Z"}, FAST) == (
        "invalid",
        "server: contactInfo.email: Not a valid email address.",
    )


async def test_run_import_skips_existing_ones_and_bounds_the_requests_in_flight():
    records = [importer.Record(n + 1, f"C{n}", {"customerId": f"C{n}"}) for n in range(250)]
    records[7] = importer.Record(8, "C7", None, "bad")
    client = StubClient(existing={"C1", "C200"})
    out = io.StringIO()
    report = importer.Report(out)

    assert await importer.run_import(records, client, report, FAST)

    assert report.counts == Counter(created=247, existed=2, invalid=1)
    assert len(client.posted) == 247 and "C1" not in client.posted
    assert 1 < client.most_in_flight <= FAST.concurrency
    assert len(out.getvalue().splitlines()) == 251


async def test_existence_checks_of_the_longest_ids_fit_an_8_kib_request_line():
    longest = [f"FST-{n:014d}-" + "x" * 64 for n in range(250)]  # 83 characters each
    assert {len(i) for i in longest} == {83}
    records = [importer.Record(n + 1, i, {"customerId": i}) for n, i in enumerate(longest)]
    client = StubClient(existing=set(longest))
    report = importer.Report(io.StringIO())

    assert await importer.run_import(records, client, report, FAST)

    assert report.counts == Counter(existed=250)  # none sent needlessly
    assert [i for head in client.heads for i in head] == longest
    for head in client.heads:
        line = f"HEAD /xcloud/v1/customers/{','.join(head)} HTTP/1.1"
        assert len(line) < 8190 and len(head) <= importer.HEAD_BATCH
    assert len(client.heads) == 3  # 92 + 92 + 66: as few as fit


class GoneServer(StubClient):
    """A server that goes away at the first refused connection: every later call is refused.
    Notes any record whose first POST came after some record had used up its retries (the
    moment the importer knows the server is gone)."""

    def __init__(self, retries: int, **kw) -> None:
        super().__init__(**kw)
        self.gone = False
        self.attempts_allowed = retries + 1
        self.gave_up = False
        self.started_after_giving_up: list[str] = []

    async def register_customer(self, body, *, idempotency_key=None):
        customer_id = body["customerId"]
        if self.gave_up and customer_id not in self.keys_sent:
            self.started_after_giving_up.append(customer_id)
        try:
            if self.gone:
                self.keys_sent.setdefault(customer_id, []).append(idempotency_key)
                await asyncio.sleep(0.001)
                raise ConnectionRefusedError()
            return await super().register_customer(body, idempotency_key=idempotency_key)
        except ConnectionRefusedError:
            self.gone = True
            if len(self.keys_sent[customer_id]) == self.attempts_allowed:
                self.gave_up = True
            raise


async def test_run_import_stops_sending_once_the_server_is_gone():
    records = [importer.Record(n + 1, f"C{n}", {"customerId": f"C{n}"}) for n in range(20)]
    client = GoneServer(FAST.retries, failures={"C0": [ConnectionRefusedError()]})
    out = io.StringIO()
    report = importer.Report(out)

    assert not await importer.run_import(records, client, report, FAST)

    # What was in flight when the server went may have landed; everything else failed.
    assert report.counts == Counter(created=len(client.posted), failed=20 - len(client.posted))
    assert client.gave_up and client.started_after_giving_up == []
    # The rest were not even tried: reported as not sent, never POSTed.
    not_sent = [row for row in out.getvalue().splitlines() if "not sent: server unreachable" in row]
    assert len(not_sent) == 20 - len(client.keys_sent) > 0


async def test_in_use_is_retried_with_the_same_key_and_keys_reach_on_created():
    in_use = Conflict(409, "IDEMPOTENCY_KEY_IN_USE", "busy", {})
    client = StubClient(failures={"X": [in_use]})
    created: list[dict] = []
    outcome = await importer.register_one(client, {"customerId": "X"}, FAST, created.append)
    assert outcome == ("created", "")
    assert created == [{"customerId": "X"}]
    assert len(set(client.keys_sent["X"])) == 1 and len(client.keys_sent["X"]) == 2
    keys = {"X": [in_use, in_use, in_use]}
    outcome, reason = await importer.register_one(
        StubClient(failures=keys), {"customerId": "X"}, FAST
    )
    assert outcome == "failed" and "IDEMPOTENCY_KEY_IN_USE" in reason


def test_keys_file_is_private_and_never_overwritten(tmp_path):
    import os
    import stat

    path = tmp_path / "keys.csv"
    keys = importer.KeysFile(path)
    keys.add({"customerId": "C1", "apiKeys": {"primary": "p1", "secondary": "s1"}})
    keys.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text().splitlines() == [
        "customerId,primaryApiKey,secondaryApiKey",
        "C1,p1,s1",
    ]
    with pytest.raises(FileExistsError):
        importer.KeysFile(path)
    assert path.read_text().count("C1") == 1


# --- fake ---------------------------------------------------------------------------------


def test_fake_customers_are_valid_unique_and_repeatable():
    made = list(fake.customers(2000, seed=11))
    for customer in made:
        schemas.load_create(customer)
    ids = [c["customerId"] for c in made]
    assert len(set(ids)) == 2000
    assert all(i.startswith(f"FST-{fake.SEEDED_TIMESTAMP_MS}-") for i in ids)
    assert list(fake.customers(50, seed=11)) == made[:50]
    assert list(fake.customers(50, seed=12)) != made[:50]


def test_fake_prefix_and_timestamp():
    ids = [c["customerId"] for c in fake.customers(3, prefix="Bench-", timestamp_ms=12345678)]
    assert ids == ["FST-12345678-Bench-1", "FST-12345678-Bench-2", "FST-12345678-Bench-3"]
    with pytest.raises(ValueError):
        next(fake.customers(1, prefix="-bad"))
