"""Reading a series: each ``git format-patch`` file's subject, message, trailers and files."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .common import PqError
from .pins import Line

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
