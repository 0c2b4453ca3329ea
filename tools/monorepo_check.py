#!/usr/bin/env python3
"""Apply the series inside a livekit/agents monorepo layout and run its travelling tests there.

This is what a maintainer does with a PR of the series: the pinned sdists are laid out at their
monorepo paths, the monorepo checkout's own ``pyproject.toml`` and ``tests/`` are laid beside
them (its conftest, its category markers, its ``--unit`` option), the result is committed, the
series is applied with plain ``git am``, and the tests the patches brought are run with
``pytest --unit`` from the monorepo root. The checkout is a local clone of the public repository
and is never committed here; the scratch tree is ``build/monorepo-check``.

Usage::

    python3 tools/monorepo_check.py --monorepo ~/src/agents --python .venv-pristine/bin/python

``--python`` is an interpreter with the test dependencies; the tree's sources go first on
``PYTHONPATH``, so the patched code under test is the one ``git am`` produced.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import patchqueue as pq  # noqa: E402

OUT = pq.ROOT / "build" / "monorepo-check"
_ENV = {**pq._BASE_ENV, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def _sh(cmd: list[str], cwd: Path, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(
        cmd, cwd=cwd, env={**os.environ, **_ENV}, text=True, capture_output=True, check=False
    )
    sys.stdout.write(proc.stdout + proc.stderr)
    if check and proc.returncode != 0:
        raise pq.PqError(f"{cmd[0]} {cmd[1] if len(cmd) > 1 else ''} exited {proc.returncode}")
    return proc


def _monorepo_files(monorepo: Path, dest: Path) -> None:
    """Copy the checkout's ``pyproject.toml`` and ``tests/`` (its committed state if a git repo)."""
    is_git = subprocess.run(
        ["git", "-C", str(monorepo), "rev-parse", "--git-dir"], capture_output=True, check=False
    )
    if is_git.returncode == 0:
        archive = subprocess.run(
            ["git", "-C", str(monorepo), "archive", "HEAD", "pyproject.toml", "tests"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return
    shutil.copy2(monorepo / "pyproject.toml", dest / "pyproject.toml")
    shutil.copytree(monorepo / "tests", dest / "tests")


def travelling_tests(line: pq.Line) -> list[str]:
    """The test files the series adds or changes, in monorepo paths, in series order."""
    files: list[str] = []
    for patch in pq.read_series(line):
        files += [f.path for f in patch.test_files(line) if f.path not in files]
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--monorepo", type=Path, required=True, help="livekit/agents checkout")
    parser.add_argument("--python", required=True, help="interpreter with the test deps")
    parser.add_argument("--line", default=pq.DEFAULT_LINE)
    args = parser.parse_args(argv)
    try:
        line = pq.load_line(args.line)
        if line.is_npm:
            raise pq.PqError("monorepo-check is for the Python lines")
        sdists = pq.fetch(line)
        if OUT.exists():
            shutil.rmtree(OUT)
        OUT.mkdir(parents=True)
        _monorepo_files(args.monorepo.resolve(), OUT)
        tests = travelling_tests(line)
        if not tests:
            raise pq.PqError("the series carries no tests under tests/")
        clashes = [t for t in tests if (OUT / t).exists()]
        if clashes:
            raise pq.PqError("the monorepo already has " + ", ".join(clashes))
        for pkg in line.packages:
            if (OUT / pkg.path).exists():
                shutil.rmtree(OUT / pkg.path)
        pq.lay_out(line, sdists, OUT)
        _sh(["git", "init", "-q"], OUT)
        _sh(["git", "add", "-A"], OUT)
        _sh(["git", "commit", "-q", "-m", f"monorepo tests + livekit-agents {line.version}"], OUT)
        patches = [str(line.patch_dir / name) for name in line.series()]
        _sh(["git", "am", "--keep-cr", *patches], OUT)
        _sh(["git", "log", "--oneline", f"-{len(patches) + 1}"], OUT)
        pq._check_sources_win(line, os.path.abspath(args.python), OUT)
        os.environ.update(pq._source_env(line, OUT))
        proc = _sh(
            [
                os.path.abspath(args.python),
                "-m",
                "pytest",
                "--unit",
                "-p",
                "no:cacheprovider",
                "-q",
                *tests,
            ],
            OUT,
            check=False,
        )
        return proc.returncode
    except (pq.PqError, subprocess.CalledProcessError) as e:
        print(f"monorepo-check: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
