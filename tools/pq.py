#!/usr/bin/env python3
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
  ``.pq-<line>/git``. The build (tsup + tsc, via npm) lives in ``tools/pq_npm.py``.

Commands:

    fetch          download the pinned sdists from PyPI and verify their sha256
    apply          lay the sdists out in the monorepo paths and `git am` the series
    export         rewrite patches/<line>/ from the commits of the upstream tree
    check-export   apply, export to a scratch dir, and require byte-identical patches
    check-series   apply the series one prefix at a time: it compiles, its travelling tests
                   pass, and each patch's tests fail on the prefix before it
    wheels         build labelled wheels (npm line: labelled tarballs) into dist/, verify
    label          print the version label derived from the series (PEP 440 / semver)
    pr             build/pr/<NNNN-slug>/: title.txt, body.md and the patch without the queue's
                   trailers, per patch; build/pr/INDEX.md lists them in order (pypi lines)
    cover          regenerate patches/<line>/COVER.md below its marker from the series
    check-cover    COVER.md must be what `cover` writes (pypi lines)
    git            run git in the generated upstream tree (e.g. `pq git commit -a`)

The generated tree has its own git directory (``.pq/git``) whose work tree is this repo's
root (npm line: the ``tree`` folder), restricted to the upstream paths: ``git am`` applies the
monorepo-path patches as they are, and our own repository never sees upstream code (the
generated paths are git-ignored).

Only the standard library is used, so the tool runs with any Python >= 3.11.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tomllib

# tools/pq_npm.py does `import pq`: when this file runs as a script, let that be this module
# (one PqError class, one set of globals)
sys.modules.setdefault("pq", sys.modules[__name__])

ROOT = Path(__file__).resolve().parents[1]
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


@dataclass(frozen=True)
class Package:
    name: str
    path: str
    # pypi lines
    sdist: str = ""
    sha256: str = ""
    version_file: str = ""
    # npm lines
    tarball: str = ""
    integrity: str = ""

    @property
    def archive(self) -> str:
        return self.tarball or self.sdist


@dataclass(frozen=True)
class Line:
    name: str
    version: str
    packages: tuple[Package, ...]
    kind: str = "pypi"
    tree: str = ""
    """npm lines: the generated folder (relative to ROOT) that holds the monorepo paths"""
    monorepo_dirs: tuple[str, ...] = ()
    """monorepo folders no package carries but the series writes to (e.g. ``tests``, where the
    tests that travel with each patch live); empty at the ``upstream`` commit"""

    @property
    def is_npm(self) -> bool:
        return self.kind == "npm"

    @property
    def work_tree(self) -> Path:
        """The generated tree's root: the monorepo root the patches' paths are relative to."""
        return ROOT / self.tree if self.tree else ROOT

    @property
    def state_dir(self) -> Path:
        return ROOT / f".pq-{self.name}" if self.is_npm else PQ_DIR

    @property
    def git_dir(self) -> Path:
        return self.state_dir / "git"

    @property
    def cache_dir(self) -> Path:
        return (NPM_CACHE_DIR if self.is_npm else CACHE_DIR) / self.name

    @property
    def top_dirs(self) -> list[str]:
        """Top-level monorepo folders the generated git tracks."""
        top = {Path(pkg.path).parts[0] for pkg in self.packages} | set(self.monorepo_dirs)
        if self.is_npm:
            top.add(".changeset")  # agents-js: every change carries a changeset entry
        return sorted(top)

    @property
    def patch_dir(self) -> Path:
        return ROOT / "patches" / self.name

    @property
    def series_file(self) -> Path:
        return self.patch_dir / "series"

    def series(self) -> list[str]:
        """Patch file names in application order (blank lines and # comments skipped)."""
        if not self.series_file.exists():
            return []
        names = []
        for raw in self.series_file.read_text().splitlines():
            entry = raw.split("#", 1)[0].strip()
            if entry:
                names.append(entry)
        for name in names:
            if not (self.patch_dir / name).is_file():
                raise PqError(f"series lists {name}, but patches/{self.name}/{name} is missing")
        return names


def load_line(name: str) -> Line:
    pin = ROOT / "upstream" / f"{name}.toml"
    if not pin.exists():
        known = sorted(p.stem for p in (ROOT / "upstream").glob("*.toml"))
        raise PqError(f"no pin file upstream/{name}.toml (known lines: {', '.join(known)})")
    data = tomllib.loads(pin.read_text())
    packages = tuple(Package(**pkg) for pkg in data["package"])
    kind = data.get("kind", "pypi")
    if kind not in ("pypi", "npm"):
        raise PqError(f"upstream/{name}.toml: kind must be pypi or npm, not {kind!r}")
    tree = data.get("tree", "")
    if kind == "npm" and not tree:
        raise PqError(f"upstream/{name}.toml: an npm line needs `tree` (its generated folder)")
    extra = data.get("monorepo_dirs", [])
    if not isinstance(extra, list) or not all(
        isinstance(d, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", d) for d in extra
    ):
        raise PqError(
            f"upstream/{name}.toml: monorepo_dirs must list top-level folder names, not {extra!r}"
        )
    return Line(
        name=name,
        version=data["version"],
        packages=packages,
        kind=kind,
        tree=tree,
        monorepo_dirs=tuple(extra),
    )


def run(
    cmd: list[str], *, cwd: Path = ROOT, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, text=True, capture_output=True)
    if check and proc.returncode != 0:
        output = (proc.stdout[-4000:] + proc.stderr).strip()
        raise PqError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{output}")
    return proc


def git_cmd(line: Line, *args: str) -> list[str]:
    return ["git", f"--git-dir={line.git_dir}", f"--work-tree={line.work_tree}", *args]


def ugit(line: Line, *args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    """Run git in the generated upstream tree of ``line``."""
    return run(git_cmd(line, *args), cwd=line.work_tree, env=env, check=check).stdout


def sha512_integrity(path: Path) -> str:
    """The npm registry's ``dist.integrity`` form: ``sha512-<base64>``."""
    digest = hashlib.sha512()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- fetch -------------------------------------------------------------------------------


def fetch(line: Line) -> dict[str, Path]:
    """Download the pinned sdists (npm: tarballs) once and verify them against the pin file."""
    if line.is_npm:
        return _fetch_npm(line)
    dest = line.cache_dir
    dest.mkdir(parents=True, exist_ok=True)
    missing = [pkg for pkg in line.packages if not (dest / pkg.sdist).exists()]
    if missing:
        reqs = [f"{pkg.name}=={line.version}" for pkg in missing]
        print(f"pq: downloading {', '.join(reqs)}", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps"]
        run([*cmd, "--dest", str(dest), *reqs])
    paths = {}
    for pkg in line.packages:
        path = dest / pkg.sdist
        if not path.exists():
            raise PqError(f"pip did not produce {pkg.sdist} for {pkg.name}=={line.version}")
        actual = sha256_of(path)
        if actual != pkg.sha256:
            raise PqError(
                f"sha256 mismatch for {pkg.sdist}:\n"
                f"  pinned in upstream/{line.name}.toml: {pkg.sha256}\n"
                f"  downloaded:                      {actual}\n"
                "refusing to build from an sdist that is not the pinned upstream release"
            )
        paths[pkg.name] = path
    return paths


def _fetch_npm(line: Line) -> dict[str, Path]:
    """`npm pack <name>@<version>` from the registry, then check the sha512 ourselves."""
    dest = line.cache_dir
    dest.mkdir(parents=True, exist_ok=True)
    for pkg in line.packages:
        if (dest / pkg.tarball).exists():
            continue
        spec = f"{pkg.name}@{line.version}"
        print(f"pq: downloading {spec} (npm pack)", file=sys.stderr)
        proc = run(["npm", "pack", spec, "--json", "--pack-destination", str(dest)], cwd=dest)
        (packed,) = json.loads(proc.stdout)
        if packed["filename"] != pkg.tarball:
            (dest / packed["filename"]).unlink(missing_ok=True)
            raise PqError(f"npm pack {spec} produced {packed['filename']}, pinned {pkg.tarball}")
    paths = {}
    for pkg in line.packages:
        path = dest / pkg.tarball
        actual = sha512_integrity(path)
        if actual != pkg.integrity:
            path.unlink()
            raise PqError(
                f"integrity mismatch for {pkg.tarball}:\n"
                f"  pinned in upstream/{line.name}.toml: {pkg.integrity}\n"
                f"  downloaded:                      {actual}\n"
                "refusing to build from a tarball that is not the pinned upstream release"
            )
        paths[pkg.name] = path
    return paths


# --- apply -------------------------------------------------------------------------------


def _tree_state(line: Line) -> str | None:
    state = line.state_dir / "line"
    return state.read_text().strip() if state.exists() else None


def _tree_digest(line: Line) -> str:
    """Digest of what an export of the tree's commits would write."""
    with tempfile.TemporaryDirectory() as tmp:
        names = _format_patches(line, Path(tmp))
        digest = hashlib.sha256()
        for name in names:
            digest.update((Path(tmp) / name).read_bytes())
        return digest.hexdigest()


# what tools leave in the generated tree (compileall, pytest, mypy, ruff): never the user's work
_SCRATCH_PATTERNS = ("__pycache__/", "*.pyc", ".pytest_cache/", ".mypy_cache/", ".ruff_cache/")


def untracked(line: Line) -> list[str]:
    """New files under the generated tree's monorepo folders that its git does not track.

    ``git status`` does not show them for a pypi line: the generated folders share this
    repository's root, whose ``.gitignore`` ignores them, and a work tree's ``.gitignore`` wins
    over the tree's own ``info/exclude``. ``ls-files --others`` without ``--exclude-standard``
    sees past every ignore file, so a new test file is never lost to ``apply``.
    """
    present = [name for name in line.top_dirs if (line.work_tree / name).exists()]
    if not present or not line.git_dir.exists():
        return []
    excludes = [f"--exclude={pattern}" for pattern in _SCRATCH_PATTERNS]
    return ugit(line, "ls-files", "--others", *excludes, "--", *present, check=False).split()


def _guard_unsaved_work(line: Line, force: bool) -> None:
    """Refuse to throw away edits or commits that were not exported to patches/."""
    if force or not line.git_dir.exists() or not (line.state_dir / "applied").exists():
        return
    if ugit(line, "status", "--porcelain", check=False).strip():
        raise PqError(
            "the upstream tree has uncommitted edits; commit them (`tools/pq.py git commit`) "
            "and `make export`, or pass --force to discard them"
        )
    if new := untracked(line):
        raise PqError(
            "the upstream tree has new files its git does not track: "
            + ", ".join(new[:10])
            + (" ..." if len(new) > 10 else "")
            + "; add them (`tools/pq.py git add -f <file>`: this repository's .gitignore hides "
            "the generated folders), commit and `make export`, or pass --force to discard them"
        )
    if _tree_digest(line) != (line.state_dir / "applied").read_text().strip():
        raise PqError(
            f"the upstream tree ({_tree_state(line)}) has commits that were never exported; "
            "run `make export` first, or pass --force to discard them"
        )


def _refuse_own_files(line: Line) -> None:
    """A generated folder of a pypi line must not hold files this repository tracks.

    The folders live in this repository's root and are deleted by every apply; a folder named
    in ``monorepo_dirs`` that is also ours (``tests/`` before the test bed moved to
    ``testbed/``) would lose our files.
    """
    if line.is_npm:
        return
    names = [name for name in line.top_dirs if (ROOT / name).exists()]
    if not names:
        return
    proc = run(["git", "-C", str(ROOT), "ls-files", "--", *names], check=False)
    if proc.returncode == 0 and proc.stdout.strip():
        ours = sorted({Path(p).parts[0] for p in proc.stdout.split()})
        raise PqError(
            f"{', '.join(n + '/' for n in ours)} holds files tracked by this repository, but "
            f"upstream/{line.name}.toml makes it a generated folder that apply deletes; "
            "move our files elsewhere (git mv) first"
        )


def _materialise(line: Line, sdists: dict[str, Path]) -> None:
    tree = line.work_tree
    _refuse_own_files(line)
    if line.is_npm:
        if tree.exists():
            shutil.rmtree(tree)  # the whole folder is generated
        tree.mkdir(parents=True)
    for pkg in line.packages:
        target = tree / pkg.path
        if target.exists():
            shutil.rmtree(target)
    top = line.top_dirs
    for name in top:
        if (tree / name).exists():
            shutil.rmtree(tree / name)
    if line.git_dir.exists():
        shutil.rmtree(line.git_dir)
    line.state_dir.mkdir(exist_ok=True)

    # the monorepo has no build output in git: an npm tarball's prebuilt dist/ is left out
    lay_out(line, sdists, tree, with_dist=False)
    for name in line.monorepo_dirs:
        (tree / name).mkdir(parents=True, exist_ok=True)  # empty until a patch adds to it

    run(["git", "init", "-q", "--bare", str(line.git_dir)])
    ugit(line, "config", "core.bare", "false")
    ugit(line, "config", "core.autocrlf", "false")
    ugit(line, "config", "status.showUntrackedFiles", "normal")
    if not ugit(line, "config", "user.email", check=False).strip():
        # a machine with no git identity (CI) can still commit in the generated tree
        ugit(line, "config", "user.name", "rtretry")
        ugit(line, "config", "user.email", "rtretry@users.noreply.github.com")
    exclude = ["/*"] + [f"!/{name}/" for name in top]
    (line.git_dir / "info").mkdir(exist_ok=True)
    (line.git_dir / "info" / "exclude").write_text("\n".join(exclude) + "\n")
    present = [name for name in top if (tree / name).exists()]
    ugit(line, "add", "-A", "-f", "--", *present)
    what = "registry tarballs" if line.is_npm else "sdists"
    ugit(line, "commit", "-q", "-m", f"upstream {line.version} (pinned {what})", env=_BASE_ENV)
    ugit(line, "tag", BASE_TAG)


def lay_out(line: Line, sdists: dict[str, Path], dest: Path, *, with_dist: bool = True) -> None:
    """Extract each sdist (npm: tarball) to its monorepo path under ``dest``.

    ``with_dist=False`` leaves out an npm tarball's prebuilt ``dist/`` (a build output).
    """
    for pkg in line.packages:
        target = dest / pkg.path
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest) as tmp, tarfile.open(sdists[pkg.name]) as tar:
            tar.extractall(tmp, filter="data")
            # sdists hold one top-level <name>-<version>/, npm tarballs one package/
            (root_dir,) = Path(tmp).iterdir()
            if line.is_npm and not with_dist and (root_dir / "dist").exists():
                shutil.rmtree(root_dir / "dist")
            shutil.move(str(root_dir), target)


def _git_am(line: Line, names: list[str]) -> None:
    for index, name in enumerate(names, start=1):
        patch = line.patch_dir / name
        proc = run(
            git_cmd(line, "am", "-q", "--keep-cr", "--committer-date-is-author-date", str(patch)),
            cwd=line.work_tree,
            env={k: v for k, v in _BASE_ENV.items() if k.startswith("GIT_COMMITTER_")},
            check=False,
        )
        if proc.returncode != 0:
            output = proc.stdout + proc.stderr
            files = sorted(set(re.findall(r"patch failed: ([^:\n]+):\d+", output)))
            files += sorted(set(re.findall(r"error: ([^:\n]+): does not exist", output)))
            ugit(line, "am", "--abort", check=False)
            where = f" in {', '.join(files)}" if files else ""
            raise PqError(
                f"patch {index}/{len(names)} patches/{line.name}/{name} failed to apply{where}\n"
                + "\n".join("  " + ln for ln in output.strip().splitlines())
            )


def apply(
    line: Line,
    *,
    pristine: bool = False,
    upto: int | None = None,
    force: bool = False,
    quiet: bool = False,
) -> None:
    """Generate the upstream tree and apply the series (or a prefix of it)."""
    sdists = fetch(line)
    _guard_unsaved_work(line, force)
    names = [] if pristine else line.series()
    if upto is not None:
        names = names[:upto]
    (line.state_dir / "applied").unlink(missing_ok=True)
    _materialise(line, sdists)
    (line.state_dir / "line").write_text(line.name + "\n")
    _git_am(line, names)
    (line.state_dir / "applied").write_text(_tree_digest(line) + "\n")
    what = "pristine" if pristine else f"{len(names)} patch(es)"
    if not quiet:
        print(f"pq: upstream {line.version} laid out with {what} applied", file=sys.stderr)


# --- export ------------------------------------------------------------------------------


def _format_patches(line: Line, out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    listing = ugit(line, *_FORMAT_PATCH_ARGS, "-o", str(out_dir), f"{BASE_TAG}..HEAD")
    return [Path(p).name for p in listing.split()]


def _write_series(path: Path, names: list[str]) -> None:
    header = "# Applied in this order by tools/pq.py (git am). Generated by `make export`.\n"
    path.write_text(header + "".join(f"{n}\n" for n in names))


def _dir_diff(a: Path, b: Path) -> list[str]:
    def files(d: Path) -> dict[str, bytes]:
        if not d.exists():
            return {}
        return {
            p.name: p.read_bytes()
            for p in d.iterdir()
            if p.is_file() and (p.suffix == ".patch" or p.name == "series")
        }

    fa, fb = files(a), files(b)
    return [n for n in sorted(set(fa) | set(fb)) if fa.get(n) != fb.get(n)]


def _require_tree(line: Line) -> None:
    if not line.git_dir.exists() or _tree_state(line) != line.name:
        raise PqError(f"no generated tree for line {line.name}; run `make apply LINE={line.name}`")
    if ugit(line, "status", "--porcelain").strip():
        raise PqError("the upstream tree has uncommitted edits; commit them first")
    if new := untracked(line):
        raise PqError(
            "the upstream tree has new files its git does not track: "
            + ", ".join(new[:10])
            + "; add them with `tools/pq.py git add -f <file>` and commit them first"
        )


def export(line: Line) -> None:
    """Rewrite patches/<line>/ (the .patch files and series) from the tree's commits."""
    _require_tree(line)
    line.patch_dir.mkdir(parents=True, exist_ok=True)
    for old in line.patch_dir.glob("*.patch"):
        old.unlink()
    names = _format_patches(line, line.patch_dir)
    _write_series(line.series_file, names)
    (line.state_dir / "applied").write_text(_tree_digest(line) + "\n")
    print(f"pq: exported {len(names)} patch(es) to patches/{line.name}/", file=sys.stderr)


def check_export(line: Line) -> None:
    """The series must survive apply + export unchanged, byte for byte."""
    apply(line)
    with tempfile.TemporaryDirectory() as tmp:
        names = _format_patches(line, Path(tmp))
        _write_series(Path(tmp) / "series", names)
        changed = _dir_diff(Path(tmp), line.patch_dir)
    if changed:
        raise PqError(
            "apply + export does not round-trip; these files would change: " + ", ".join(changed)
        )
    print(f"pq: round-trip ok, {len(names)} patch(es) byte-identical", file=sys.stderr)


# --- reading a patch ---------------------------------------------------------------------

# Trailers that are about this queue, not about the change (DEP-3 style): they stay here and are
# dropped from what goes upstream (`make pr`). Any other trailer (Co-authored-by, ...) is kept.
QUEUE_TRAILERS = (
    "bug",
    "forwarded",
    "origin",
    "tests",
    "needs",
    "last-update",
    "applied-upstream",
)
_TRAILER_RE = re.compile(r"([A-Za-z][A-Za-z0-9-]*):[ \t]")
_TESTS_NONE_RE = re.compile(r"^Tests:[ \t]*none[ \t]*\((?P<reason>.+)\)[ \t]*$", re.M | re.I)
_TEST_DEF_RE = re.compile(r"^\+[ \t]*(?:async[ \t]+)?def[ \t]+(test_\w+)[ \t]*\(")


def _is_queue_trailer(key: str) -> bool:
    key = key.lower()
    return key in QUEUE_TRAILERS or key.startswith("bug-")


@dataclass(frozen=True)
class FileChange:
    """One file of a patch: its path, A(dded)/M(odified)/D(eleted), and its +/- lines."""

    path: str
    status: str
    added: tuple[str, ...]
    removed: int

    @property
    def test_names(self) -> list[str]:
        """The test functions this change adds (``def test_*`` on added lines)."""
        return [m[1] for ln in self.added if (m := _TEST_DEF_RE.match("+" + ln))]


@dataclass(frozen=True)
class Patch:
    """A ``git format-patch`` file of the series, read without the generated tree.

    ``lines`` are the file's lines with their line ends; ``message`` is ``lines[msg_start:sep]``
    (the commit message body after the headers, up to the ``---`` that opens the diffstat) and
    ``trailers`` the indices (into ``message``) of its final block of ``Key: value`` lines.
    """

    name: str
    subject: str
    lines: tuple[str, ...]
    msg_start: int
    sep: int
    trailer_start: int
    files: tuple[FileChange, ...]

    @property
    def stem(self) -> str:
        return self.name.removesuffix(".patch")

    @property
    def number(self) -> str:
        return self.name.split("-", 1)[0]

    @property
    def message(self) -> list[str]:
        return list(self.lines[self.msg_start : self.sep])

    def trailers(self) -> list[tuple[str, str]]:
        """The trailer block as (key, value) pairs; continuation lines are joined."""
        pairs: list[tuple[str, str]] = []
        for raw in self.message[self.trailer_start :]:
            text = raw.rstrip("\r\n")
            if pairs and text[:1] in (" ", "\t"):
                pairs[-1] = (pairs[-1][0], pairs[-1][1] + " " + text.strip())
            elif m := _TRAILER_RE.match(text):
                pairs.append((m[1], text[m.end() :].strip()))
        return pairs

    def trailer(self, key: str) -> list[str]:
        return [v for k, v in self.trailers() if k.lower() == key.lower()]

    def stripped_message(self) -> list[str]:
        """The message without the queue's trailers (and without the blank line before an
        emptied trailer block); every other line as it is."""
        msg = self.message
        body, block = msg[: self.trailer_start], msg[self.trailer_start :]
        kept: list[str] = []
        dropping = False
        for raw in block:
            if raw[:1] in (" ", "\t"):  # a continuation line goes with its trailer
                if not dropping:
                    kept.append(raw)
                continue
            m = _TRAILER_RE.match(raw)
            dropping = bool(m and _is_queue_trailer(m[1]))
            if not dropping:
                kept.append(raw)
        if not kept:
            while body and not body[-1].strip():
                body.pop()
        return body + kept

    def body_text(self) -> str:
        """The commit message body as text, queue trailers removed."""
        return "".join(self.stripped_message()).replace("\r\n", "\n").strip("\n")

    def upstream_patch(self) -> str:
        """The patch as it goes upstream: the queue's trailers removed, all else byte-identical."""
        return "".join(
            self.lines[: self.msg_start] + tuple(self.stripped_message()) + self.lines[self.sep :]
        )

    @property
    def tests_none(self) -> str | None:
        """The reason of a ``Tests: none (<reason>)`` line in the message, if there is one."""
        m = _TESTS_NONE_RE.search("".join(self.message))
        return m["reason"].strip() if m else None

    @property
    def standalone(self) -> str | None:
        """The paragraph of the body that starts with ``Standalone:``, unwrapped."""
        for para in re.split(r"\n[ \t]*\n", "".join(self.message[: self.trailer_start])):
            para = para.strip()
            if para.startswith("Standalone:"):
                return " ".join(para.removeprefix("Standalone:").split())
        return None

    def test_files(self, line: Line) -> list[FileChange]:
        """The travelling test modules this patch adds or changes."""
        return [f for f in self.files if f.status != "D" and is_test_module(line, f.path)]


def is_test_module(line: Line, path: str) -> bool:
    """A test module under one of the line's generated monorepo folders (``tests/``)."""
    parts = Path(path).parts
    name = parts[-1]
    return (
        len(parts) > 1
        and parts[0] in line.monorepo_dirs
        and name.endswith(".py")
        and (name.startswith("test_") or name.endswith("_test.py"))
    )


def read_patch(path: Path) -> Patch:
    """Parse one patch file of the series (headers, message, trailers, per-file changes)."""
    import email.parser
    import email.policy

    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    lines = tuple(text.splitlines(keepends=True))
    try:
        head_end = next(i for i, ln in enumerate(lines) if not ln.strip())
        sep = next(i for i in range(head_end + 1, len(lines)) if lines[i].rstrip("\r\n") == "---")
    except StopIteration:
        raise PqError(
            f"{path.name}: not a `git format-patch` file (no headers or no ---)"
        ) from None
    headers = email.parser.HeaderParser(policy=email.policy.default).parsestr(
        "".join(lines[:head_end])
    )
    subject = re.sub(r"^\[PATCH[^\]]*\]\s*", "", " ".join(str(headers["Subject"] or "").split()))
    message = lines[head_end + 1 : sep]
    # the trailer block: the last paragraph, when every line is `Key: value` or a continuation
    last_blank = max((i for i, ln in enumerate(message) if not ln.strip()), default=-1)
    block = message[last_blank + 1 :]
    is_block = bool(block) and all(
        _TRAILER_RE.match(ln) or (i > 0 and ln[:1] in (" ", "\t")) for i, ln in enumerate(block)
    )
    trailer_start = last_blank + 1 if is_block else len(message)

    files: list[FileChange] = []
    for chunk in _file_chunks(lines[sep:]):
        m = re.match(r"diff --git a/(.+) b/(.+)$", chunk[0].rstrip("\r\n"))
        assert m is not None
        status, added, removed, in_hunk = "M", [], 0, False
        for raw in chunk[1:]:
            ln = raw.rstrip("\r\n")
            if not in_hunk:
                if ln.startswith("new file mode"):
                    status = "A"
                elif ln.startswith("deleted file mode"):
                    status = "D"
                in_hunk = ln.startswith("@@")
            elif ln.startswith("+"):
                added.append(ln[1:])
            elif ln.startswith("-"):
                removed += 1
        files.append(FileChange(m[2].strip('"'), status, tuple(added), removed))
    return Patch(
        name=path.name,
        subject=subject,
        lines=lines,
        msg_start=head_end + 1,
        sep=sep,
        trailer_start=trailer_start,
        files=tuple(files),
    )


def _file_chunks(lines: tuple[str, ...]) -> list[list[str]]:
    """The diff of each file: from its ``diff --git`` line to the next one."""
    chunks: list[list[str]] = []
    for raw in lines:
        if raw.startswith("diff --git "):
            chunks.append([raw])
        elif chunks:
            chunks[-1].append(raw)
    return chunks


def read_series(line: Line) -> list[Patch]:
    return [read_patch(line.patch_dir / name) for name in line.series()]


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
        import pq_npm

        pq_npm.check_prefix(line)
        print(f"pq: prefix {upto}/{len(names)} ({names[upto - 1]}) applies and compiles")
    apply(line, force=True)


# --- pull requests and the cover letter ----------------------------------------------------

_CONVENTIONAL_RE = re.compile(
    r"(feat|fix|perf|refactor|docs|test|chore|build|ci|style|revert)(\([^)]+\))?!?: \S"
)
PR_DIR = ROOT / "build" / "pr"
COVER_MARKER = (
    "<!-- generated by `make cover` (tools/pq.py cover) from the series' commit messages: "
    "edit those, not below -->"
)
OBJECTIONS = """\
## Earlier objections this answers

- **livekit/agents#6352 (review): recovery belongs to the fallback adapter, and re-speaking is
  the developer's decision.** This series never repeats audio the user heard, never runs a tool
  twice, and leaves failover to `RealtimeModelFallbackAdapter`.
- **livekit/agents#6242: no environment variables.** The only knob is the existing
  `APIConnectOptions`, given as `SessionConnectOptions.llm_conn_options`; `max_retry=0` turns
  it off.
"""
_BENCH_ROWS = ("turn success", "cpu", "memory", "session record")
"""the headline rows of bench/REPORT.md a pull request quotes: success rate, CPU, memory"""


def _require_pypi(line: Line, what: str) -> None:
    if line.is_npm:
        raise PqError(
            f"{what} reads the travelling tests of a pypi line (`monorepo_dirs`); the npm line "
            f"{line.name} keeps its hand-written COVER.md"
        )


def depends_on(patches: list[Patch], index: int) -> list[tuple[Patch, list[str]]]:
    """The earlier patches that change a file patch ``index`` changes, with those files."""
    mine = {f.path for f in patches[index].files}
    found = []
    for earlier in patches[:index]:
        shared = sorted(mine & {f.path for f in earlier.files})
        if shared:
            found.append((earlier, shared))
    return found


_NEEDS_RE = re.compile(r"(?P<number>\d{4})(?:[ \t]*\((?P<reason>[^)]*)\))?")


def needs(patches: list[Patch], index: int) -> list[tuple[Patch, str]]:
    """The earlier patches that patch ``index`` declares it builds on, with the reason.

    Declared with the queue trailer ``Needs: 0011 (the outcome API), 0014`` for a dependency
    that no shared file shows (an API an earlier patch adds and this one uses).
    """
    by_number = {p.number: p for p in patches[:index]}
    found: list[tuple[Patch, str]] = []
    for value in patches[index].trailer("Needs"):
        for m in _NEEDS_RE.finditer(value):
            if m["number"] not in by_number:
                raise PqError(
                    f"{patches[index].stem}: Needs: {m['number']} is not an earlier patch"
                )
            found.append((by_number[m["number"]], (m["reason"] or "").strip()))
    return found


def dependency_numbers(patches: list[Patch], index: int) -> str:
    """The earlier patches patch ``index`` depends on (shared files or declared), as a cell."""
    numbers = {dep.number for dep, _ in depends_on(patches, index)}
    numbers |= {dep.number for dep, _ in needs(patches, index)}
    return ", ".join(sorted(numbers)) or "-"


def _forwarded(patch: Patch) -> str:
    urls = [v for v in patch.trailer("Forwarded") if v.startswith("http")]
    return urls[0] if urls else "not sent yet"


def bench_headline(report: Path, line: Line) -> list[str]:
    """The success-rate, CPU and memory rows of the headline table of ``bench/REPORT.md``.

    Args:
        report: the bench report.
        line: the line, to tell whether the report measured the series as it is now.

    Returns:
        A line that says when, where and on which builds the figures were measured, a blank
        line, and the table's header and rows copied as they are; empty when the report or its
        headline table is missing.
    """
    if not report.exists():
        return []
    text = report.read_text()
    lines = text.splitlines()
    try:
        start = lines.index("## Headline")
    except ValueError:
        return []
    table: list[str] = []
    for ln in lines[start + 1 :]:
        if ln.startswith("|"):
            table.append(ln)
        elif table or ln.startswith("## "):
            break
    rows = [
        row for row in table[2:] if any(key in row.split("|")[1].lower() for key in _BENCH_ROWS)
    ]
    if not rows:
        return []
    date = re.search(r"^Date: (\d{4}-\d\d-\d\d)", text, re.M)
    machine = re.search(r"^Machine: ([^,\n]+, \d+ cores?)", text, re.M)
    builds = re.search(r"^Builds: pristine `([^`]+)`, patched `([^`]+)`", text, re.M)
    where = ", ".join(m[1] for m in (date, machine) if m)
    intro = f"Bench of the whole series against pristine {line.version}, not of this change alone"
    intro += f" ({where})" if where else ""
    if builds:
        intro += f"; builds `{builds[1]}` and `{builds[2]}`"
        if builds[2] != version(line):
            intro += f" (an earlier build of the series; this one is `{version(line)}`)"
    return [intro + ":", "", *table[:2], *rows]


def unwrap(text: str) -> str:
    """Join a commit message's hard-wrapped lines into paragraphs for a pull request body.

    GitHub keeps single line breaks in pull request bodies, so a 72-column message would render
    ragged. List items and their continuation lines join into one line per item; headings,
    tables, quotes, fenced code, indented code and trailer blocks stay line by line.
    """
    out: list[str] = []
    fence = code = False
    for ln in text.split("\n"):
        stripped = ln.strip()
        if stripped.startswith("```"):
            fence = not fence
            out.append(ln)
            continue
        prev = out[-1] if out else ""
        if fence or not stripped:
            code = code and bool(stripped)
            out.append(ln)
            continue
        if not prev.strip():
            code = ln.startswith(("    ", "\t"))  # a paragraph that starts indented is code
        block = re.match(r"(#{1,6} |[-*+] |\d+[.)] |>|\|)", stripped)
        joins = (
            prev.strip()
            and not code
            and not block
            and not prev.lstrip().startswith(("#", "|", "```"))
            and not (_TRAILER_RE.match(prev) and _TRAILER_RE.match(ln))
        )
        if joins:
            out[-1] = prev.rstrip() + " " + stripped
        else:
            out.append(ln)
    return "\n".join(out)


def _tests_text(line: Line, patch: Patch) -> list[str]:
    tests = patch.test_files(line)
    if not tests:
        reason = patch.tests_none
        if reason is not None:
            return [f"No tests of its own: {reason}."]
        return [
            "**No travelling tests, and the commit message has no `Tests: none (<reason>)` "
            "line** (`make check-series` rejects this)."
        ]
    out = ["Tests that travel with this change (added or changed by this pull request):", ""]
    for f in tests:
        names = f.test_names
        listed = ", ".join(f"`{n}`" for n in names) if names else "(changes existing tests)"
        out.append(f"- `{f.path}`: {listed}")
    files = " ".join(f.path for f in tests)
    out += [
        "",
        "In a livekit/agents checkout with this change:",
        "",
        "```sh",
        f"pytest --unit {files}",
        "```",
        "",
        "In the rtretry patch queue this pull request comes from, `make check-series` applies the",
        "series one patch at a time: each prefix compiles and passes every travelling test it",
        "holds, and this change's tests fail on the tree without it.",
    ]
    return out


_SECTION_LABELS = {
    "Change:": "Change",
    "Behaviour changes and risks:": "Behaviour changes and risks",
}
"""Paragraph labels of our commit messages and the pull request sections they open."""


def _issue_ref(url: str) -> str:
    """``https://github.com/o/r/issues/N`` as GitHub's short form ``o/r#N``; else as it is."""
    m = re.fullmatch(r"https://github\.com/([^/]+/[^/]+)/(?:issues|pull)/(\d+)", url.strip())
    return f"{m[1]}#{m[2]}" if m else url.strip()


def message_sections(patch: Patch) -> list[str]:
    """The commit message as pull request sections: Summary (its ``Standalone:`` paragraph),
    Motivation (the paragraphs before ``Change:``, with ``Refs`` to the ``Bug:`` issues), then
    Change and Behaviour changes and risks. A message without the labels stays one block."""
    paragraphs = unwrap(patch.body_text()).strip("\n").split("\n\n")
    sections: dict[str, list[str]] = {"Motivation": []}
    current = "Motivation"
    standalone: list[str] = []
    for para in paragraphs:
        label = next((k for k in (*_SECTION_LABELS, "Standalone:") if para.startswith(k)), None)
        if label == "Standalone:":
            text = para[len(label) :].strip()
            standalone.append(text[:1].upper() + text[1:])
            current = "Motivation" if not sections.get("Change") else current
            continue
        if label is not None:
            current = _SECTION_LABELS[label]
            para = para[len(label) :].strip()
            if para:
                para = para[0].upper() + para[1:]
        sections.setdefault(current, []).append(para)
    refs = [f"Refs {_issue_ref(url)}" for url in patch.trailer("Bug")]
    out: list[str] = []
    if standalone:
        out += ["## Summary", "", *standalone, ""]
    out += ["## Motivation", "", *(p + "\n" for p in sections.pop("Motivation"))]
    if refs:
        out += [", ".join(refs), ""]
    for title, paras in sections.items():
        out += [f"## {title}", "", *(p + "\n" for p in paras)]
    return [ln.rstrip("\n") if ln.endswith("\n\n") else ln for ln in out]


def pr_body(line: Line, patches: list[Patch], index: int, bench: list[str]) -> str:
    """The pull request body: our commit message, then the generated sections."""
    patch = patches[index]
    out = [*message_sections(patch), "## How it was tested", "", *_tests_text(line, patch)]
    if bench:
        out += ["", *bench]
    out += ["", "## Depends on", ""]
    deps = depends_on(patches, index)
    if index:
        earlier = "the earlier pull request" if index == 1 else f"the {index} earlier pull requests"
        out += [
            f"It was tested on top of {earlier} of the series (`make check-series` tests each "
            "prefix of the series, not subsets of it).",
            "",
        ]
    if deps:
        out += [
            ("It changes" if index == 1 else "These of them change")
            + " the same files, so it does not apply without them:",
            "",
        ]
    for dep, shared in deps:
        files = ", ".join(f"`{f}`" for f in shared)
        out.append(f"- {dep.subject} ({dep.number} of the series, {_forwarded(dep)}): {files}")
    if not deps:
        out.append(
            (
                "It does not change"
                if index == 1
                else "None of them changes"
                if index
                else "Nothing: no earlier pull request changes"
            )
            + " the files this one does, so it applies to "
            f"{line.packages[0].name} {line.version} as released."
        )
        if index and patch.standalone is None:
            out.append(
                "Whether it is useful without them is not stated (no `Standalone:` paragraph)."
            )
    if declared := needs(patches, index):
        out += ["", "It builds on what these add, so it does not work without them:", ""]
        for dep, reason in declared:
            why = f": {reason}" if reason else ""
            out.append(f"- {dep.subject} ({dep.number} of the series, {_forwarded(dep)}){why}")
    out += ["", OBJECTIONS.rstrip("\n")]
    return unwrap("\n".join(out)) + "\n"


def _lines_cell(line: Line, patch: Patch) -> str:
    added = sum(len(f.added) for f in patch.files)
    removed = sum(f.removed for f in patch.files)
    tests = sum(len(f.added) for f in patch.files if Path(f.path).parts[0] in line.monorepo_dirs)
    return f"+{added} -{removed}" + (f" (tests +{tests})" if tests else "")


def _tests_cell(line: Line, patch: Patch) -> str:
    tests = patch.test_files(line)
    if tests:
        return ", ".join(f"`{f.path}` ({len(f.test_names)})" for f in tests)
    if (reason := patch.tests_none) is not None:
        return f"none: {reason}"
    return "**missing** (no `Tests: none (<reason>)` line)"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def pr_index(line: Line, patches: list[Patch]) -> str:
    out = [
        f"# Pull requests of patches/{line.name} (against {line.packages[0].name} {line.version})",
        "",
        "Generated by `make pr` (`tools/pq.py pr`). Send them in this order; each folder holds",
        "`title.txt`, `body.md` and the patch (`git am`), the queue's trailers removed.",
        "",
        "| # | pull request | lines | travelling tests | depends on |",
        "| --- | --- | --- | --- | --- |",
    ]
    for i, patch in enumerate(patches):
        deps = dependency_numbers(patches, i)
        out.append(
            f"| {patch.number} | [{_cell(patch.subject)}]({patch.stem}/body.md) | "
            f"{_lines_cell(line, patch)} | {_cell(_tests_cell(line, patch))} | {deps} |"
        )
    return "\n".join(out) + "\n"


def write_prs(line: Line, out: Path) -> list[Path]:
    """Write ``<out>/<NNNN-slug>/{title.txt,body.md,<patch>}`` per patch, and ``INDEX.md``.

    Args:
        line: a pypi line.
        out: the output folder (``build/pr``); it is emptied first.

    Returns:
        The folders written, in series order.
    """
    _require_pypi(line, "pr")
    patches = read_series(line)
    bench = bench_headline(ROOT / "bench" / "REPORT.md", line)
    if out.exists():
        shutil.rmtree(out)
    written = []
    for i, patch in enumerate(patches):
        folder = out / patch.stem
        folder.mkdir(parents=True)
        if not _CONVENTIONAL_RE.match(patch.subject):
            print(f"pq: warning: {patch.name}: title not in type(scope): form", file=sys.stderr)
        (folder / "title.txt").write_text(patch.subject + "\n")
        (folder / "body.md").write_text(pr_body(line, patches, i, bench))
        (folder / patch.name).write_bytes(
            patch.upstream_patch().encode("utf-8", errors="surrogateescape")
        )
        written.append(folder)
    (out / "INDEX.md").write_text(pr_index(line, patches))
    return written


def cover_text(line: Line, patches: list[Patch], current: str | None) -> str:
    """COVER.md: the hand-written part above the marker as it is, then the generated list.

    Args:
        line: a pypi line.
        patches: its series.
        current: the COVER.md there is now, if any; without the marker, a heading replaces it.

    Returns:
        The text ``make cover`` writes.
    """
    if current and COVER_MARKER in current:
        preamble = current.split(COVER_MARKER, 1)[0]
    else:
        preamble = (
            f"# patches/{line.name}: the series as pull requests against "
            f"{line.packages[0].name} {line.version}\n\n"
        )
    out = [
        COVER_MARKER,
        "",
        "## The pull requests, in order",
        "",
        "| # | pull request | lines | travelling tests | depends on | standalone |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for i, patch in enumerate(patches):
        deps = dependency_numbers(patches, i)
        standalone = patch.standalone or "(not stated)"
        out.append(
            f"| {patch.number} | {_cell(patch.subject)} | {_lines_cell(line, patch)} | "
            f"{_cell(_tests_cell(line, patch))} | {deps} | {_cell(standalone)} |"
        )
    out += [
        "",
        "Lines: what each patch adds and removes (the travelling tests' share in parentheses).",
        "Travelling tests: the test modules under `tests/` the patch adds or changes, with the",
        "number of test functions it adds. Depends on: the earlier patches that change the same",
        "files (it does not apply without them), and those its `Needs:` trailer names (it uses",
        "what they add); each patch is tested on top of all earlier ones. Standalone: the",
        "`Standalone:` paragraph of the commit message. `make check-series` checks that every",
        "prefix applies, compiles and passes its travelling tests and the pins, and that each",
        "patch's tests fail without it; `make pr` writes each pull request (title, body, patch)",
        "to `build/pr/`.",
    ]
    return preamble + "\n".join(out) + "\n"


def cover_path(line: Line) -> Path:
    return line.patch_dir / "COVER.md"


def write_cover(line: Line) -> Path:
    _require_pypi(line, "cover")
    path = cover_path(line)
    current = path.read_text() if path.exists() else None
    path.write_text(cover_text(line, read_series(line), current))
    return path


def check_cover(line: Line) -> None:
    """COVER.md must be what ``make cover`` writes for the series as it is."""
    _require_pypi(line, "check-cover")
    path = cover_path(line)
    current = path.read_text() if path.exists() else ""
    fresh = cover_text(line, read_series(line), current)
    if fresh != current:
        import difflib

        diff = difflib.unified_diff(
            current.splitlines(), fresh.splitlines(), "COVER.md", "make cover", lineterm="", n=0
        )
        raise PqError(
            f"patches/{line.name}/COVER.md is stale (it does not match the series); "
            "run `make cover`\n" + "\n".join(list(diff)[:20])
        )
    print(f"pq: patches/{line.name}/COVER.md matches the series", file=sys.stderr)


# --- wheels ------------------------------------------------------------------------------


def touched(line: Line) -> list[str]:
    """Source files of the generated tree that differ from upstream (commits and edits)."""
    if not line.git_dir.exists() or _tree_state(line) != line.name:
        raise PqError(f"no generated tree for line {line.name}; run `make apply LINE={line.name}`")
    pattern = "*.ts" if line.is_npm else "*.py"
    out = ugit(line, "diff", "--name-only", "--diff-filter=AM", BASE_TAG, "--", pattern)
    return out.split()


def label(line: Line) -> str:
    """The label: patch count plus a digest of the series' bytes.

    Python: a PEP 440 local label (``1.8.9+rtretry.N.gDIGEST``). npm: a semver prerelease
    (``1.9.0-rtretry.N.gDIGEST``, see ``version``).
    """
    digest = hashlib.sha256()
    names = line.series()
    for name in names:
        digest.update(name.encode() + b"\0" + (line.patch_dir / name).read_bytes())
    return f"{LABEL_PREFIX}.{len(names)}.g{digest.hexdigest()[:8]}"


def version(line: Line) -> str:
    """The forked packages' version.

    npm: a semver *prerelease*, not build metadata: npm drops ``+build`` when it publishes and
    ignores it when it resolves, so ``1.9.0+x`` would be indistinguishable from the registry's
    1.9.0, while ``1.9.0-rtretry.N.g<digest>`` is its own version (ordered just below 1.9.0,
    never picked by a ``^1.9.0`` range unless named exactly).
    """
    return f"{line.version}{'-' if line.is_npm else '+'}{label(line)}"


def wheels(line: Line, out: Path, python: str) -> list[Path]:
    """Build labelled wheels with upstream's backend (hatchling via PyPA build)."""
    _require_tree(line)
    if len(ugit(line, "rev-list", f"{BASE_TAG}..HEAD").split()) != len(line.series()):
        raise PqError("the upstream tree does not hold the series; run `make apply`")
    version = f"{line.version}+{label(line)}"
    stage = ROOT / "build" / line.name / "stage"
    if stage.exists():
        shutil.rmtree(stage)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.whl"):
        stale.unlink()
    built = []
    for pkg in line.packages:
        src = stage / pkg.name
        shutil.copytree(ROOT / pkg.path, src)
        vfile = src / pkg.version_file
        text = vfile.read_text()
        new_text, n = re.subn(
            r'^__version__ = "([^"]+)"$', f'__version__ = "{version}"', text, flags=re.M
        )
        if n != 1 or f'"{line.version}"' not in text:
            raise PqError(f"{pkg.version_file} does not pin __version__ = {line.version!r}")
        vfile.write_text(new_text)
        # hatchling trusts an sdist's PKG-INFO over the sources; the label lives in the sources
        (src / "PKG-INFO").unlink(missing_ok=True)
        run([python, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(src)])
        found = list(out.glob(f"{pkg.name.replace('-', '_')}-{version}-*.whl"))
        if len(found) != 1:
            raise PqError(f"building {pkg.name} did not produce one wheel labelled {version}")
        whl = found[0]
        built.append(whl)
        print(f"pq: built {whl.relative_to(ROOT)}", file=sys.stderr)
    return built


def verify_wheels(line: Line, out: Path) -> None:
    """Install the wheels into a fresh venv: pip check, import, and the label."""
    version = f"{line.version}+{label(line)}"
    wheel_files = sorted(out.glob(f"*-{version}-*.whl"))
    if len(wheel_files) != len(line.packages):
        raise PqError(f"expected {len(line.packages)} wheels labelled {version} in {out}")
    venv = ROOT / "build" / line.name / "verify-venv"
    if venv.exists():
        shutil.rmtree(venv)
    run([sys.executable, "-m", "venv", str(venv)])
    py = str(venv / "bin" / "python")
    run([py, "-m", "pip", "install", "-q", *map(str, wheel_files)])
    check = run([py, "-m", "pip", "check"], check=False)
    if check.returncode != 0:
        raise PqError(f"pip check failed in the verification venv:\n{check.stdout}")
    probe = (
        "import importlib.metadata as md, livekit.plugins.openai as oai, livekit.agents as a\n"
        "from livekit.plugins.openai import realtime\n"
        f"assert a.__version__ == {version!r}, a.__version__\n"
        f"assert md.version('livekit-agents') == {version!r}\n"
        f"assert md.version('livekit-plugins-openai') == {version!r}\n"
        "print(a.__version__)\n"
    )
    res = run([py, "-c", probe], check=False)
    if res.returncode != 0:
        raise PqError(f"the installed wheels failed the import check:\n{res.stderr}")
    print(
        f"pq: verified {len(wheel_files)} wheels in a fresh venv: pip check clean, "
        f"livekit.plugins.openai imports, version {res.stdout.strip()}",
        file=sys.stderr,
    )


# --- cli ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pq", description=__doc__.split("\n\n")[0])
    parser.add_argument("--line", default=os.environ.get("LINE", DEFAULT_LINE))
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="download and verify the pinned sdists")
    p_apply = sub.add_parser("apply", help="generate the upstream tree and apply the series")
    p_apply.add_argument("--pristine", action="store_true", help="apply no patch")
    p_apply.add_argument("--upto", type=int, help="apply only the first N patches")
    p_apply.add_argument("--force", action="store_true", help="discard unexported work")
    sub.add_parser("export", help="rewrite patches/<line>/ from the tree's commits")
    sub.add_parser("check-export", help="apply + export must be byte-identical")
    p_series = sub.add_parser(
        "check-series", help="every prefix applies, compiles, passes; each patch's tests prove it"
    )
    p_series.add_argument(
        "--python",
        default=str(ROOT / ".venv" / "bin" / "python"),
        help="python with pytest and the dependencies (pypi lines; default .venv)",
    )
    p_wheels = sub.add_parser("wheels", help="build labelled wheels and verify them")
    p_wheels.add_argument("--out", type=Path, default=ROOT / "dist")
    p_wheels.add_argument("--python", default=sys.executable, help="python with build+hatchling")
    p_wheels.add_argument("--no-verify", action="store_true")
    sub.add_parser("label", help="print the local version label of the series")
    p_pr = sub.add_parser("pr", help="write build/pr/: each patch as a pull request + INDEX.md")
    p_pr.add_argument("--out", type=Path, default=PR_DIR)
    sub.add_parser("cover", help="regenerate patches/<line>/COVER.md from the series")
    sub.add_parser("check-cover", help="patches/<line>/COVER.md must match the series")
    sub.add_parser("touched", help="list the .py files the series adds or modifies")
    p_git = sub.add_parser("git", help="run git in the generated upstream tree")
    p_git.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    try:
        line = load_line(args.line)
        if args.cmd == "fetch":
            check = "integrity sha512" if line.is_npm else "sha256"
            for path in fetch(line).values():
                print(f"pq: {path.name} {check} ok", file=sys.stderr)
        elif args.cmd == "apply":
            apply(line, pristine=args.pristine, upto=args.upto, force=args.force)
        elif args.cmd == "export":
            export(line)
        elif args.cmd == "check-export":
            check_export(line)
        elif args.cmd == "check-series":
            check_series(line, args.python)
        elif args.cmd == "wheels" and line.is_npm:
            import pq_npm

            pq_npm.packages(line, args.out)
            if not args.no_verify:
                pq_npm.verify_packages(line, args.out)
        elif args.cmd == "wheels":
            wheels(line, args.out, args.python)
            if not args.no_verify:
                verify_wheels(line, args.out)
        elif args.cmd == "touched":
            print("\n".join(touched(line)))
        elif args.cmd == "label":
            print(version(line))
        elif args.cmd == "pr":
            folders = write_prs(line, args.out)
            where = args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out
            print(f"pq: {len(folders)} pull request(s) in {where}/ (INDEX.md)", file=sys.stderr)
        elif args.cmd == "cover":
            path = write_cover(line)
            print(f"pq: wrote {path.relative_to(ROOT)}", file=sys.stderr)
        elif args.cmd == "check-cover":
            check_cover(line)
        elif args.cmd == "git":
            return subprocess.call(git_cmd(line, *args.args), cwd=line.work_tree)
    except PqError as e:
        print(f"pq: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
