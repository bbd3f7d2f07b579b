"""`make faults`: every scenario, a table in docs/reliability.md, and one closing line:
`faults: N scenarios, L lost, E server errors`."""

from __future__ import annotations

import asyncio
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

from tests.faults import scenarios

DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
START, END = "<!-- faults:start -->", "<!-- faults:end -->"


def table(outcomes: list[scenarios.Outcome]) -> str:
    lines = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M UTC}: `make faults`, 2 API workers + 2 relays, "
        "steady load of registrations and updates (about 1 in 3) at 120 requests/s.",
        "",
        "| scenario | fault injected | requests sent | answers by status | connections cut "
        "| hung | customers | events | lost | invented | out of order | duplicates delivered |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(o.load.statuses.items()))
        v = o.verdict
        lines.append(
            f"| {o.name} | {o.fault} | {o.load.sent} | {statuses} | {o.load.dropped} "
            f"| {o.load.hung} | {v.customers} | {v.events} | {v.lost} | {v.invented} "
            f"| {v.out_of_order} | {v.duplicates} |"
        )
    return "\n".join(lines) + "\n"


async def main() -> int:
    outcomes = []
    for name, fault, _fast in scenarios.SCENARIOS:
        print(f"faults: {name} ...", file=sys.stderr, flush=True)
        outcome = await scenarios.run(name, fault)
        for problem in outcome.verdict.problems[:20]:
            print(f"faults:   {problem}", file=sys.stderr)
        outcomes.append(outcome)
    text = DOC.read_text()
    block = f"{START}\n{table(outcomes)}{END}"
    DOC.write_text(
        re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    )
    lost = sum(o.verdict.lost for o in outcomes)
    errors = sum(o.load.server_errors for o in outcomes)
    bad = [o.name for o in outcomes if not o.ok]
    print(f"faults: {len(outcomes)} scenarios, {lost} lost, {errors} server errors")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
