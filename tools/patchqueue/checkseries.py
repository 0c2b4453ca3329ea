"""``check-series``: every prefix applies, compiles and passes; each patch's tests prove it."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from . import npm
from .common import ROOT, PqError, run
from .pins import Line
from .queue import _git_am, apply
from .series import Patch, is_test_module, read_patch
from .tree import ugit

# --- check-series ------------------------------------------------------------------------

_OUTCOME_RE = re.compile(r"^(PASSED|FAILED|ERROR|XFAIL|XPASS) (\S+)")
_SKIPPED_RE = re.compile(r"^SKIPPED \[(\d+)\] ([^:\s]+)")


@dataclass(frozen=True)
class TestRun:
    """What one pytest run reported: (outcome, node id or file) per test, and its exit code."""

    outcomes: tuple[tuple[str, str], ...]
    returncode: int
    output: str

    def count(self, *kinds: str, files: list[str] | None = None) -> int:
        return sum(
            1
            for kind, node in self.outcomes
            if (not kinds or kind in kinds) and (files is None or node.split("::")[0] in files)
        )

    def failures(self) -> list[str]:
        return [node for kind, node in self.outcomes if kind in ("FAILED", "ERROR")]

    @property
    def ok(self) -> bool:
        # 5: no test collected (a prefix with no travelling test yet)
        return self.returncode in (0, 5) and not self.failures()


def _source_env(line: Line, root: Path | None = None) -> dict[str, str]:
    """PYTHONPATH with the tree's packages first: they win over the venv's wheels.

    ``root``: the monorepo root the packages lie under; the generated tree by default.
    """
    root = root or line.work_tree
    paths = [str(root / pkg.path) for pkg in line.packages]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {"PYTHONPATH": os.pathsep.join(paths), "PYTHONDONTWRITEBYTECODE": "1"}


def _check_sources_win(line: Line, python: str, root: Path | None = None) -> None:
    """The travelling tests must import the tree (``root``, the generated one by default), not
    the wheels in the venv."""
    root = root or line.work_tree
    modules = {".".join(Path(pkg.version_file).parent.parts): pkg for pkg in line.packages}
    probe = (
        "import importlib, sys\nfor m in sys.argv[1:]: print(importlib.import_module(m).__file__)"
    )
    proc = run([python, "-c", probe, *modules], cwd=root, env=_source_env(line, root))
    for (module, pkg), where in zip(modules.items(), proc.stdout.split(), strict=True):
        if not Path(where).resolve().is_relative_to((root / pkg.path).resolve()):
            raise PqError(
                f"with PYTHONPATH on the generated tree, {module} still imports from {where}, "
                f"not from {pkg.path}/: the travelling tests would test the venv's wheels"
            )
    print(
        f"pq: travelling tests run with {python}, importing "
        + ", ".join(f"{m} from {p.path}/" for m, p in modules.items())
        + f" (the tree at {root})",
        file=sys.stderr,
    )


def _pytest(line: Line, python: str, targets: list[str]) -> TestRun:
    cmd = [python, "-m", "pytest", *targets, "-p", "no:cacheprovider", "-q", "-rA"]
    cmd.append("--continue-on-collection-errors")
    proc = run(cmd, cwd=line.work_tree, env=_source_env(line), check=False)
    outcomes: list[tuple[str, str]] = []
    for ln in proc.stdout.splitlines():
        if m := _OUTCOME_RE.match(ln):
            outcomes.append((m[1], m[2]))
        elif m := _SKIPPED_RE.match(ln):
            outcomes.extend([("SKIPPED", m[2])] * int(m[1]))
    if proc.returncode not in (0, 1, 5) and not outcomes:
        raise PqError(f"pytest failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}")
    return TestRun(tuple(outcomes), proc.returncode, proc.stdout + proc.stderr)


def _has_tests(line: Line) -> bool:
    """Whether the generated tree holds any travelling test module (pytest takes seconds)."""
    return any(
        is_test_module(line, path.relative_to(line.work_tree).as_posix())
        for name in line.monorepo_dirs
        for path in (line.work_tree / name).rglob("*.py")
    )


def _prove(line: Line, python: str, patch: Patch) -> TestRun:
    """Lay the ``tests/`` part of ``patch`` over the tree (the prefix before it) and run its
    test modules there; then take them away again."""
    include = [f"--include={name}/*" for name in line.monorepo_dirs]
    path = str(line.patch_dir / patch.name)
    ugit(line, "apply", *include, path)
    try:
        return _pytest(line, python, [f.path for f in patch.test_files(line)])
    finally:
        ugit(line, "apply", "-R", *include, path)


def _check_series_pypi(line: Line, names: list[str], python: str) -> None:
    if not Path(python).exists():
        raise PqError(f"no test python at {python}; run `make venv` first (or give --python)")
    patches = [read_patch(line.patch_dir / name) for name in names]
    problems: list[str] = []
    proved = declared = 0
    apply(line, pristine=True, force=True, quiet=True)
    _check_sources_win(line, python)
    has_pins = (line.work_tree / PIN_TARGETS[0]).exists()
    if has_pins:
        pins = _pytest(line, python, PIN_TARGETS)
        print(f"pristine: {_pins_report(pins, problems, 'pristine')}", flush=True)
    for k, patch in enumerate(patches, start=1):
        tests = [f.path for f in patch.test_files(line)]
        before = _prove(line, python, patch) if tests else None
        # prefix k is prefix k-1 plus patch k: one `git am` on the tree, not a new layout
        _git_am(line, [names[k - 1]])
        dirs = [str(line.work_tree / pkg.path / "livekit") for pkg in line.packages]
        dirs += [str(line.work_tree / d) for d in line.monorepo_dirs]
        run([python, "-m", "compileall", "-q", *dirs])
        after = TestRun((), 5, "")  # 5: what pytest returns when it collects nothing
        if _has_tests(line):
            after = _pytest(line, python, list(line.monorepo_dirs))
        report = f"prefix {k}/{len(patches)} {patch.stem}: applies, compiles, "
        if after.ok:
            report += f"{after.count('PASSED')} travelling tests pass"
            if skipped := after.count("SKIPPED"):
                report += f" ({skipped} skipped)"
        else:
            failing = after.failures()
            report += f"FAILS: {len(failing)} of {len(after.outcomes)} travelling tests fail"
            problems.append(
                f"{patch.stem}: travelling tests fail with it applied: "
                + (", ".join(failing[:5]) or f"pytest exit code {after.returncode}")
            )
        if has_pins:
            pins = _pytest(line, python, PIN_TARGETS)
            report += "; " + _pins_report(pins, problems, patch.stem)
        if before is not None:
            total = after.count(files=tests)
            failed = before.count("FAILED", "ERROR", files=tests)
            if failed:
                proved += 1
                report += f"; its {total} tests fail without it ({failed} failed)"
            else:
                report += f"; ERROR: its {total} tests pass without it"
                problems.append(f"{patch.stem}: its tests pass without it ({', '.join(tests)})")
        elif (reason := patch.tests_none) is not None:
            declared += 1
            report += f"; no tests of its own (Tests: none ({reason}))"
        else:
            report += "; ERROR: no travelling tests and no `Tests: none (<reason>)` line"
            problems.append(
                f"{patch.stem}: no test file under {', '.join(line.monorepo_dirs)}/ and no "
                "`Tests: none (<reason>)` line in its commit message"
            )
        print(report, flush=True)
    apply(line, force=True, quiet=True)
    if problems:
        raise PqError(
            f"check-series: {len(problems)} problem(s):\n" + "\n".join(f"  {p}" for p in problems)
        )
    print(
        f"pq: {len(patches)} prefixes apply, compile and pass their travelling tests; "
        f"{proved} patch(es) prove their tests, {declared} declare `Tests: none`",
        file=sys.stderr,
    )


PIN_TARGETS = ["testbed/test_pins.py"]
"""The test bed's pins: pristine behaviour the series keeps (AgentSession on the emulator); they
run on pristine and on every prefix, so that no prefix regresses what a later patch does not
change on purpose."""


def _pins_report(run_: TestRun, problems: list[str], where: str) -> str:
    """One clause on the pins of one build; a failing pin is a problem of ``where``."""
    if run_.ok and run_.count("PASSED"):
        return f"{run_.count('PASSED')} pins of pristine behaviour hold"
    failing = run_.failures() or [f"pytest exit code {run_.returncode}"]
    problems.append(f"{where}: pins of pristine behaviour fail: {', '.join(failing[:5])}")
    return f"FAILS: {len(run_.failures())} pins of pristine behaviour fail"


def check_series(line: Line, python: str | None = None) -> None:
    """Each prefix of the series applies, compiles and passes the travelling tests it holds,
    and each patch's tests fail without it (npm: each prefix type-checks, builds, tests).

    Args:
        line: the upstream line whose series is checked.
        python: pypi lines: the interpreter with pytest and the line's dependencies (default
            ``.venv``); the generated tree's sources are put first on its path.

    Raises:
        PqError: a prefix does not apply or compile, its travelling tests fail, or a patch's
            tests pass without it (or it has none and no ``Tests: none (<reason>)`` line).
    """
    names = line.series()
    if not line.is_npm:
        _check_series_pypi(line, names, python or str(ROOT / ".venv" / "bin" / "python"))
        return
    for upto in range(1, len(names) + 1):
        apply(line, upto=upto, force=True)
        npm.check_prefix(line)
        print(f"pq: prefix {upto}/{len(names)} ({names[upto - 1]}) applies and compiles")
    apply(line, force=True)
