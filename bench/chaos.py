#!/usr/bin/env python3
"""``make chaos``: a long, randomized fault exploration; writes bench/CHAOS.md and raw JSON.

Runs ``testbed/exploration.py`` examples (family ``all``: every action, every fault, every
session variant) with Hypothesis, randomized, in rounds of ``--round-examples`` until
``--minutes`` have passed, on the interpreter that runs it (the patched venv). Every invariant
is checked after every example. A violated invariant is raised as its own exception type, so
Hypothesis shrinks each distinct invariant separately; once an invariant has a shrunk
reproduction it is "known" and later rounds only count it, so that the time goes to finding
the others. The smallest example seen per invariant (``Example.size``) is the reproduction
reported, with its violation text.

Usage: ``python bench/chaos.py --minutes 15 [--seed N] [--out bench]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

from livekit.agents import __version__  # noqa: E402
from testbed import exploration  # noqa: E402
from testbed.exploration import INVARIANTS, Example, Violation  # noqa: E402

_ERRORS = {name: type(f"Violated_{name}", (AssertionError,), {}) for name in INVARIANTS}


class Explorer:
    """The state of one chaos run: counters, known invariants, smallest reproductions."""

    def __init__(
        self, deadline: float, family: exploration.Family, shrink_budget: int = 60
    ) -> None:
        self.deadline = deadline
        self.shrink_budget = shrink_budget
        self.round_calls = 0
        self.round_examples = 0
        self.family = family
        self.examples = 0
        self.checks = 0
        self.violating_examples = 0
        self.counts: Counter[str] = Counter()
        self.known: set[str] = set()
        self.smallest: dict[str, tuple[Example, list[Violation]]] = {}
        self.first_seen: dict[str, float] = {}
        self.t0 = time.monotonic()

    def run_one(self, ex: Example) -> None:
        self.round_calls += 1
        if time.monotonic() > self.deadline:
            return  # out of time: pass, so that a shrink in progress ends quickly
        if self.round_calls > self.round_examples + self.shrink_budget:
            return  # this round's shrink budget is spent: pass, so the shrink ends
        _, violations = exploration.run_and_check(ex)
        self.examples += 1
        self.checks += len(INVARIANTS)
        names = sorted({v.invariant for v in violations}, key=INVARIANTS.index)
        if not names:
            return
        self.violating_examples += 1
        for name in names:
            self.counts[name] += 1
            self.first_seen.setdefault(name, time.monotonic() - self.t0)
            best = self.smallest.get(name)
            if best is None or ex.size < best[0].size:
                self.smallest[name] = (ex, [v for v in violations if v.invariant == name])
        new = [n for n in names if n not in self.known]
        if new:
            raise _ERRORS[new[0]](f"{new[0]}: {ex.describe()}")

    def round(self, examples: int, round_seed: int) -> None:
        """One Hypothesis run of ``examples`` examples, then at most ``shrink_budget`` more
        calls for shrinking (each example takes about a second)."""
        self.round_calls = 0
        self.round_examples = examples

        @settings(
            max_examples=examples,
            database=None,
            deadline=None,
            derandomize=False,
            phases=(Phase.generate, Phase.shrink),
            report_multiple_bugs=True,
            suppress_health_check=list(HealthCheck),
            print_blob=False,
        )
        @seed(round_seed)
        @given(ex=exploration.examples(self.family))
        def explore(ex: Example) -> None:
            self.run_one(ex)

        try:
            explore()
        except BaseException as e:  # noqa: BLE001 - failures are collected, not raised
            if isinstance(e, KeyboardInterrupt):
                raise
        self.known.update(self.smallest)


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def write_report(state: Explorer, args: argparse.Namespace, out: Path, elapsed: float) -> None:
    stamp = dt.date.today().isoformat()
    raw_path = out / "results" / f"{stamp}-chaos.json"
    failures = [
        {
            "invariant": name,
            "examples_violating": state.counts[name],
            "first_seen_s": round(state.first_seen[name], 1),
            "reproduction": ex.describe(),
            "reproduction_repr": repr(ex),
            "violations": [str(v) for v in vs],
        }
        for name, (ex, vs) in sorted(state.smallest.items(), key=lambda kv: INVARIANTS.index(kv[0]))
    ]
    raw = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "build": __version__,
        "params": {"minutes": args.minutes, "seed": args.seed, "family": args.family},
        "elapsed_s": round(elapsed, 1),
        "examples": state.examples,
        "invariant_checks": state.checks,
        "violating_examples": state.violating_examples,
        "invariants": list(INVARIANTS),
        "failures": failures,
    }
    (out / "results").mkdir(parents=True, exist_ok=True)
    raw_path.write_text(json.dumps(raw, indent=1) + "\n")
    render(raw, out, raw_path)


def render(raw: dict[str, Any], out: Path, raw_path: Path) -> None:
    """Write ``out/CHAOS.md`` from a run's raw JSON."""
    params = raw["params"]
    failures = raw["failures"]
    counts = {f["invariant"]: f["examples_violating"] for f in failures}
    lines = [
        "# Chaos: randomized fault exploration",
        "",
        f"Build `{raw['build']}`, {raw['date']}, Python {raw['machine']['python']}. "
        f"`make chaos CHAOS_MINUTES={params['minutes']:g}` (family `{params['family']}`, "
        f"seed {params['seed']}): {raw['elapsed_s'] / 60:.1f} min, "
        f"**{raw['examples']} examples**, {raw['invariant_checks']} invariant checks "
        f"({len(raw['invariants'])} invariants per example), "
        f"{raw['violating_examples']} examples violated at least one. "
        f"Raw: `{_rel(raw_path)}`.",
        "",
        "Examples are drawn by `testbed/exploration.py` (`examples('all')`): session variants "
        "(`max_retry` 0/1/3, with or without `RealtimeModelFallbackAdapter` over two "
        "emulators), every fault of the emulator's vocabulary per response and per connection, "
        "and user steps. The invariants are defined in the module docstring. Counts include "
        "the examples run while shrinking; the reproduction is the smallest example seen.",
        "",
        "| invariant | examples violating | reproduction |",
        "| --- | --- | --- |",
    ]
    for name in raw["invariants"]:
        if name in counts:
            lines.append(f"| `{name}` | {counts[name]} | [below](#{name}) |")
        else:
            lines.append(f"| `{name}` | 0 | held |")
    for f in failures:
        lines += [
            "",
            f"## {f['invariant']}",
            "",
            f"{f['examples_violating']} examples; first after {f['first_seen_s']} s. "
            "Smallest reproduction:",
            "",
            "```",
            f["reproduction"],
            "```",
            "",
            "Violation:",
            "",
            *[f"- {v}" for v in f["violations"]],
        ]
    from testbed.test_exploration import FINDINGS, NOT_IN_PRISTINE_CHECK

    lines += [
        "",
        "## Named findings",
        "",
        "Each failure found so far is a named test, `testbed/test_exploration.py::test_finding`, "
        "with its shrunk example and the patch that fixed it. Every one passes in CI; the "
        "pristine check runs each on pristine upstream, where it must fail, unless the table "
        "says why not.",
        "",
        "| finding | fixed by | pristine check |",
        "| --- | --- | --- |",
    ]
    for name, (_, fixed_by) in FINDINGS.items():
        pristine = NOT_IN_PRISTINE_CHECK.get(name, "must fail there")
        lines.append(f"| `{name}` | {fixed_by} | {pristine} |")
    (out / "CHAOS.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--round-examples", type=int, default=60)
    parser.add_argument(
        "--shrink-budget", type=int, default=80, help="shrink calls per round (all bugs)"
    )
    parser.add_argument("--family", default="all", choices=["all", *exploration.FAMILIES])
    parser.add_argument("--out", type=Path, default=ROOT / "bench")
    parser.add_argument("--report-only", type=Path, help="rewrite CHAOS.md from a raw JSON")
    args = parser.parse_args()
    if args.report_only is not None:
        render(json.loads(args.report_only.read_text()), args.out, args.report_only)
        return 0

    # the engine logs every failure; the report reads the invariants, not the logs
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    t0 = time.monotonic()
    state = Explorer(
        deadline=t0 + args.minutes * 60, family=args.family, shrink_budget=args.shrink_budget
    )
    rng = random.Random(args.seed)
    rounds = 0
    while time.monotonic() < state.deadline:
        state.round(args.round_examples, rng.randrange(2**32))
        rounds += 1
        print(
            f"chaos [{(time.monotonic() - t0) / 60:5.1f} min] round {rounds}: "
            f"{state.examples} examples, violated: {dict(state.counts)}",
            file=sys.stderr,
            flush=True,
        )
    elapsed = time.monotonic() - t0
    write_report(state, args, args.out, elapsed)
    print(f"chaos: wrote bench/CHAOS.md ({state.examples} examples)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
