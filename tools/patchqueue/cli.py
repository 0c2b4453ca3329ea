"""pq: the patch queue of the rtretry fork of livekit-agents (Python) and agents-js (npm).

``python3 tools/pq.py [--line <line>] <command>`` (or ``python3 -m tools.pq``); the line
defaults to ``$LINE`` or 1.8.9. Commands:

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
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from . import npm
from .checkseries import check_series
from .common import DEFAULT_LINE, ROOT, PqError
from .pins import fetch, load_line
from .pr import PR_DIR, check_cover, write_cover, write_prs
from .queue import apply, check_export, export, touched
from .tree import git_cmd
from .wheels import verify_wheels, version, wheels


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
            npm.packages(line, args.out)
            if not args.no_verify:
                npm.verify_packages(line, args.out)
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
