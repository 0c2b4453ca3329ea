"""The fault matrix scenarios (``testbed/scenarios.py``) run, bounded, on the installed build.

Only build-independent invariants are asserted here: the outcome's shape, its internal
consistency and the time cap, plus the healthy controls, which every build must deliver. What a
build does under a fault is the bench's to report (``bench/REPORT.md``, fault matrix) and the
regression, engine and retry tests' to assert.
"""

from __future__ import annotations

import pytest

from . import scenarios

pytestmark = pytest.mark.unit

HEALTHY = ("healthy_reply", "healthy_vad_turn")


@pytest.mark.parametrize("name", list(scenarios.SCENARIOS))
async def test_scenario_outcome_is_well_formed(name: str) -> None:
    scenario = scenarios.SCENARIOS[name]
    result = await scenarios.run_scenario(name)
    outcome = result.outcome

    assert result.setup_failed is None, f"{name}: the session did not start: {result.setup_failed}"
    assert result.elapsed <= scenario.hard_cap, (
        f"{name}: took {result.elapsed:.1f}s, over its {scenario.hard_cap:.0f}s cap"
    )
    assert list(outcome) == list(scenarios.OUTCOME_KEYS), f"{name}: keys {sorted(outcome)}"
    for key, kind in scenarios.OUTCOME_KEYS.items():
        value = outcome[key]  # type: ignore[literal-required]
        assert type(value) is kind, f"{name}: {key}={value!r} is not a {kind.__name__}"
        if kind is int:
            assert isinstance(value, int) and value >= 0, f"{name}: {key}={value}"

    expected_attempts = (
        outcome["response_creates"] if scenario.counts == "responses" else outcome["connections"]
    )
    assert outcome["attempts"] == expected_attempts
    assert outcome["connections"] >= 1, f"{name}: the client never tried to connect"
    assert outcome["overlapping_creates"] <= outcome["response_creates"]
    if not scenario.tool:
        assert result.tool_executions == 0 and outcome["duplicate_tool_calls"] == 0
    elif name == "function_call":
        # meaningful only if the tool really runs (every build runs it)
        assert result.tool_executions >= 1, f"{name}: the tool never ran: {outcome}"

    if name in HEALTHY:
        # controls: every build delivers a healthy reply, cleanly
        assert outcome["reply_delivered"], f"{name}: {outcome}"
        assert outcome["connections"] == 1 and not result.driver_timed_out, outcome
        assert outcome["errors_recoverable"] == outcome["errors_fatal"] == 0, outcome
        assert not outcome["close_emitted"], outcome
        assert outcome["unhandled"] == outcome["orphan_items"] == 0, outcome
        assert outcome["overlapping_creates"] == 0, outcome
