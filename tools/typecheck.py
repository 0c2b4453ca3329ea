#!/usr/bin/env python3
"""mypy --strict (upstream's config) on the files the series touches: no new errors.

Upstream's files are not all mypy-clean in isolation, so the bar is relative: the patched
file may not have an error that the pristine file does not have. Errors are compared by
(file, message, code), not by line, since the patches move lines.

The tests that travel with the patches (the line's ``monorepo_dirs``, e.g. ``tests/``) are not
type-checked: upstream's CI runs mypy over its packages (``mypy -p livekit.agents -p
livekit.plugins.openai ...``), and ruff, which ``make lint`` runs on them, over everything.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import patchqueue as pq  # noqa: E402

ERROR_RE = re.compile(
    r"^(?P<file>[^:]+):\d+(?::\d+)?: error: (?P<msg>.*?)(?:  \[(?P<code>[\w-]+)\])?$"
)


def _pristine_tree(line: pq.Line) -> Path:
    dest = pq.ROOT / "build" / line.name / "pristine-src"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    pq.lay_out(line, pq.fetch(line), dest)
    return dest


def _mypy(python: str, tree: Path, line: pq.Line, files: list[str]) -> collections.Counter[tuple]:
    search = ":".join(str(tree / pkg.path) for pkg in line.packages)
    cmd = [
        python, "-m", "mypy", "--config-file", str(pq.ROOT / "pyproject.toml"),
        "--explicit-package-bases", "--namespace-packages", "--follow-imports=silent",
        "--no-error-summary", "--show-column-numbers", "--hide-error-context",
        "--cache-dir", str(tree / ".mypy_cache"), *files,
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=tree, text=True, capture_output=True, env={**os.environ, "MYPYPATH": search}
    )
    if proc.returncode not in (0, 1):
        raise pq.PqError(f"mypy crashed:\n{proc.stdout}{proc.stderr}")
    errors: collections.Counter[tuple] = collections.Counter()
    for raw in proc.stdout.splitlines():
        if m := ERROR_RE.match(raw):
            errors[(m["file"], m["msg"], m["code"])] += 1
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--line", default=pq.DEFAULT_LINE)
    parser.add_argument("--python", default=sys.executable, help="python with mypy installed")
    args = parser.parse_args()
    python = os.path.abspath(args.python)  # mypy runs in each tree; keep the venv's symlink
    try:
        line = pq.load_line(args.line)
        touched = pq.touched(line)
        files = [f for f in touched if Path(f).parts[0] not in line.monorepo_dirs]
        if skipped := len(touched) - len(files):
            print(f"typecheck: {skipped} travelling test file(s) not type-checked (as upstream)")
        if not files:
            print("typecheck: the series touches no Python file")
            return 0
        pristine = _pristine_tree(line)
        existing = [f for f in files if (pristine / f).exists()]
        patched_errors = _mypy(python, pq.ROOT, line, files)
        pristine_errors = _mypy(python, pristine, line, existing) if existing else {}
    except pq.PqError as e:
        print(f"typecheck: error: {e}", file=sys.stderr)
        return 1
    new = patched_errors - collections.Counter(pristine_errors)
    print(
        f"typecheck: {len(files)} touched file(s); mypy --strict errors: "
        f"pristine {sum(pristine_errors.values())}, patched {sum(patched_errors.values())}, "
        f"new {sum(new.values())}"
    )
    for (file, msg, code), n in sorted(new.items()):
        print(f"  new: {file}: {msg} [{code}]" + (f" (x{n})" if n > 1 else ""))
    return 1 if new else 0


if __name__ == "__main__":
    sys.exit(main())
