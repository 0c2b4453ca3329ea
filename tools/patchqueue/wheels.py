"""Building and verifying the labelled wheels (``pq wheels`` on a pypi line); the label."""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
from pathlib import Path

from .common import BASE_TAG, LABEL_PREFIX, ROOT, PqError, run
from .pins import Line
from .queue import _require_tree
from .tree import ugit


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
