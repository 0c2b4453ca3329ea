#!/usr/bin/env python3
"""Side-by-side bench: pristine vs patched livekit-agents, one run, through the emulator.

Each suite runs in a child process of one build's venv (``bench/worker.py``), so a process
imports exactly one build. This orchestrator only aggregates: it writes
``bench/results/<date>-<line>.json`` (raw figures + machine info), ``bench/REPORT.md``
(tables) and ``bench/*.png`` (plots, matplotlib). Regenerate with ``make bench``; the knobs
are the flags below (``make bench BENCH_ARGS="--turns 500"``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
BUILDS = ("pristine", "patched")


def run_worker(python: str, suite: str, **params: Any) -> Any:
    """Run one suite in one build's interpreter; returns its JSON result."""
    cmd = [python, str(BENCH / "worker.py"), suite, json.dumps(params)]
    proc = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {suite} failed ({python}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


class Worker:
    """A long-lived ``worker.py serve`` process of one build: ``call(suite, **params)``."""

    def __init__(self, python: str) -> None:
        self.python = python
        self.proc = subprocess.Popen(
            [python, str(BENCH / "worker.py"), "serve"],
            cwd=ROOT,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def call(self, suite: str, **params: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"suite": suite, "params": params}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {suite} died ({self.python})")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[idx]


def bootstrap_median(
    values: list[float], *, n: int = 10000, seed: int = 0
) -> tuple[float, float, float]:
    """Median of ``values`` and its 95 % percentile-bootstrap interval (``n`` resamples)."""
    rng = random.Random(seed)
    k = len(values)
    medians = sorted(statistics.median(rng.choices(values, k=k)) for _ in range(n))
    return statistics.median(values), medians[int(0.025 * n)], medians[int(0.975 * n) - 1]


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        with open("/proc/cpuinfo") as f:
            models = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        info["cpu"] = models[0] if models else None
    except OSError:
        info["cpu"] = None
    return info


def _rel(path: Path) -> Path:
    """``path`` relative to the repository when it is inside it (for the report's links)."""
    try:
        return path.resolve().relative_to(ROOT)
    except ValueError:
        return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--line", default="1.8.9")
    parser.add_argument("--patched", default="", help="python of the patched venv")
    parser.add_argument("--pristine", default="", help="python of the pristine venv")
    parser.add_argument("--turns", type=int, default=200, help="turns per failure rate")
    parser.add_argument("--probabilities", default="0,0.1,0.3,0.5")
    parser.add_argument("--max-retry", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--recovery-samples", type=int, default=60)
    parser.add_argument("--pairs", type=int, default=30, help="A/B pairs for the happy path")
    parser.add_argument("--pair-turns", type=int, default=40, help="turns per happy-path run")
    parser.add_argument("--profile-turns", type=int, default=200, help="cProfile'd happy turns")
    parser.add_argument("--soak-sessions", type=int, default=20, help="concurrent sessions")
    parser.add_argument("--soak-turns", type=int, default=25, help="turns per soak session")
    parser.add_argument("--storm-window", type=float, default=5.0)
    parser.add_argument("--cycles", type=int, default=200, help="reconnect cycles for memory")
    parser.add_argument("--no-callgrind", action="store_true", help="skip bench/callgrind.py")
    parser.add_argument("--callgrind-reps", type=int, default=8, help="at most, until decided")
    parser.add_argument("--out", type=Path, default=BENCH)
    parser.add_argument("--report-only", type=Path, help="rewrite the report from a results JSON")
    args = parser.parse_args()

    if args.report_only is not None:
        sys.path.insert(0, str(BENCH))
        import report

        raw = args.report_only.resolve()
        report.write(json.loads(raw.read_text()), out=args.out, raw_path=_rel(raw))
        return 0

    pythons = {"pristine": args.pristine, "patched": args.patched}
    probs = [float(p) for p in args.probabilities.split(",")]
    results: dict[str, Any] = {
        "machine": machine_info(),
        "line": args.line,
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "versions": {b: run_worker(py, "version") for b, py in pythons.items()},
    }
    t0 = time.monotonic()

    def log(msg: str) -> None:
        print(f"bench [{time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    # 1. turn success under transient failure
    success: dict[str, list[dict[str, Any]]] = {b: [] for b in BUILDS}
    for p in probs:
        for b in BUILDS:
            r = run_worker(
                pythons[b], "success", p=p, turns=args.turns, max_retry=args.max_retry,
                seed=args.seed,
            )  # fmt: skip
            lo, hi = wilson(r["delivered"], r["turns"])
            r.update(rate=r["delivered"] / r["turns"], ci95=[lo, hi])
            success[b].append(r)
            log(f"success p={p} {b}: {r['delivered']}/{r['turns']}")
    results["success"] = {
        "builds": success,
        "theory": [{"p": p, "rate": 1 - p ** (args.max_retry + 1)} for p in probs],
    }

    # 2. recovery overhead (patched only: pristine never re-issues)
    rec = run_worker(pythons["patched"], "recovery", samples=args.recovery_samples)
    for key in ("to_create_ms", "to_audio_ms"):
        extra = [v - rec["backoff_ms"] for v in rec[key]]
        rec[f"{key}_beyond_backoff"] = {"p50": pct(extra, 50), "p95": pct(extra, 95)}
    if rec.get("timer_overshoot_ms"):
        late = rec["timer_overshoot_ms"]
        rec["timer_overshoot"] = {"p50": pct(late, 50), "p95": pct(late, 95)}
    results["recovery"] = rec
    log(f"recovery: {rec['to_create_ms_beyond_backoff']}")

    # 3. happy-path cost, paired A/B runs in alternation so drift cancels
    # one warm worker per build, so that a pair costs its turns and not two interpreter starts
    workers = {b: Worker(pythons[b]) for b in BUILDS}
    pairs = []
    try:
        for b in BUILDS:  # a first, discarded run per worker: imports, caches, first connection
            workers[b].call("happy", turns=5)
        for i in range(args.pairs):
            order = BUILDS if i % 2 == 0 else BUILDS[::-1]
            pair = {b: workers[b].call("happy", turns=args.pair_turns) for b in order}
            pairs.append(pair)
            if (i + 1) % 10 == 0 or i + 1 == args.pairs:
                log(f"happy pair {i + 1}/{args.pairs}")
    finally:
        for w in workers.values():
            w.close()

    def ratios(metric: str) -> list[float]:
        return [p["patched"][metric] / p["pristine"][metric] for p in pairs]

    cpu_med, cpu_lo, cpu_hi = bootstrap_median(ratios("cpu_s_per_turn"), seed=args.seed)
    wall_med, wall_lo, wall_hi = bootstrap_median(ratios("wall_s_per_turn"), seed=args.seed)
    results["happy"] = {
        "pairs": pairs,
        "cpu_ratio_median": cpu_med,
        "cpu_ratio_ci95": [cpu_lo, cpu_hi],
        "wall_ratio_median": wall_med,
        "wall_ratio_ci95": [wall_lo, wall_hi],
        "alloc_bytes_per_turn": {
            b: statistics.median(p[b]["alloc_bytes_per_turn"] for p in pairs) for b in BUILDS
        },
    }

    log(f"happy CPU ratio {cpu_med:.3f} [{cpu_lo:.3f}, {cpu_hi:.3f}]")

    # 3b. where the patched turn spends more: cProfile of both builds, per function per turn
    results["profile"] = {
        b: run_worker(pythons[b], "profile", turns=args.profile_turns) for b in BUILDS
    }
    log("profile done")

    # 3c'. the happy turn in instructions under callgrind (bench/callgrind.py): decides the goal
    if not args.no_callgrind:
        sys.path.insert(0, str(BENCH))
        import callgrind

        results["callgrind"] = callgrind.measure(
            pythons, out=ROOT / "build" / "callgrind", max_reps=args.callgrind_reps, log=log
        )

    # 3c. soak: N concurrent sessions in one process, seeded realistic faults
    results["soak"] = {
        b: run_worker(
            pythons[b],
            "soak",
            sessions=args.soak_sessions,
            turns=args.soak_turns,
            seed=args.seed,
        )  # fmt: skip
        for b in BUILDS
    }
    log("soak done")

    # 4. reconnect storm under permanent failure, and memory per reconnect cycle
    results["storm"] = {
        b: run_worker(pythons[b], "storm", window=args.storm_window, max_retry=args.max_retry)
        for b in BUILDS
    }
    log("storm done")
    results["memory"] = {b: run_worker(pythons[b], "memory", cycles=args.cycles) for b in BUILDS}
    log("memory done")

    # 5. fault matrix, from the scenarios the tests use
    results["matrix"] = {b: run_worker(pythons[b], "matrix") for b in BUILDS}
    log("matrix done")

    # 6. a long session: the next-reply delay after an interruption, early and late, and the
    # connections each server expiry costs
    results["long_session"] = {b: run_worker(pythons[b], "long_session") for b in BUILDS}
    log(f"long session: {results['long_session']['patched']['next_reply_delay_ms']}")
    results["elapsed_s"] = time.monotonic() - t0

    (args.out / "results").mkdir(parents=True, exist_ok=True)
    stamp = dt.date.today().isoformat()
    raw = args.out / "results" / f"{stamp}-{args.line}.json"
    raw.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    sys.path.insert(0, str(BENCH))
    import report

    report.write(results, out=args.out, raw_path=_rel(raw))
    log(f"wrote {_rel(raw)}, REPORT.md and plots in {_rel(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
