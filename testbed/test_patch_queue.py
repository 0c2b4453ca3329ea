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
# the identity every exported patch carries (tools/patchqueue/tree.py sets it)
PROJECT_AUTHOR = "rtretry <rtretry@users.noreply.github.com>"
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


# --- make pr and make cover: reading a patch, composing a pull request -------------------------

sys.path.insert(0, str(REPO / "tools"))
import patchqueue as pq  # noqa: E402

_HEAD = (
    "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
    "From: rtretry <rtretry@users.noreply.github.com>\n"
    "Date: Sat, 21 Nov 2026 00:00:00 +0000\n"
)
_SOURCE_DIFF = (
    "diff --git a/livekit-agents/livekit/agents/x.py b/livekit-agents/livekit/agents/x.py\n"
    "index 1111111111111111111111111111111111111111..2222222222222222222222222222222222222222"
    " 100644\n"
    "--- a/livekit-agents/livekit/agents/x.py\n"
    "+++ b/livekit-agents/livekit/agents/x.py\n"
    "@@ -1,2 +1,2 @@\n"
    " a = 1\n"
    "-b = 2\n"
    "+b = 3\n"
)
_TEST_DIFF = (
    "diff --git a/tests/test_x.py b/tests/test_x.py\n"
    "new file mode 100644\n"
    "index 0000000000000000000000000000000000000000..3333333333333333333333333333333333333333\n"
    "--- /dev/null\n"
    "+++ b/tests/test_x.py\n"
    "@@ -0,0 +1,8 @@\n"
    "+import pytest\n"
    "+\n"
    "+pytestmark = pytest.mark.unit\n"
    "+\n"
    "+\n"
    "+async def test_gives_up_after_max_retry() -> None:\n"
    "+    assert True\n"
    "+def test_resets_after_a_healthy_connection(): pass\n"
)
RECONNECT = (
    _HEAD + "Subject: [PATCH] fix(openai): bound realtime reconnect attempts after a\n"
    " healthy connection\n"
    "\n"
    "The reconnect loop reset its counter after every handshake, so a\n"
    "server that accepts and then closes was reconnected for ever.\n"
    "\n"
    "- reset only after a healthy connection: a completed response or\n"
    "  10 s up\n"
    "- give up after max_retry + 1 attempts\n"
    "\n"
    "Standalone: yes. The engine alone now gives up\n"
    "after max_retry + 1 attempts.\n"
    "\n"
    "Bug: https://github.com/livekit/agents/issues/6205\n"
    "Forwarded: https://github.com/livekit/agents/pull/7001\n"
    "Co-authored-by: A Person <a@example.invalid>\n"
    "Origin: vendor, rtretry\n"
    " (a continuation line)\n"
    "---\n"
    " livekit-agents/livekit/agents/x.py | 2 +-\n"
    " tests/test_x.py                    | 8 ++++++++\n"
    " 2 files changed, 9 insertions(+), 1 deletion(-)\n"
    "\n" + _SOURCE_DIFF + _TEST_DIFF
)
API = (
    _HEAD + "Subject: [PATCH] feat(llm): let a realtime generation report how it ended\n"
    "\n"
    "Add GenerationCreatedEvent.outcome.\n"
    "\n"
    "Tests: none (API only: exercised by the next pull requests' tests)\n"
    "Bug: https://github.com/livekit/agents/issues/6205\n"
    "Forwarded: not-yet\n"
    "---\n"
    " livekit-agents/livekit/agents/x.py | 2 +-\n"
    "\n" + _SOURCE_DIFF
)


def _read(tmp_path: Path, name: str, text: str) -> pq.Patch:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return pq.read_patch(path)


def test_upstream_patch_drops_only_the_queue_trailers(tmp_path: Path) -> None:
    patch = _read(tmp_path, "0002-fix-openai-bound.patch", RECONNECT)
    expected = (
        RECONNECT.replace("Bug: https://github.com/livekit/agents/issues/6205\n", "")
        .replace("Forwarded: https://github.com/livekit/agents/pull/7001\n", "")
        .replace("Origin: vendor, rtretry\n (a continuation line)\n", "")
    )
    assert patch.upstream_patch() == expected  # Co-authored-by and every other byte stay
    assert patch.trailer("Origin") == ["vendor, rtretry (a continuation line)"]
    # a trailer block of queue trailers only goes with the blank line before it
    api = _read(tmp_path, "0001-feat-llm.patch", API)
    assert "Add GenerationCreatedEvent.outcome.\n---\n" in api.upstream_patch()
    assert api.upstream_patch().split("\n---\n", 1)[1] == API.split("\n---\n", 1)[1]


def test_upstream_patch_of_each_patch_of_the_series_keeps_its_diff() -> None:
    line = pq.load_line(LINE)
    for patch in pq.read_series(line):
        original = (line.patch_dir / patch.name).read_text()
        upstream = patch.upstream_patch()
        head, _, diff = upstream.partition("\n---\n")
        assert diff == original.partition("\n---\n")[2], patch.name
        message = head.split("\n\n", 1)[1] if "\n\n" in head else ""
        keys = [ln.split(":", 1)[0].lower() for ln in message.splitlines() if ":" in ln]
        assert not set(keys) & {"bug", "forwarded", "origin", "tests"}, patch.name


def test_a_patch_is_read_into_subject_tests_and_standalone(tmp_path: Path) -> None:
    line = pq.load_line(LINE)
    patch = _read(tmp_path, "0002-fix-openai-bound.patch", RECONNECT)
    assert patch.subject == (
        "fix(openai): bound realtime reconnect attempts after a healthy connection"
    )
    assert patch.number == "0002" and patch.stem == "0002-fix-openai-bound"
    assert [(f.path, f.status, len(f.added), f.removed) for f in patch.files] == [
        ("livekit-agents/livekit/agents/x.py", "M", 1, 1),
        ("tests/test_x.py", "A", 8, 0),
    ]
    (tests,) = patch.test_files(line)
    assert tests.test_names == [
        "test_gives_up_after_max_retry",
        "test_resets_after_a_healthy_connection",
    ]
    assert patch.standalone == "yes. The engine alone now gives up after max_retry + 1 attempts."
    assert patch.tests_none is None
    api = _read(tmp_path, "0001-feat-llm.patch", API)
    assert api.standalone is None
    assert api.tests_none == "API only: exercised by the next pull requests' tests"
    assert api.test_files(line) == []


def test_pull_request_body_is_the_message_then_the_generated_sections(tmp_path: Path) -> None:
    line = pq.load_line(LINE)
    patches = [
        _read(tmp_path, "0001-feat-llm.patch", API),
        _read(tmp_path, "0002-fix-openai-bound.patch", RECONNECT),
    ]
    bench = ["Bench intro:", "", "| figure | pristine | patched |", "| --- | --- | --- |"]
    body = pq.pr_body(line, patches, 1, bench)
    sections = [ln for ln in body.splitlines() if ln.startswith("## ")]
    assert sections == [
        "## Summary",
        "## Motivation",
        "## How it was tested",
        "## Depends on",
        "## Earlier objections this answers",
    ]
    # the message, unwrapped for GitHub, without the queue's trailers: its Standalone paragraph
    # is the summary, the rest (no Change: label here) the motivation, with Refs to the Bug
    assert body.startswith(
        "## Summary\n\nYes. The engine alone now gives up after max_retry + 1 attempts.\n\n"
        "## Motivation\n\n"
        "The reconnect loop reset its counter after every handshake, so a server that accepts "
        "and then closes was reconnected for ever.\n\n"
        "- reset only after a healthy connection: a completed response or 10 s up\n"
        "- give up after max_retry + 1 attempts\n\n"
        "Co-authored-by: A Person <a@example.invalid>\n\n"
        "Refs livekit/agents#6205\n\n## How it was tested\n"
    )
    assert "Bug:" not in body and "Forwarded:" not in body and "Origin:" not in body
    assert (
        "- `tests/test_x.py`: `test_gives_up_after_max_retry`, "
        "`test_resets_after_a_healthy_connection`" in body
    )
    assert "pytest --unit tests/test_x.py\n" in body and "`make check-series`" in body
    assert "| figure | pristine | patched |" in body
    assert "It was tested on top of the earlier pull request of the series" in body
    assert (
        "It changes the same files, so it does not apply without them:\n\n"
        "- feat(llm): let a realtime generation report how it ended (0001 of the series, "
        "not sent yet): `livekit-agents/livekit/agents/x.py`" in body
    )
    assert "#6352" in body and "#6242" in body and "`max_retry=0` turns it off" in body

    first = pq.pr_body(line, patches, 0, [])
    assert "No tests of its own: API only: exercised by the next pull requests' tests." in first
    assert (
        "Nothing: no earlier pull request changes the files this one does, so it applies to "
        "livekit-agents 1.8.9 as released." in first
    )
    assert "tested on top" not in first
    assert "Bench" not in first


def test_labelled_paragraphs_become_the_pull_request_sections(tmp_path: Path) -> None:
    labelled = RECONNECT.replace(
        "- reset only after a healthy connection: a completed response or\n"
        "  10 s up\n"
        "- give up after max_retry + 1 attempts\n",
        "Change: reset only after a healthy\nconnection.\n\n"
        "Behaviour changes and risks: a failing server\nnow gets max_retry + 1 attempts.\n",
    )
    patch = _read(tmp_path, "0002-fix-openai-bound.patch", labelled)
    text = "\n".join(pq.message_sections(patch))
    assert [ln for ln in text.splitlines() if ln.startswith("## ")] == [
        "## Summary",
        "## Motivation",
        "## Change",
        "## Behaviour changes and risks",
    ]
    assert "## Change\n\nReset only after a healthy connection.\n" in text
    assert "## Behaviour changes and risks\n\nA failing server now gets max_retry" in text
    assert "Refs livekit/agents#6205" in text.split("## Change")[0]
    assert pq._issue_ref("https://github.com/livekit/agents/pull/7001") == "livekit/agents#7001"


def test_the_relation_to_open_pull_requests_is_its_own_section(tmp_path: Path) -> None:
    labelled = RECONNECT.replace(
        "- reset only after a healthy connection: a completed response or\n"
        "  10 s up\n"
        "- give up after max_retry + 1 attempts\n",
        "Change: reset only after a healthy\nconnection.\n\n"
        "Relation to open pull requests: livekit/agents#7092\nkeeps resetting the counter.\n",
    )
    patch = _read(tmp_path, "0002-fix-openai-bound.patch", labelled)
    text = "\n".join(pq.message_sections(patch))
    assert "## Relation to open pull requests\n\nlivekit/agents#7092 keeps resetting" in text
    assert "#7092" not in text.split("## Relation to open pull requests")[0]


def test_a_declared_need_is_a_dependency_and_leaves_the_upstream_patch(tmp_path: Path) -> None:
    line = pq.load_line(LINE)
    needing = RECONNECT.replace(
        "Bug: https://github.com/livekit/agents/issues/6205\n",
        "Needs: 0001 (the outcome API)\nBug: https://github.com/livekit/agents/issues/6205\n",
    )
    unrelated = API.replace(" livekit-agents/livekit/agents/x.py", " livekit-agents/y.py").replace(
        "livekit/agents/x.py", "livekit/agents/y.py"
    )
    patches = [
        _read(tmp_path, "0001-feat-llm.patch", unrelated),
        _read(tmp_path, "0002-fix-openai-bound.patch", needing),
    ]
    assert pq.depends_on(patches, 1) == []  # no shared file
    assert [(p.number, why) for p, why in pq.needs(patches, 1)] == [("0001", "the outcome API")]
    assert pq.dependency_numbers(patches, 1) == "0001"
    body = pq.pr_body(line, patches, 1, [])
    assert (
        "It builds on what these add, so it does not work without them:\n\n"
        "- feat(llm): let a realtime generation report how it ended (0001 of the series, "
        "not sent yet): the outcome API" in body
    )
    assert "Needs:" not in patches[1].upstream_patch()
    wrong = _read(tmp_path, "0002-fix-openai-bound.patch", needing.replace("0001 (", "0009 ("))
    with pytest.raises(pq.PqError, match="Needs: 0009 is not an earlier patch"):
        pq.needs([patches[0], wrong], 1)


def test_bench_figures_are_copied_from_the_report(tmp_path: Path) -> None:
    line = pq.load_line(LINE)
    report = tmp_path / "REPORT.md"
    assert pq.bench_headline(report, line) == []
    rows = [
        "| figure | pristine | patched | goal | met |",
        "| --- | --- | --- | --- | --- |",
        "| turn success at p=0.3 | 69.0 % | 99.0 % | >= 99 % | yes |",
        "| recovery overhead p50 | no retry | 8.1 ms | <= 20 ms | yes |",
        "| happy-path CPU per turn | 1 | 0.985 [0.956, 1.024] | <= 1.02 | undecided |",
        "| memory retained per reconnect cycle | -13 B | -34 B | <= 256 B | yes |",
    ]
    report.write_text(
        "# Bench\n\nMachine: AMD EPYC, 2 cores, Python 3.11.7.\n"
        "Date: 2026-11-21T11:58:29+00:00. Run time: 833 s.\n"
        "Builds: pristine `1.8.9`, patched `1.8.9+rtretry.3.gdeadbeef`.\n\n"
        "## Headline\n\nSome words.\n\n" + "\n".join(rows) + "\n\nGoals missed.\n\n## Next\n"
    )
    headline = pq.bench_headline(report, line)
    assert headline[0].startswith(
        "Bench of the whole series against pristine 1.8.9, not of this change alone "
        "(2026-11-21, AMD EPYC, 2 cores); builds `1.8.9` and `1.8.9+rtretry.3.gdeadbeef` "
        "(an earlier build of the series; this one is `1.8.9+rtretry."
    )
    assert headline[2:] == [rows[0], rows[1], rows[2], rows[4], rows[5]]  # no recovery row


def test_make_pr_writes_one_folder_per_patch_and_an_index(scratch: Path) -> None:
    proc = _pq(scratch, "pr")
    assert proc.returncode == 0, proc.stderr
    out = scratch / "build" / "pr"
    listing = (scratch / "patches" / LINE / "series").read_text().splitlines()
    series = [name for name in listing if name and not name.startswith("#")]
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == [n.removesuffix(".patch") for n in series]
    index = (out / "INDEX.md").read_text()
    for name in series:
        folder = out / name.removesuffix(".patch")
        patch = pq.read_patch(scratch / "patches" / LINE / name)
        assert (folder / "title.txt").read_text() == patch.subject + "\n"
        assert (folder / name).read_text() == patch.upstream_patch()
        assert (folder / "body.md").read_text().count("## How it was tested") == 1
        assert f"]({folder.name}/body.md)" in index
    positions = [index.index(n.removesuffix(".patch")) for n in series]
    assert positions == sorted(positions)


def test_cover_is_regenerated_below_its_marker_and_checked(scratch: Path) -> None:
    cover = scratch / "patches" / LINE / "COVER.md"
    first = sorted((scratch / "patches" / LINE).glob("0001-*.patch"))[0]
    raw = first.read_text()
    start = raw.index("\nStandalone: ") + 1
    first.write_text(raw[:start] + raw[raw.index("\n\n", start) + 2 :])  # one that states none
    cover.write_text("# Hand-written cover\n\nOur words.\n\n" + pq.COVER_MARKER + "\nold list\n")
    assert _pq(scratch, "check-cover").returncode == 1
    assert _pq(scratch, "cover").returncode == 0
    text = cover.read_text()
    assert text.startswith("# Hand-written cover\n\nOur words.\n\n" + pq.COVER_MARKER + "\n")
    assert "old list" not in text and "(not stated)" in text
    assert _pq(scratch, "check-cover").returncode == 0

    first = sorted((scratch / "patches" / LINE).glob("0001-*.patch"))[0]
    raw = first.read_text()
    bug = raw.index("\nBug: ") + 1
    first.write_text(raw[:bug] + "Standalone: yes, an API on its own.\n\n" + raw[bug:])
    stale = _pq(scratch, "check-cover")
    assert stale.returncode == 1 and "COVER.md is stale" in stale.stderr
    assert _pq(scratch, "cover").returncode == 0
    assert "| yes, an API on its own. |" in cover.read_text()
    assert _pq(scratch, "check-cover").returncode == 0


@pytest.mark.parametrize("line", ["1.8.9", "js-1.9.0"])
def test_every_patch_is_authored_by_the_project(line: str) -> None:
    # a patch sent upstream carries the project's identity, never a local default (a CLA
    # check would refuse it); the commits made in the generated tree take the machine's
    authors = {
        path.name: next(
            (ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.startswith("From: ")),
            None,
        )
        for path in sorted((REPO / "patches" / line).glob("0*.patch"))
    }
    assert authors, f"no patches in patches/{line}"
    wrong = {name: who for name, who in authors.items() if who != f"From: {PROJECT_AUTHOR}"}
    assert not wrong, f"patches not authored by {PROJECT_AUTHOR}: {wrong}"
