"""The patch queue tool (tools/pq.py): apply, export round trip, failure reporting, pins.

Each test runs the real tool in a scratch copy of this repository's tooling (its own
``patches/``, pin file and sdist cache), so nothing here touches the working tree.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
LINE = "1.8.9"
CACHE = REPO / ".cache" / "sdist" / LINE


def _pq(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "tools" / "pq.py"), "--line", LINE, *args],
        cwd=root,
        text=True,
        capture_output=True,
    )


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A copy of the tooling, pins, patches and the verified sdist cache."""
    if not all((CACHE / name).exists() for name in _pinned_sdists()):
        pytest.skip("the pinned sdists are not cached; run `make fetch` first")
    root = tmp_path / "repo"
    shutil.copytree(REPO / "tools", root / "tools", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "upstream", root / "upstream")
    shutil.copytree(REPO / "patches" / LINE, root / "patches" / LINE)
    shutil.copy2(REPO / ".gitignore", root / ".gitignore")  # it hides the generated folders
    (root / ".cache" / "sdist").mkdir(parents=True)
    (root / ".cache" / "sdist" / LINE).symlink_to(CACHE)
    return root


def _pinned_sdists() -> list[str]:
    import tomllib

    pin = tomllib.loads((REPO / "upstream" / f"{LINE}.toml").read_text())
    return [pkg["sdist"] for pkg in pin["package"]]


def _patch_bytes(root: Path) -> dict[str, bytes]:
    folder = root / "patches" / LINE
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "COVER.md"}


def test_export_without_edits_is_byte_identical(scratch: Path) -> None:
    before = _patch_bytes(scratch)
    assert _pq(scratch, "apply").returncode == 0
    proc = _pq(scratch, "export")
    assert proc.returncode == 0, proc.stderr
    assert _patch_bytes(scratch) == before
    assert _pq(scratch, "check-export").returncode == 0


def test_export_picks_up_a_new_commit(scratch: Path) -> None:
    assert _pq(scratch, "apply").returncode == 0
    target = scratch / "livekit-agents" / "livekit" / "agents" / "version.py"
    target.write_text(target.read_text() + "# rtretry test edit\n")
    # an uncommitted edit is never thrown away silently
    refused = _pq(scratch, "apply")
    assert refused.returncode == 1
    assert "uncommitted edits" in refused.stderr

    commit = _pq(scratch, "git", "commit", "-q", "-a", "-m", "test: an edit")
    assert commit.returncode == 0, commit.stderr
    refused = _pq(scratch, "apply")
    assert refused.returncode == 1 and "never exported" in refused.stderr

    assert _pq(scratch, "export").returncode == 0
    series = (scratch / "patches" / LINE / "series").read_text().split()
    assert series[-1].endswith("-test-an-edit.patch")
    assert _pq(scratch, "check-export").returncode == 0


def test_broken_patch_stops_the_build_and_names_patch_and_file(scratch: Path) -> None:
    folder = scratch / "patches" / LINE
    broken = folder / "0099-broken.patch"
    broken.write_text(
        "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
        "From: rtretry <rtretry@users.noreply.github.com>\n"
        "Date: Sat, 21 Nov 2026 00:00:00 +0000\n"
        "Subject: [PATCH] test: a patch whose context is not upstream's\n"
        "\n"
        "---\n"
        "diff --git a/livekit-agents/livekit/agents/version.py "
        "b/livekit-agents/livekit/agents/version.py\n"
        "--- a/livekit-agents/livekit/agents/version.py\n"
        "+++ b/livekit-agents/livekit/agents/version.py\n"
        "@@ -15 +15 @@\n"
        '-__version__ = "0.0.0"\n'
        '+__version__ = "0.0.1"\n'
    )
    with (folder / "series").open("a") as f:
        f.write("0099-broken.patch\n")

    proc = _pq(scratch, "apply")
    assert proc.returncode == 1
    assert "patches/1.8.9/0099-broken.patch failed to apply" in proc.stderr
    assert "livekit-agents/livekit/agents/version.py" in proc.stderr


def test_sha256_mismatch_stops_the_build(scratch: Path) -> None:
    pin = scratch / "upstream" / f"{LINE}.toml"
    text = pin.read_text()
    first_sha = text.split('sha256 = "', 1)[1].split('"', 1)[0]
    pin.write_text(text.replace(first_sha, "0" * 64, 1))
    proc = _pq(scratch, "fetch")
    assert proc.returncode == 1
    assert "sha256 mismatch" in proc.stderr and first_sha in proc.stderr


def test_label_is_derived_from_the_series(scratch: Path) -> None:
    label = _pq(scratch, "label").stdout.strip()
    series = (scratch / "patches" / LINE / "series").read_text().splitlines()
    n = len([entry for entry in series if entry and not entry.startswith("#")])
    assert label.startswith(f"{LINE}+rtretry.{n}.g"), label
    first = sorted((scratch / "patches" / LINE).glob("*.patch"))[0]
    first.write_text(first.read_text().replace("Forwarded: not-yet", "Forwarded: elsewhere"))
    assert _pq(scratch, "label").stdout.strip() != label


def test_generated_tests_folder_is_tracked_and_new_files_are_not_lost(scratch: Path) -> None:
    assert _pq(scratch, "apply").returncode == 0
    # the pin's monorepo_dirs: an empty tests/ at the base, tracked by the tree's git
    assert (scratch / "tests").is_dir()
    exclude = (scratch / ".pq" / "git" / "info" / "exclude").read_text().split()
    assert "!/tests/" in exclude
    new = scratch / "tests" / "test_new.py"
    new.write_text("def test_new() -> None:\n    pass\n")
    refused = _pq(scratch, "apply")
    assert refused.returncode == 1
    assert "tests/test_new.py" in refused.stderr and "git add -f" in refused.stderr
    assert new.exists()
    assert _pq(scratch, "git", "add", "-f", "tests/test_new.py").returncode == 0
    commit = _pq(scratch, "git", "commit", "-q", "-m", "test: a travelling test")
    assert commit.returncode == 0, commit.stderr
    assert _pq(scratch, "export").returncode == 0
    assert "tests/test_new.py" in _pq(scratch, "touched").stdout.split()
    assert _pq(scratch, "apply").returncode == 0
    assert new.exists()  # it travels in the patch now


def test_apply_refuses_to_delete_a_folder_this_repository_tracks(scratch: Path) -> None:
    (scratch / "tests").mkdir()
    (scratch / "tests" / "ours.py").write_text("")
    git = ["git", "-C", str(scratch), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-f", "tests/ours.py"], check=True)
    proc = _pq(scratch, "apply")
    assert proc.returncode == 1
    assert "tests/ holds files tracked by this repository" in proc.stderr
    assert (scratch / "tests" / "ours.py").exists()


def _commit(root: Path, message: str, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        assert _pq(root, "git", "add", "-f", rel).returncode == 0
    proc = _pq(root, "git", "commit", "-q", "-m", message)
    assert proc.returncode == 0, proc.stderr


def test_check_series_proves_each_patch_by_its_travelling_tests(scratch: Path) -> None:
    """A small series written with the tool: a patch whose test fails without it, one whose
    test passes without it, one that declares ``Tests: none``, and one with neither."""
    folder = scratch / "patches" / LINE
    for old in folder.glob("*.patch"):
        old.unlink()
    (folder / "series").write_text("")
    shutil.copy2(REPO / "pyproject.toml", scratch / "pyproject.toml")  # upstream's pytest config
    assert _pq(scratch, "apply").returncode == 0
    probe = "livekit-agents/livekit/agents/_pq_probe.py"
    _commit(
        scratch,
        "feat(agents): a probe\n\nBug: https://example.invalid/1\nForwarded: not-yet",
        {
            probe: "ANSWER = 42\n",
            "tests/test_pq_probe.py": "import pytest\n\nfrom livekit.agents._pq_probe import "
            "ANSWER\n\npytestmark = pytest.mark.unit\n\n\ndef test_answer() -> None:\n"
            "    assert ANSWER == 42\n",
        },
    )
    _commit(
        scratch,
        "fix(agents): a test that proves nothing\n\nForwarded: not-yet",
        {
            probe: "ANSWER = 42\nQUESTION = None\n",
            "tests/test_pq_nothing.py": "def test_nothing() -> None:\n    assert True\n",
        },
    )
    _commit(
        scratch,
        "docs(agents): a comment\n\nTests: none (a comment changes no behaviour)",
        {probe: "# the answer\nANSWER = 42\nQUESTION = None\n"},
    )
    _commit(scratch, "fix(agents): untested", {probe: "ANSWER = 42\nQUESTION = 1\n"})
    assert _pq(scratch, "export").returncode == 0

    proc = _pq(scratch, "check-series", "--python", sys.executable)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = proc.stdout.splitlines()
    assert len(report) == 4, proc.stdout
    assert report[0] == (
        "prefix 1/4 0001-feat-agents-a-probe: applies, compiles, 1 travelling tests pass; "
        "its 1 tests fail without it (1 failed)"
    )
    assert report[1].endswith("2 travelling tests pass; ERROR: its 1 tests pass without it")
    assert report[2].endswith(
        "2 travelling tests pass; no tests of its own (Tests: none (a comment changes no "
        "behaviour))"
    )
    assert "ERROR: no travelling tests and no `Tests: none (<reason>)` line" in report[3]
    # the probe module exists only in the generated tree: the tests imported the tree, not
    # the wheels installed in the venv
    assert "importing livekit.agents from livekit-agents/" in proc.stderr
    assert "2 problem(s)" in proc.stderr
    assert "0002-fix-agents-a-test-that-proves-nothing: its tests pass without it" in proc.stderr
    assert "0004-fix-agents-untested: no test file under tests/" in proc.stderr
    # the tree is left with the whole series applied
    assert (scratch / "tests" / "test_pq_nothing.py").exists()
