"""Pin files (``upstream/<line>.toml``) and fetching the pinned sdists and npm tarballs."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import tomllib

from .common import CACHE_DIR, NPM_CACHE_DIR, PQ_DIR, ROOT, PqError, run


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
