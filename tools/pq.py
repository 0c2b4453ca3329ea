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
    check-series   apply the series one prefix at a time and byte-compile each step
    wheels         build labelled wheels (npm line: labelled tarballs) into dist/, verify
    label          print the version label derived from the series (PEP 440 / semver)
    git            run git in the generated upstream tree (e.g. `pq git commit -a`)

The generated tree has its own git directory (``.pq/git``) whose work tree is this repo's
root (npm line: the ``tree`` folder), restricted to the upstream paths: ``git am`` applies the monorepo-path patches as they
are, and our own repository never sees upstream code (both paths are git-ignored).

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
    line: Line, *, pristine: bool = False, upto: int | None = None, force: bool = False
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


def check_series(line: Line) -> None:
    """Each prefix of the series applies and byte-compiles (npm: type-checks, builds, tests)."""
    names = line.series()
    for upto in range(1, len(names) + 1):
        apply(line, upto=upto, force=True)
        if line.is_npm:
            import pq_npm

            pq_npm.check_prefix(line)
        else:
            for pkg in line.packages:
                run([sys.executable, "-m", "compileall", "-q", str(ROOT / pkg.path / "livekit")])
        print(f"pq: prefix {upto}/{len(names)} ({names[upto - 1]}) applies and compiles")
    apply(line, force=True)


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
    sub.add_parser("check-series", help="every prefix of the series applies and compiles")
    p_wheels = sub.add_parser("wheels", help="build labelled wheels and verify them")
    p_wheels.add_argument("--out", type=Path, default=ROOT / "dist")
    p_wheels.add_argument("--python", default=sys.executable, help="python with build+hatchling")
    p_wheels.add_argument("--no-verify", action="store_true")
    sub.add_parser("label", help="print the local version label of the series")
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
            check_series(line)
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
        elif args.cmd == "git":
            return subprocess.call(git_cmd(line, *args.args), cwd=line.work_tree)
    except PqError as e:
        print(f"pq: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
