"""The npm half: build, pack, verify and test an npm line of the patch queue (``js-1.9.0``).

The rest of the package fetches, lays out, applies and exports every line; this module is the
npm half of ``pq wheels`` and ``pq check-series``, and the JS test runner. It imports
``common``, ``pins``, ``tree``, ``queue`` and ``wheels``, never the modules that use it
(``checkseries``, ``cli``), so there is no import cycle.

A *build workspace* is an npm workspace root under ``build/<line>/<build>/`` (``build`` =
``patched`` or ``pristine``) that holds:

- ``agents/``, ``plugins/openai/``: the packages at their monorepo paths. ``patched`` copies
  the generated tree (the series applied; no ``dist/``) and builds it; ``pristine`` lays out
  the verified registry tarballs as they are (with the registry's ``dist/``), unbuilt.
  Each staged ``package.json`` loses its ``devDependencies`` and ``scripts`` (monorepo tools,
  pnpm; ``@livekit/agents-plugins-test`` is not even on the registry); ``patched`` gets the
  series' version (``1.9.0-rtretry.N.g<digest>``) and the plugin's peer dependency on
  ``@livekit/agents`` is pinned to that same version.
- the monorepo's tooling, restated in ``tools/js/`` (root ``tsup.config.ts``,
  ``tsconfig.json``, ``globals.d.ts``, ``vitest.config.ts``, ``.prettierrc``) and our
  pinned toolchain (``tools/js/package.json``: tsup, tsc, vitest, prettier) from the registry.
- ``rtretry-tests/``: a copy of ``testbed/js/`` (our regression tests; they start the Python
  emulator, ``python -m testbed.realtime_emulator``, as a subprocess).

Building is upstream's: ``tsup`` (ESM ``.js`` + CJS ``.cjs``, unbundled), then
``tsc --declaration --emitDeclarationOnly`` and ``.d.ts`` copied to ``.d.cts``.

Commands (``python3 tools/pq_npm.py --line js-1.9.0 <cmd>``, which runs :func:`main`): ``build``, ``test``
(``--build patched|pristine``, vitest paths), ``pristine-check``, ``prettier``.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .common import BASE_TAG, ROOT, PqError, run
from .pins import Line, fetch, load_line
from .queue import _require_tree, touched
from .tree import lay_out, ugit
from .wheels import version as series_version

TEMPLATES = ROOT / "tools" / "js"
JS_TESTS = ROOT / "testbed" / "js"
EMULATOR_PYTHON = ROOT / ".venv-emulator" / "bin" / "python"
_NPM_FLAGS = ["--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"]
_ROOT_FILES = (
    "tsup.config.ts",
    "tsconfig.json",
    "globals.d.ts",
    "vitest.config.ts",
    "vitest.setup.ts",
    ".prettierrc",
)


def stage_dir(line: Line, build: str) -> Path:
    return ROOT / "build" / line.name / build


def _log(msg: str) -> None:
    print(f"pq: {msg}", file=sys.stderr, flush=True)


def _stage_package_json(path: Path, version: str | None, core_name: str) -> None:
    data = json.loads(path.read_text())
    data.pop("devDependencies", None)
    data.pop("scripts", None)
    if version is not None:
        data["version"] = version
        for key in ("dependencies", "peerDependencies"):
            if core_name in data.get(key, {}):
                data[key][core_name] = version
    path.write_text(json.dumps(data, indent=2) + "\n")


def stage(line: Line, build: str, *, prefix_ok: bool = False) -> Path:
    """(Re)write a build workspace's sources; node_modules and built dist/ are kept.

    ``prefix_ok``: the generated tree may hold a prefix of the series (check-series).
    """
    if build not in ("patched", "pristine"):
        raise PqError(f"unknown build {build!r} (patched or pristine)")
    dest = stage_dir(line, build)
    dest.mkdir(parents=True, exist_ok=True)
    core = line.packages[0].name
    version = series_version(line) if build == "patched" else None
    if build == "patched":
        _require_tree(line)
        applied = len(ugit(line, "rev-list", f"{BASE_TAG}..HEAD").split())
        if not prefix_ok and applied != len(line.series()):
            raise PqError(
                f"the generated tree does not hold the series; run `make apply LINE={line.name}`"
            )
    for pkg in line.packages:
        target = dest / pkg.path
        if build == "patched":
            # sources only: keep a previous build's dist/ (rebuilt when the sources changed)
            # and the package's own node_modules/ (npm's nested installs)
            target.mkdir(parents=True, exist_ok=True)
            for child in target.iterdir():
                if child.name not in ("dist", "node_modules"):
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            for child in (line.work_tree / pkg.path).iterdir():
                copy = shutil.copytree if child.is_dir() else shutil.copy2
                copy(child, target / child.name)
        else:
            if target.exists():
                shutil.rmtree(target)
    if build == "pristine":
        lay_out(line, fetch(line), dest, with_dist=True)
    for pkg in line.packages:
        target = dest / pkg.path
        _stage_package_json(target / "package.json", version, core)
        rel = os.path.relpath(dest, target)
        tsconfig = json.loads((TEMPLATES / "tsconfig.package.json").read_text())
        tsconfig["extends"] = f"{rel}/tsconfig.json"
        (target / "tsconfig.json").write_text(json.dumps(tsconfig, indent=2) + "\n")
        (target / "tsup.config.ts").write_text(
            f"import {{ defineConfig }} from 'tsup';\n\nimport defaults from '{rel}/tsup.config';"
            "\n\nexport default defineConfig({ ...defaults });\n"
        )
    root_pkg = json.loads((TEMPLATES / "package.json").read_text())
    root_pkg["workspaces"] = [pkg.path for pkg in line.packages]
    (dest / "package.json").write_text(json.dumps(root_pkg, indent=2) + "\n")
    for name in _ROOT_FILES:
        shutil.copy2(TEMPLATES / name, dest / name)
    tests = dest / "rtretry-tests"
    if tests.exists():
        shutil.rmtree(tests)
    shutil.copytree(JS_TESTS, tests, ignore=shutil.ignore_patterns("node_modules"))
    _install(dest, line)
    return dest


def _install(dest: Path, line: Line) -> None:
    digest = hashlib.sha256((dest / "package.json").read_bytes())
    for pkg in line.packages:
        digest.update((dest / pkg.path / "package.json").read_bytes())
    stamp = dest / "node_modules" / ".rtretry-install"
    if stamp.exists() and stamp.read_text() == digest.hexdigest():
        return
    _log(f"npm install in {dest.relative_to(ROOT)} (registry only, --ignore-scripts)")
    start = time.monotonic()
    run(["npm", "install", *_NPM_FLAGS], cwd=dest)
    stamp.write_text(digest.hexdigest())
    _log(f"npm install done in {time.monotonic() - start:.0f}s")


def _sources_digest(pkg_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((pkg_dir / "src").rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(pkg_dir)).encode() + b"\0" + path.read_bytes())
    digest.update((pkg_dir / "package.json").read_bytes())
    for name in ("tsup.config.ts", "tsconfig.json", "tsconfig.package.json", "package.json"):
        digest.update((TEMPLATES / name).read_bytes())  # the toolchain is part of the build
    return digest.hexdigest()


def _bin(dest: Path, name: str) -> str:
    return str(dest / "node_modules" / ".bin" / name)


def build(line: Line, dest: Path, *, force: bool = False) -> None:
    """tsup (ESM + CJS) and tsc declarations for each package, core first; incremental."""
    for pkg in line.packages:
        pkg_dir = dest / pkg.path
        stamp = pkg_dir / "dist" / ".rtretry-build"
        digest = _sources_digest(pkg_dir)
        if not force and stamp.exists() and stamp.read_text() == digest:
            _log(f"{pkg.name}: dist up to date")
            continue
        start = time.monotonic()
        run([_bin(dest, "tsup")], cwd=pkg_dir)
        run(
            [_bin(dest, "tsc"), "--declaration", "--emitDeclarationOnly", "-p", "tsconfig.json"],
            cwd=pkg_dir,
        )
        for dts in (pkg_dir / "dist").rglob("*.d.ts"):
            shutil.copyfile(dts, dts.with_name(dts.name[: -len(".d.ts")] + ".d.cts"))
        for required in ("index.js", "index.cjs", "index.d.ts", "index.d.cts"):
            if not (pkg_dir / "dist" / required).exists():
                raise PqError(f"building {pkg.name} did not produce dist/{required}")
        stamp.write_text(digest)
        _log(f"{pkg.name}: built ESM + CJS + declarations in {time.monotonic() - start:.0f}s")


def typecheck(line: Line, dest: Path) -> None:
    """tsc --noEmit over each package (tests excluded, as upstream's build)."""
    for pkg in line.packages:
        run([_bin(dest, "tsc"), "--noEmit", "-p", "tsconfig.json"], cwd=dest / pkg.path)


def packages(line: Line, out: Path) -> list[Path]:
    """Build the patched workspace and `npm pack` each package into ``out``."""
    dest = stage(line, "patched")
    build(line, dest)
    out.mkdir(parents=True, exist_ok=True)
    version = series_version(line)
    for pkg in line.packages:
        stem = pkg.tarball.removesuffix(f"-{line.version}.tgz")
        for stale in out.glob(f"{stem}-{line.version}*.tgz"):
            stale.unlink()
    built = []
    for pkg in line.packages:
        proc = run(
            ["npm", "pack", "--json", "--pack-destination", str(out), *_NPM_FLAGS[:2]],
            cwd=dest / pkg.path,
        )
        (packed,) = json.loads(proc.stdout)
        if packed["version"] != version:
            raise PqError(f"{pkg.name} packed as {packed['version']}, expected {version}")
        path = out / packed["filename"]
        built.append(path)
        _log(
            f"packed {path.relative_to(ROOT)} ({packed['size']} bytes, {packed['entryCount']} files)"
        )
    return built


_PROBE = """\
import { createRequire } from 'node:module';
import { Plugin, version } from '@livekit/agents';
import * as openai from '@livekit/agents-plugin-openai';
const require = createRequire(import.meta.url);
const cjs = require('@livekit/agents-plugin-openai');
if (typeof openai.realtime.RealtimeModel !== 'function') throw new Error('no RealtimeModel (ESM)');
if (typeof cjs.realtime.RealtimeModel !== 'function') throw new Error('no RealtimeModel (CJS)');
// the plugin registers itself with the version tsup baked into it
const plugin = Plugin.registeredPlugins.find((p) => p.title === 'openai');
console.log(JSON.stringify({ core: version, plugin: plugin?.version }));
"""


def verify_packages(line: Line, out: Path) -> None:
    """A fresh npm project: install both tarballs, `npm ls` clean, import ESM + CJS, label."""
    version = series_version(line)
    tarballs = [
        out / pkg.tarball.replace(f"-{line.version}.tgz", f"-{version}.tgz")
        for pkg in line.packages
    ]
    missing = [t.name for t in tarballs if not t.exists()]
    if missing:
        raise PqError(f"missing tarballs in {out}: {', '.join(missing)}; run `make wheels`")
    proj = ROOT / "build" / line.name / "verify"
    if proj.exists():
        shutil.rmtree(proj)
    proj.mkdir(parents=True)
    (proj / "package.json").write_text(
        json.dumps({"name": "rtretry-verify", "private": True, "type": "module"}, indent=2) + "\n"
    )
    run(["npm", "install", *_NPM_FLAGS, *map(str, tarballs)], cwd=proj)
    ls = run(["npm", "ls", "--all"], cwd=proj, check=False)
    if ls.returncode != 0:
        raise PqError(f"npm ls is not clean in the verification project:\n{ls.stdout}{ls.stderr}")
    (proj / "probe.mjs").write_text(_PROBE)
    res = run(["node", "probe.mjs"], cwd=proj, check=False)
    if res.returncode != 0:
        raise PqError(f"the installed packages failed the import check:\n{res.stderr}")
    got = json.loads(res.stdout.strip().splitlines()[-1])
    if got != {"core": version, "plugin": version}:
        raise PqError(f"label mismatch: expected {version} for both, got {got}")
    _log(
        f"verified {len(tarballs)} tarballs in a fresh npm project: npm ls clean, ESM and CJS "
        f"import, @livekit/agents version {got['core']}, plugin {got['plugin']}"
    )


def test_env() -> dict[str, str]:
    if not EMULATOR_PYTHON.exists():
        raise PqError(f"{EMULATOR_PYTHON.relative_to(ROOT)} missing; run `make venv-emulator`")
    return {"RTRETRY_ROOT": str(ROOT), "RTRETRY_PYTHON": str(EMULATOR_PYTHON)}


def vitest(
    dest: Path, paths: list[str], *, json_out: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    cmd = [_bin(dest, "vitest"), "run", *paths]
    if json_out is not None:
        cmd += ["--reporter=default", "--reporter=json", f"--outputFile.json={json_out}"]
    env = {**os.environ, **test_env(), "NO_COLOR": "1", "FORCE_COLOR": "0"}
    proc = subprocess.run(cmd, cwd=dest, env=env, text=True, capture_output=True)
    sys.stdout.write(proc.stdout[-20000:])
    sys.stderr.write(proc.stderr[-8000:])
    if check and proc.returncode != 0:
        raise PqError(
            f"vitest failed ({proc.returncode}) in {dest.relative_to(ROOT)}: {' '.join(paths)}"
        )
    return proc


def summarize(json_out: Path) -> list[tuple[str, str, str]]:
    """(test name, status, first line of the failure) per test of a vitest JSON report."""
    data = json.loads(json_out.read_text())
    rows = []
    for file in data.get("testResults", []):
        for t in file.get("assertionResults", []):
            msg = (t.get("failureMessages") or [""])[0].strip().splitlines()
            rows.append((t["fullName"], t["status"], msg[0] if msg else ""))
    return rows


def pristine_check(line: Line) -> None:
    """Every regression test in testbed/js/regressions.test.ts must FAIL on pristine with an
    AssertionError. The conformance suite (conformance.test.ts) runs on the patched build only."""
    dest = stage(line, "pristine")
    for pkg in line.packages:
        installed = json.loads((dest / pkg.path / "package.json").read_text())["version"]
        if installed != line.version:
            raise PqError(f"pristine check needs {pkg.name} {line.version}, found {installed}")
    json_out = dest / "pristine-check.json"
    vitest(dest, ["rtretry-tests/regressions.test.ts"], json_out=json_out, check=False)
    rows = summarize(json_out)
    if not rows:
        raise PqError("the pristine check ran no test")
    bad = []
    print(
        f"\n== pristine check: regression tests on pristine {line.packages[0].name} {line.version} =="
    )
    for name, status, msg in rows:
        reproduced = status == "failed" and msg.startswith("AssertionError")
        if not reproduced:
            bad.append(name)
        verdict = (
            "reproduced"
            if reproduced
            else (
                "FAILED: passes on pristine" if status == "passed" else f"FAILED: {status}, {msg}"
            )
        )
        print(f"  {name:<72} {verdict}\n      {msg}" if reproduced else f"  {name:<72} {verdict}")
    print(f"{len(rows) - len(bad)}/{len(rows)} regression tests reproduce on pristine")
    if bad:
        raise PqError("regression tests that do not reproduce on pristine: " + ", ".join(bad))


def _added_lines(line: Line, rel: str) -> set[int]:
    """Line numbers (1-based, in the patched file) that the series added to ``rel``."""
    out = ugit(line, "diff", "-U0", BASE_TAG, "--", rel)
    added: set[int] = set()
    for m in re.finditer(r"^@@ -\S+ \+(\d+)(?:,(\d+))? @@", out, flags=re.M):
        start, count = int(m.group(1)), int(m.group(2) or "1")
        added.update(range(start, start + count))
    return added


def prettier_check(line: Line) -> None:
    """Upstream's prettier config over every line the series adds, and over testbed/js/.

    A file the series modifies is formatted in a scratch copy; only differences on lines the
    series added count (upstream's own lines are upstream's business, and prettier releases
    differ on some of them).
    """
    dest = stage(line, "patched")
    prettier = [_bin(dest, "prettier"), "--config", str(dest / ".prettierrc")]
    ours = [str(p) for p in (dest / "rtretry-tests").rglob("*.ts")]
    bad: list[str] = []
    for rel in touched(line):
        original = (dest / rel).read_text().splitlines()
        formatted = subprocess.run(
            [*prettier, "--stdin-filepath", str(dest / rel)],
            cwd=dest,
            text=True,
            input="\n".join(original) + "\n",
            capture_output=True,
            check=True,
        ).stdout
        added = _added_lines(line, rel)
        matcher = difflib.SequenceMatcher(a=original, b=formatted.splitlines(), autojunk=False)
        for tag, i1, i2, _j1, _j2 in matcher.get_opcodes():
            if tag != "equal" and any(n in added for n in range(i1 + 1, max(i2, i1 + 1) + 1)):
                bad.append(f"{rel}:{i1 + 1}")
    res = run([*prettier, "--check", *ours], cwd=dest, check=False)
    if res.returncode != 0:
        bad.append(res.stdout + res.stderr)
    if bad:
        raise PqError("not formatted as upstream's prettier config wants: " + ", ".join(bad))
    _log(f"prettier: the series' added lines and {len(ours)} test file(s) are formatted")


def bench(line: Line) -> dict[str, list[dict[str, object]]]:
    """Every agents-js#934 symptom for 10 s (testbed/js/storm.bench.ts), pristine vs patched."""
    results: dict[str, list[dict[str, object]]] = {}
    for build_name in ("pristine", "patched"):
        dest = stage(line, build_name)
        if build_name == "patched":
            build(line, dest)
        cmd = [_bin(dest, "vitest"), "bench", "--run", "rtretry-tests/storm.bench.ts"]
        env = {**os.environ, **test_env(), "NO_COLOR": "1"}
        proc = subprocess.run(cmd, cwd=dest, env=env, text=True, capture_output=True)
        found = re.findall(r"RTRETRY_BENCH (\{.*\})", proc.stdout + proc.stderr)
        if not found:
            raise PqError(f"the {build_name} bench printed no result:\n{proc.stdout[-3000:]}")
        results[build_name] = [json.loads(f) for f in found]
    print(f"\n== JS bench ({line.name}): each scenario 10 s, maxRetry=3, pristine -> patched ==")
    for before, after in zip(results["pristine"], results["patched"], strict=True):
        print(f"{before['scenario']}:")
        for key in before:
            if key != "scenario":
                print(f"    {key:<24} {before[key]!s:>10} -> {after[key]!s:<10}")
    out = ROOT / "bench" / "results" / f"{time.strftime('%Y-%m-%d')}-{line.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    _log(f"wrote {out.relative_to(ROOT)}")
    return results


def check_prefix(line: Line) -> None:
    """For check-series: the prefix builds, type-checks and passes the realtime tests."""
    dest = stage(line, "patched", prefix_ok=True)
    build(line, dest)
    typecheck(line, dest)
    vitest(dest, ["plugins/openai/src/realtime/"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pq_npm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--line", default="js-1.9.0")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="stage and build the patched workspace")
    p_test = sub.add_parser("test", help="run vitest in a build workspace")
    p_test.add_argument("--build", default="patched", choices=["patched", "pristine"])
    p_test.add_argument("--json", type=Path, help="also write vitest's JSON report here")
    p_test.add_argument("paths", nargs="*")
    sub.add_parser("pristine-check", help="the regression tests must fail on pristine")
    sub.add_parser("prettier", help="prettier --check on touched files and testbed/js")
    sub.add_parser("bench", help="reconnect storm and memory, pristine vs patched")
    args = parser.parse_args(argv)
    try:
        line = load_line(args.line)
        if not line.is_npm:
            raise PqError(f"line {line.name} is not an npm line")
        if args.cmd == "build":
            build(line, stage(line, "patched"))
        elif args.cmd == "test":
            dest = stage(line, args.build)
            if args.build == "patched":
                build(line, dest)
            json_out = None if args.json is None else (Path.cwd() / args.json).resolve()
            vitest(dest, args.paths, json_out=json_out)
        elif args.cmd == "pristine-check":
            pristine_check(line)
        elif args.cmd == "prettier":
            prettier_check(line)
        elif args.cmd == "bench":
            bench(line)
    except PqError as e:
        print(f"pq: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
