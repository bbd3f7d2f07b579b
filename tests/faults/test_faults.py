"""The fast fault scenarios and one combined run, in `make test`; `make faults` runs them
all. They always drive the local processes of scripts/services.sh (started when needed),
whatever the rest of the suite runs against: the session header says so."""

from __future__ import annotations

import pytest

from tests.faults import scenarios

FAST = [s for s in scenarios.SCENARIOS if s.fast]


@pytest.mark.parametrize("scenario", FAST, ids=[s.name for s in FAST])
async def test_nothing_lost_nothing_invented_in_order_no_server_error(scenario):
    outcome = await scenarios.run(scenario)
    assert outcome.load.acknowledged >= scenario.min_acknowledged, "the load really ran"
    assert set(outcome.load.statuses) <= {200, 201, 409, 503}, outcome.load.statuses
    assert outcome.problems == []
