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


def _collect(monorepo: Path, python: str) -> dict[str, list[str]]:
    """Test ids of the unit suite, by module."""
    proc = subprocess.run(
        [
            python,
            "-m",
            "pytest",
            "tests",
            "--unit",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "--continue-on-collection-errors",
        ],
        cwd=monorepo,
        capture_output=True,
        text=True,
        check=False,
    )
    modules: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        if "::" in line and line.startswith("tests/"):
            modules.setdefault(line.split("::", 1)[0], []).append(line.strip())
        elif line.startswith("ERROR tests/"):
            modules.setdefault(line.split()[1], [])
    return modules


def run_suite(
    monorepo: Path, python: str, out: Path, extra: list[str], *, module_timeout: float
) -> tuple[dict[str, Outcome], float]:
    """Run the unit suite of ``monorepo`` with ``python``, one process per test module, so that
    a module that hangs on this build (a test written for another release) fails alone: its
    tests count as errors. Returns the outcomes and the wall time."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    results: dict[str, Outcome] = {}
    for n, (module, test_ids) in enumerate(sorted(_collect(monorepo, python).items())):
        junit = (out / f"{n:03d}.xml").resolve()
        cmd = [
            python,
            "-m",
            "pytest",
            module,
            "--unit",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            *extra,
        ]
        with open(junit.with_suffix(".log"), "w") as log:
            try:
                subprocess.run(
                    cmd,
                    cwd=monorepo,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    check=False,
                    timeout=module_timeout,
                )
            except subprocess.TimeoutExpired:
                log.write(f"\nupstream-suite: {module} timed out after {module_timeout:g}s\n")
        found = outcomes(junit) if junit.exists() else {}
        if not found:
            # did not import, or hung: every test of it (or the module itself) errors
            found = dict.fromkeys(test_ids, "error") or {module: "error"}
        for test_id in test_ids:
            found.setdefault(test_id, "error")
        results.update(found)
    return results, time.monotonic() - t0


def outcomes(junit: Path) -> dict[str, Outcome]:
    """Test id (``path::name``) -> outcome, from a pytest junit XML report."""
    results: dict[str, Outcome] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        # classname is the dotted module path, then the test class if any (TestX)
        parts = classname.split(".")
        classes = [p for p in parts if p[:1].isupper()]
        module = "/".join(p for p in parts if not p[:1].isupper())
        test_id = "::".join([f"{module}.py", *classes, name]) if classname else name
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
    parser.add_argument("--module-timeout", type=float, default=300.0, help="seconds per module")
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
        # the suite runs from the checkout: a relative interpreter path is relative to here
        python = str(Path(python).absolute())
        results[build], seconds = run_suite(
            monorepo, python, args.out / build, args.pytest_args, module_timeout=args.module_timeout
        )
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
