"""Laying out the generated upstream tree and running git in it."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path

from .common import _BASE_ENV, BASE_TAG, ROOT, PqError, run
from .pins import Line


def git_cmd(line: Line, *args: str) -> list[str]:
    return ["git", f"--git-dir={line.git_dir}", f"--work-tree={line.work_tree}", *args]


def ugit(line: Line, *args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    """Run git in the generated upstream tree of ``line``."""
    return run(git_cmd(line, *args), cwd=line.work_tree, env=env, check=check).stdout


def _tree_state(line: Line) -> str | None:
    state = line.state_dir / "line"
    return state.read_text().strip() if state.exists() else None


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
    # commits made in the generated tree are the project's patches: they carry its identity,
    # never the machine's (a patch sent upstream with a local identity fails the CLA check)
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
