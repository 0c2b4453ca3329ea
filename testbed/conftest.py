"""The test bed's (``testbed/``) shared fixtures, the module category rule and ``--pristine``.

``--pristine`` runs only the ``regression``-marked tests against the installed, unpatched
livekit-agents, ignores their xfail marks, and inverts the outcome: a test must fail with an
AssertionError (it reproduces the reported bug), so that is reported as PASSED; a test that
passes does not reproduce and is FAILED, and any other exception is FAILED as failing for the
wrong reason. A summary table lists each test and the symptom it reproduced. The mode refuses
to run on a build whose version carries a local label (``+``), i.e. a patched build.

``--reproduce=review`` does the same for the ``review``-marked tests, on the build of the series
before the review's fixes; ``--reproduce=review:2`` takes only those of ``review(round=2)``
(``make review-check`` builds each round's base from ``REVIEW_BASES``).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from .harness import ExceptionGuard
from .realtime_emulator import FaultPlan, RealtimeEmulator

CATEGORIES = ("unit",)
"""module category markers; every test module declares one (``pytestmark = pytest.mark.unit``)"""

_DISTRIBUTIONS = ("livekit-agents", "livekit-plugins-openai")
_PRISTINE_RESULTS = pytest.StashKey[dict[str, tuple[str, str]]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--pristine",
        action="store_true",
        default=False,
        help="run only the regression tests, against the pristine (unpatched) build, and "
        "require each to fail with an AssertionError (the reproduced symptom)",
    )
    parser.addoption(
        "--reproduce",
        default=None,
        metavar="MARK",
        help="run only the tests marked MARK (e.g. review) against the build they found a "
        "defect in, and require each to fail with an AssertionError, as --pristine does",
    )


def _reproduce_mark(config: pytest.Config) -> str | None:
    """The marker whose tests must fail on the installed build, or None for a normal run."""
    if config.getoption("pristine"):
        return "regression"
    spec: str | None = config.getoption("reproduce")
    return spec.partition(":")[0] if spec else None


def _reproduce_round(config: pytest.Config) -> int | None:
    """The review round given as ``--reproduce=MARK:ROUND``, or None for every round."""
    spec: str | None = config.getoption("reproduce")
    if not spec or not spec.partition(":")[2]:
        return None
    return int(spec.partition(":")[2])


def _in_round(marker: pytest.Mark, round_: int | None) -> bool:
    return round_ is None or marker.kwargs.get("round", next(iter(marker.args), None)) == round_


def _versions() -> dict[str, str]:
    versions = {}
    for dist in _DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_PRISTINE_RESULTS] = {}
    if config.getoption("pristine"):
        labelled = {d: v for d, v in _versions().items() if "+" in v}
        if labelled:
            raise pytest.UsageError(
                "--pristine needs the pristine upstream build, but the installed "
                + ", ".join(f"{d}=={v}" for d, v in labelled.items())
                + " carries a local version label (a patched build)"
            )


def pytest_report_header(config: pytest.Config) -> list[str]:
    header = [", ".join(f"{d} {v}" for d, v in _versions().items())]
    if config.getoption("pristine"):
        header.append(
            "pristine check: regression tests only, xfail ignored, a test PASSES when it "
            "fails with AssertionError (reproduces the bug)"
        )
    return header


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # a pristine run imports only the modules that hold regression tests: the others may test
    # code that only the patched build has, and would not even import on pristine
    if (
        (mark := _reproduce_mark(config))
        and collection_path.is_file()
        and collection_path.name.startswith("test_")
        and collection_path.suffix == ".py"
    ):
        source = collection_path.read_text(encoding="utf-8")
        if not re.search(rf"mark\.{re.escape(mark)}\b", source):
            return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = sorted(
        {
            str(Path(str(item.path)).relative_to(config.rootpath))
            for item in items
            if not any(item.get_closest_marker(c) for c in CATEGORIES)
        }
    )
    if missing:
        raise pytest.UsageError(
            "every test module must declare its category with a module-level marker, one of: "
            + ", ".join(f"pytestmark = pytest.mark.{c}" for c in CATEGORIES)
            + "; missing in: "
            + ", ".join(missing)
        )

    if not (mark := _reproduce_mark(config)):
        return
    selected: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    round_ = _reproduce_round(config)
    for item in items:
        marker = item.get_closest_marker(mark)
        (selected if marker and _in_round(marker, round_) else deselected).append(item)
    for item in selected:
        item.own_markers[:] = [m for m in item.own_markers if m.name != "xfail"]
        if any(m.name == "xfail" for m in item.iter_markers()):
            raise pytest.UsageError(f"{item.nodeid}: xfail must be set on the test function")
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = selected


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when != "call" or not _reproduce_mark(item.config):
        return report

    results = item.config.stash[_PRISTINE_RESULTS]
    excinfo = call.excinfo
    if excinfo is None:
        report.outcome = "failed"
        report.longrepr = "does not reproduce on this build: the test passed"
        results[item.nodeid] = ("FAILED", "does not reproduce on this build")
    elif excinfo.errisinstance(AssertionError):
        symptom = (str(excinfo.value).strip().splitlines() or ["<no message>"])[0]
        report.outcome = "passed"
        report.longrepr = None
        report.sections.append(("reproduced", f"reproduces on this build: {symptom}"))
        results[item.nodeid] = ("reproduced", symptom)
    elif excinfo.errisinstance(pytest.skip.Exception):
        results[item.nodeid] = ("SKIPPED", str(excinfo.value))
    else:
        reason = f"failed for the wrong reason: {excinfo.typename}: {excinfo.value}"
        report.outcome = "failed"
        results[item.nodeid] = ("FAILED", reason.splitlines()[0])
    return report


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not (mark := _reproduce_mark(config)):
        return
    results = config.stash[_PRISTINE_RESULTS]
    tr = terminalreporter
    tr.section("pristine check" if mark == "regression" else f"{mark} check")
    versions = _versions()
    reproduced = sum(1 for status, _ in results.values() if status == "reproduced")
    tr.write_line(
        f"{reproduced}/{len(results)} {mark} tests reproduce on "
        + ", ".join(f"{d} {v}" for d, v in versions.items())
    )
    width = max((len(n) for n in results), default=0)
    for nodeid, (status, symptom) in results.items():
        tr.write_line(f"{nodeid:<{width}}  {status:<10}  {symptom}")


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture
async def exc_guard() -> AsyncIterator[ExceptionGuard]:
    """An installed ExceptionGuard for the test's loop (uninstalled afterwards)."""
    guard = ExceptionGuard().install()
    try:
        yield guard
    finally:
        guard.collect()
        guard.uninstall()


@pytest.fixture
async def emulator_factory() -> AsyncIterator[Callable[..., Awaitable[RealtimeEmulator]]]:
    """``await emulator_factory(plan, **kwargs)`` starts an emulator, closed after the test."""
    started: list[RealtimeEmulator] = []

    async def make(plan: FaultPlan | None = None, **kwargs: Any) -> RealtimeEmulator:
        emu = await RealtimeEmulator(plan, **kwargs).start()
        started.append(emu)
        return emu

    try:
        yield make
    finally:
        for emu in reversed(started):
            await emu.aclose()


@pytest.fixture
async def emulator(
    emulator_factory: Callable[..., Awaitable[RealtimeEmulator]],
) -> RealtimeEmulator:
    """A healthy emulator (empty FaultPlan)."""
    return await emulator_factory()
