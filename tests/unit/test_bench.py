"""The bench's own logic, without running a bench.

- The Debezium side must keep pointing at the outbox as it is: a renamed column would
  otherwise only show as a Debezium start-up error deep in `make bench`.
- A load run with failed requests is flagged, and the bench then exits 1.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from bench import debezium_compare, report, run
from service.domain.events import CONTENT_TYPE

ROOT = Path(__file__).resolve().parents[2]


def outbox_columns() -> set[str]:
    """Columns of `outbox` as the migrations create and alter it."""
    columns: set[str] = set()
    for sql in sorted((ROOT / "sql").glob("*.sql")):
        text = sql.read_text()
        table = re.search(r"CREATE TABLE outbox \((.*?)\n\);", text, re.S)
        if table:
            for line in table.group(1).splitlines():
                word = line.strip().split(" ", 1)[0]
                if word and not word.startswith("--"):
                    columns.add(word)
        columns |= set(re.findall(r"ALTER TABLE outbox ADD COLUMN (?:IF NOT EXISTS )?(\w+)", text))
        for old, new in re.findall(r"ALTER TABLE outbox RENAME COLUMN (\w+) TO (\w+)", text):
            columns.discard(old)
            columns.add(new)
    return columns


def properties() -> dict[str, str]:
    class Pg:
        port = 1

    return debezium_compare.debezium_properties(Pg(), "kafka:9092", "xcloud.customers")


def test_the_router_reads_columns_the_outbox_has() -> None:
    props = properties()
    columns = outbox_columns()
    assert {"event_id", "customer_id", "payload", "event_type"} <= columns
    for key in ("id", "key", "payload"):
        assert props[f"transforms.outbox.table.field.event.{key}"] in columns
    assert props["transforms.outbox.route.by.field"] in columns


def test_debezium_sends_the_relays_header_and_nothing_else() -> None:
    props = properties()
    assert props["transforms.contenttype.header"] == "content-type"
    assert props["transforms.contenttype.value.literal"] == CONTENT_TYPE
    assert props["transforms.dropid.headers"] == "id"
    assert props["extended.headers.enabled"] == "false"
    assert props["transforms.outbox.route.topic.replacement"] == "xcloud.customers"


def test_quote_replaces_only_between_the_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    start, end = debezium_compare.README_START, debezium_compare.README_END
    readme.write_text(f"before\n{start}\nold table\n{end}\nafter\n")
    debezium_compare.quote(readme, "new table\n")
    assert readme.read_text() == f"before\n{start}\nnew table\n{end}\nafter\n"
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    debezium_compare.quote(plain, "new table")
    assert plain.read_text() == "no markers\n"


def _loadgen_answering(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, out: dict) -> dict:
    """bench.run.loadgen with the load generator's process replaced by its JSON answer."""

    def fake_run(argv, **kwargs):
        assert argv[0] == str(run.LOADGEN)
        return subprocess.CompletedProcess(argv, 0, stdout=json.dumps(out), stderr="")

    monkeypatch.setattr(run, "RESULTS", tmp_path)
    monkeypatch.setattr(run.subprocess, "run", fake_run)
    return run.loadgen(run.Server(None, "http://127.0.0.1:1"), "secret", "register", 16, 1)


def _answer(**changes) -> dict:
    base = {"mode": "register", "concurrency": 16, "requests": 100, "ok": 100, "rps": 100.0}
    return {**base, "statuses": {"201": 100}, "errors": 0, **changes}


def test_a_load_run_with_failed_requests_is_flagged_and_fails_the_bench(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(report, "FLAGGED", [])
    _loadgen_answering(monkeypatch, tmp_path, _answer())
    assert report.FLAGGED == [] and run.flagged_runs() == 0

    failed = _answer(ok=60, rps=60.0, statuses={"201": 60, "503": 40}, errors=40)
    assert _loadgen_answering(monkeypatch, tmp_path, failed)["rps"] == 60.0
    assert len(report.FLAGGED) == 1 and "40 failed requests" in report.FLAGGED[0]
    assert run.flagged_runs() == 1
