"""The README and docs/ stay in step with the Makefile and with each other.

The README is what a newcomer reads first and stays short; every subject it leaves out has a
file in ``docs/`` that it links; every ``make <target>`` the text names is a target that
``make help`` lists; every relative link leads to a file that exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
_MAKE_RE = re.compile(r"(?:^|`)make ([a-z][a-z-]*)", re.M)
_LINK_RE = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _help_targets() -> set[str]:
    """The targets ``make help`` lists: those with a ``## `` description."""
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z-]*):.*## ", text, re.M))


def test_readme_is_short() -> None:
    assert len(README.read_text().splitlines()) < 200


def test_every_doc_is_linked_from_the_readme() -> None:
    links = set(_LINK_RE.findall(README.read_text()))
    assert DOCS, "docs/ holds no page"
    assert [d.name for d in DOCS if f"docs/{d.name}" not in links] == []


def test_named_make_targets_exist() -> None:
    targets = _help_targets()
    assert {"wheels", "test", "help"} <= targets
    named = {
        (path.relative_to(REPO).as_posix(), target)
        for path in [README, *DOCS]
        for target in _MAKE_RE.findall(path.read_text())
    }
    assert sorted((where, t) for where, t in named if t not in targets) == []


def test_relative_links_resolve() -> None:
    broken = [
        (path.relative_to(REPO).as_posix(), target)
        for path in [README, *DOCS]
        for target in _LINK_RE.findall(path.read_text())
        if not target.startswith(("http://", "https://", "mailto:"))
        and not (path.parent / target).exists()
    ]
    assert broken == []
