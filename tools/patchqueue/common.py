"""What every part of the patch queue shares: paths, fixed git identities, the error, ``run``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""this repository's root (``tools/patchqueue/`` is two levels below it)"""
PQ_DIR = ROOT / ".pq"
GIT_DIR = PQ_DIR / "git"
CACHE_DIR = ROOT / ".cache" / "sdist"
NPM_CACHE_DIR = ROOT / ".cache" / "npm"
DEFAULT_LINE = "1.8.9"
LABEL_PREFIX = "rtretry"
BASE_TAG = "upstream"

# Fixed identities and dates make every commit of the generated tree reproducible, so an
# export with no edits is byte-identical (format-patch also runs with --zero-commit).
_BASE_ENV = {
    "GIT_AUTHOR_NAME": "upstream",
    "GIT_AUTHOR_EMAIL": "upstream@invalid",
    "GIT_AUTHOR_DATE": "2000-01-01T00:00:00+0000",
    "GIT_COMMITTER_NAME": "upstream",
    "GIT_COMMITTER_EMAIL": "upstream@invalid",
    "GIT_COMMITTER_DATE": "2000-01-01T00:00:00+0000",
}
_FORMAT_PATCH_ARGS = [
    "format-patch",
    "--zero-commit",
    "--no-signature",
    "--full-index",
    "--no-numbered",
    "--no-renames",
    "--encoding=UTF-8",
]


class PqError(Exception):
    """A failure the user can act on; printed without a traceback."""


def run(
    cmd: list[str], *, cwd: Path = ROOT, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, text=True, capture_output=True)
    if check and proc.returncode != 0:
        output = (proc.stdout[-4000:] + proc.stderr).strip()
        raise PqError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{output}")
    return proc
