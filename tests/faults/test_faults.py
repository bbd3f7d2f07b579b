"""The fast fault scenarios, in `make test`; `make faults` runs them all."""

from __future__ import annotations

import pytest

from tests.faults import scenarios

FAST = [(name, fault) for name, fault, fast in scenarios.SCENARIOS if fast]


@pytest.mark.parametrize(("name", "fault"), FAST, ids=[n for n, _ in FAST])
async def test_nothing_lost_nothing_invented_no_server_error(services, name, fault):
    if services.source != "local processes":
        pytest.skip("fault injection drives the local processes of scripts/services.sh")
    outcome = await scenarios.run(name, fault)
    load, verdict = outcome.load, outcome.verdict
    assert load.sent > 500 and verdict.customers > 300, "the load really ran"
    assert load.server_errors == 0, load.statuses
    assert set(load.statuses) <= {200, 201, 409, 503}
    assert verdict.lost == 0, verdict.problems
    assert verdict.invented == 0, verdict.problems
    assert verdict.out_of_order == 0, verdict.problems
    assert verdict.events >= verdict.customers
