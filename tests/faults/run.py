"""`make faults`: every scenario (the combined one five times), a table in
docs/reliability.md, and one closing line:
`faults: N scenarios, L lost, E server errors, D duplicates (at most X for one fault)`."""

from __future__ import annotations

import asyncio
import logging
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
        "new customers registered and then updated four times each, about 120 requests/s.",
        "",
        "| scenario | fault injected | requests sent | answers by status | connections cut "
        "| hung | writes acknowledged | customers | events | lost | invented | out of order "
        "| duplicates (bound) | held |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(o.load.statuses.items()))
        v = o.verdict
        lines.append(
            f"| {o.name} | {o.fault} | {o.load.sent} | {statuses} | {o.load.dropped} "
            f"| {o.load.hung} | {o.load.acknowledged} | {v.customers} | {v.events} | {v.lost} "
            f"| {v.invented} | {v.out_of_order} | {v.duplicates} ({o.duplicates_bound}) "
            f"| {'yes' if o.ok else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


async def main() -> int:
    # The checker's own clients log every refused connection while brokers are down.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    outcomes = []
    for scenario in scenarios.SCENARIOS:
        for i in range(scenario.repeat):
            label = scenario.name + (f" {i + 1}/{scenario.repeat}" if scenario.repeat > 1 else "")
            print(f"faults: {label} ...", file=sys.stderr, flush=True)
            outcome = await scenarios.run(scenario)
            outcome.name = label
            for problem in outcome.problems[:20]:
                print(f"faults:   {problem}", file=sys.stderr)
            outcomes.append(outcome)
    text = DOC.read_text()
    block = f"{START}\n{table(outcomes)}{END}"
    DOC.write_text(
        re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    )
    lost = sum(o.verdict.lost for o in outcomes)
    errors = sum(o.load.server_errors for o in outcomes)
    duplicates = sum(o.verdict.duplicates for o in outcomes)
    print(
        f"faults: {len(outcomes)} scenarios, {lost} lost, {errors} server errors, "
        f"{duplicates} duplicates (at most {scenarios.duplicates_bound(100)} for one fault)"
    )
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
