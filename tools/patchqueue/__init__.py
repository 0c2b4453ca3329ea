"""pq: the patch queue of the rtretry fork of livekit-agents (Python) and agents-js (npm).

Patches are the source of truth; the upstream tree is generated. This tool turns a pinned
upstream line (``upstream/<line>.toml``) plus its series (``patches/<line>/series``) into
the monorepo layout and back again. A line is one of two kinds (``kind`` in the pin file):

- ``pypi`` (the default, e.g. ``1.8.9``): sdists from PyPI, laid out at the livekit/agents
  paths (``livekit-agents/``, ``livekit-plugins/livekit-plugins-openai/``) in this repo's root;
  the tree's git directory is ``.pq/git``. The pin file's ``monorepo_dirs`` (``["tests"]``)
  adds monorepo folders no sdist carries: ``tests/`` holds the tests that travel inside the
  patches (our own test bed is ``testbed/``).
- ``npm`` (e.g. ``js-1.9.0``): tarballs from the npm registry (``npm pack``, integrity
  sha512 checked), laid out at the livekit/agents-js paths (``agents/``, ``plugins/openai/``)
  under one generated folder (``tree``, e.g. ``agents-js/``); its git directory is
  ``.pq-<line>/git``. The build (tsup + tsc, via npm) lives in ``npm``.

The generated tree has its own git directory (``.pq/git``) whose work tree is this repo's
root (npm line: the ``tree`` folder), restricted to the upstream paths: ``git am`` applies the
monorepo-path patches as they are, and our own repository never sees upstream code (the
generated paths are git-ignored).

One module per concern; each imports only those listed before it, so there is no cycle:

- ``common``: paths, the fixed git identities, ``PqError``, ``run``.
- ``pins``: pin files (``Line``, ``load_line``) and fetching the pinned sdists or tarballs.
- ``tree``: laying out the generated tree and running git in it (``ugit``).
- ``queue``: the git queue: ``apply``, ``export``, ``check_export``, ``touched``.
- ``series``: reading a series (``Patch``, ``read_patch``, ``read_series``).
- ``wheels``: the label and version, building and verifying the wheels.
- ``npm``: the npm half (build, pack, verify, vitest, prettier, JS bench).
- ``checkseries``: ``check-series`` (the npm line through ``npm.check_prefix``).
- ``pr``: pull requests and the cover letter.
- ``cli``: the command line (``python3 tools/pq.py``, ``python3 -m tools.pq``).

Only the standard library is used, so the tool runs with any Python >= 3.11. Import it as
``patchqueue`` with ``tools/`` on ``sys.path`` (``tools/pq.py`` and the other tools do so).
"""

from __future__ import annotations

from .checkseries import PIN_TARGETS, TestRun, _check_sources_win, _source_env, check_series
from .common import _BASE_ENV, BASE_TAG, DEFAULT_LINE, ROOT, PqError, run
from .pins import Line, Package, fetch, load_line, sha256_of, sha512_integrity
from .pr import (
    COVER_MARKER,
    _issue_ref,
    bench_headline,
    check_cover,
    cover_text,
    dependency_numbers,
    depends_on,
    message_sections,
    needs,
    pr_body,
    pr_index,
    unwrap,
    write_cover,
    write_prs,
)
from .queue import _require_tree, apply, check_export, export, touched
from .series import FileChange, Patch, is_test_module, read_patch, read_series
from .tree import git_cmd, lay_out, ugit, untracked
from .wheels import label, verify_wheels, version, wheels

__all__ = [
    "BASE_TAG",
    "COVER_MARKER",
    "DEFAULT_LINE",
    "PIN_TARGETS",
    "ROOT",
    "_BASE_ENV",
    "FileChange",
    "Line",
    "Package",
    "Patch",
    "PqError",
    "TestRun",
    "_check_sources_win",
    "_issue_ref",
    "_require_tree",
    "_source_env",
    "apply",
    "bench_headline",
    "check_cover",
    "check_export",
    "check_series",
    "cover_text",
    "dependency_numbers",
    "depends_on",
    "export",
    "fetch",
    "git_cmd",
    "is_test_module",
    "label",
    "lay_out",
    "load_line",
    "message_sections",
    "needs",
    "pr_body",
    "pr_index",
    "read_patch",
    "read_series",
    "run",
    "sha256_of",
    "sha512_integrity",
    "touched",
    "ugit",
    "unwrap",
    "untracked",
    "verify_wheels",
    "version",
    "wheels",
    "write_cover",
    "write_prs",
]
