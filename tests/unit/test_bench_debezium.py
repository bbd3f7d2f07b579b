"""The Debezium side of the bench must keep pointing at the outbox as it is: a renamed
column would otherwise only show as a Debezium start-up error deep in `make bench`."""

from __future__ import annotations

import re
from pathlib import Path

from bench import debezium_compare
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
