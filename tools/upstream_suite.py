#!/usr/bin/env python3
"""Run upstream's own unit suite against the pristine and the patched build; report the
differential.

The suite is the ``tests/`` of a livekit/agents monorepo checkout (a local clone of the public
repository, never committed here), run from the checkout's root, so that its ``conftest.py``
finds the monorepo's ``pyproject.toml``, with ``pytest --unit`` (upstream's category option).
Each build is an interpreter with that build of livekit-agents installed (``.venv-pristine``,
``.venv``). A test module that cannot be imported (a provider SDK this repo does not install)
errors on both builds alike.

The differential is what matters: the tests that pass on pristine and do not pass on the
patched build. Each must be a deliberate contract change, listed with its reason in the
``--explained`` file (``<test id>: <reason>`` per line); anything else fails the run.

Usage::

    python3 tools/upstream_suite.py --monorepo ~/src/agents \\
        --pristine .venv-pristine/bin/python --patched .venv/bin/python \\
        --explained upstream/1.8.9-suite.txt --out build/upstream-suite
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

Outcome = str  # passed | failed | error | skipped


def run_suite(monorepo: Path, python: str, junit: Path, extra: list[str]) -> float:
    """Run the unit suite of ``monorepo`` with ``python``; returns the wall time."""
    junit.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        python,
        "-m",
        "pytest",
        "tests",
        "--unit",
        "-q",
        "-p",
        "no:cacheprovider",
        "--continue-on-collection-errors",
        # a test written for another release may hang on this one: fail it instead
        "-p",
        "pytest_timeout",
        "--timeout=60",
        f"--junitxml={junit.resolve()}",
        *extra,
    ]
    t0 = time.monotonic()
    with open(junit.with_suffix(".log"), "w") as log:
        subprocess.run(cmd, cwd=monorepo, stdout=log, stderr=subprocess.STDOUT, check=False)
    return time.monotonic() - t0


def outcomes(junit: Path) -> dict[str, Outcome]:
    """Test id (``path::name``) -> outcome, from a pytest junit XML report."""
    results: dict[str, Outcome] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        test_id = f"{classname.replace('.', '/')}.py::{name}" if classname else name
        kinds = {child.tag for child in case}
        if "error" in kinds:
            results[test_id] = "error"
        elif "failure" in kinds:
            results[test_id] = "failed"
        elif "skipped" in kinds:
            results[test_id] = "skipped"
        else:
            results[test_id] = "passed"
    return results


def load_explained(path: Path | None) -> dict[str, str]:
    if path is None or not path.exists():
        return {}
    explained = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            test_id, _, reason = line.partition(": ")
            explained[test_id.strip()] = reason.strip()
    return explained


def summarize(results: dict[str, Outcome]) -> str:
    counts: dict[str, int] = {}
    for outcome in results.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    return ", ".join(
        f"{counts[k]} {k}" for k in ("passed", "failed", "error", "skipped") if k in counts
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--monorepo", type=Path, required=True, help="livekit/agents checkout")
    parser.add_argument("--pristine", required=True, help="python of the pristine build")
    parser.add_argument("--patched", required=True, help="python of the patched build")
    parser.add_argument("--explained", type=Path, help="accepted differential, with reasons")
    parser.add_argument("--out", type=Path, default=Path("build/upstream-suite"))
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)

    monorepo = args.monorepo.resolve()
    if (
        not (monorepo / "tests" / "conftest.py").exists()
        or not (monorepo / "pyproject.toml").exists()
    ):
        parser.error(f"{monorepo} is not a livekit/agents checkout (no tests/conftest.py)")

    results: dict[str, dict[str, Outcome]] = {}
    for build, python in (("pristine", args.pristine), ("patched", args.patched)):
        junit = args.out / f"{build}.xml"
        seconds = run_suite(monorepo, python, junit, args.pytest_args)
        results[build] = outcomes(junit)
        print(f"upstream-suite: {build}: {summarize(results[build])} in {seconds:.0f}s")

    pristine, patched = results["pristine"], results["patched"]
    regressed = sorted(
        t for t, o in pristine.items() if o == "passed" and patched.get(t) != "passed"
    )
    fixed = sorted(t for t, o in patched.items() if o == "passed" and pristine.get(t) != "passed")
    explained = load_explained(args.explained)

    lines = [
        f"upstream suite: {monorepo}",
        f"pristine: {summarize(pristine)}",
        f"patched:  {summarize(patched)}",
        f"pass on pristine, not on patched: {len(regressed)}",
    ]
    lines += [
        f"  {t} ({patched.get(t, 'missing')}): {explained.get(t, 'UNEXPLAINED')}" for t in regressed
    ]
    lines.append(f"pass on patched, not on pristine: {len(fixed)}")
    lines += [f"  {t} ({pristine.get(t, 'missing')})" for t in fixed]
    report = "\n".join(lines) + "\n"
    (args.out / "differential.txt").write_text(report)
    print(report, end="")

    unexplained = [t for t in regressed if t not in explained]
    if unexplained:
        print(f"upstream-suite: {len(unexplained)} unexplained regression(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
