"""The bounded, derandomized fault exploration of CI (issue 10); ``make chaos`` is the long one.

Each test draws ``Example`` s of one family (``tests/exploration.py``) with Hypothesis, runs
each on a real ``AgentSession`` through the emulator and checks every invariant of
``exploration.INVARIANTS`` after every example. CI: derandomized (the same examples on every
run), a fixed example budget per family, no example database, no shrinking (the failing
example is printed as drawn; ``make chaos`` shrinks). Patched build only: this is not a
regression test (``--pristine`` does not collect it).

``EXPLORATION_EXAMPLES`` (environment) overrides the per-family budget, e.g. for a local run.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from . import exploration
from .exploration import Example

pytestmark = [pytest.mark.unit, pytest.mark.exploration]

BUDGET = {"turns": 14, "connections": 12, "shutdown": 10, "fallback": 10}
"""examples per family in CI (about 1 s each on 2 cores)"""


def _budget(family: str) -> int:
    return int(os.environ.get("EXPLORATION_EXAMPLES", BUDGET[family]))


def _ci_settings(family: str) -> settings:
    return settings(
        max_examples=_budget(family),
        derandomize=True,
        database=None,
        deadline=None,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=False,
    )


def _check(ex: Example) -> None:
    obs, violations = exploration.run_and_check(ex)
    assert not violations, (
        "invariant(s) violated:\n"
        + "\n".join(f"  - {v}" for v in violations)
        + f"\nexample:\n{ex.describe()}\n(elapsed {obs.elapsed:.1f}s; action errors: "
        + f"{obs.action_errors})"
    )


@_ci_settings("turns")
@given(ex=exploration.examples("turns"))
def test_explore_turns(ex: Example) -> None:
    _check(ex)


@_ci_settings("connections")
@given(ex=exploration.examples("connections"))
def test_explore_connections(ex: Example) -> None:
    _check(ex)


@_ci_settings("shutdown")
@given(ex=exploration.examples("shutdown"))
def test_explore_shutdown(ex: Example) -> None:
    _check(ex)


@_ci_settings("fallback")
@given(ex=exploration.examples("fallback"))
def test_explore_fallback(ex: Example) -> None:
    _check(ex)
