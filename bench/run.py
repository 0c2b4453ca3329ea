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
    parser.add_argument("--pairs", type=int, default=6, help="A/B pairs for the happy path")
    parser.add_argument("--pair-turns", type=int, default=40, help="turns per happy-path run")
    parser.add_argument("--storm-window", type=float, default=5.0)
    parser.add_argument("--cycles", type=int, default=200, help="reconnect cycles for memory")
    parser.add_argument("--out", type=Path, default=BENCH)
    parser.add_argument("--report-only", type=Path, help="rewrite the report from a results JSON")
    args = parser.parse_args()

    if args.report_only is not None:
        sys.path.insert(0, str(BENCH))
        import report

        raw = args.report_only.resolve()
        report.write(json.loads(raw.read_text()), out=args.out, raw_path=raw.relative_to(ROOT))
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
    results["recovery"] = rec
    log(f"recovery: {rec['to_create_ms_beyond_backoff']}")

    # 3. happy-path cost, paired A/B runs in alternation so drift cancels
    pairs = []
    for i in range(args.pairs):
        pair = {b: run_worker(pythons[b], "happy", turns=args.pair_turns) for b in BUILDS}
        pairs.append(pair)
        log(f"happy pair {i + 1}/{args.pairs}")

    def ratio(metric: str) -> float:
        return statistics.median(p["patched"][metric] / p["pristine"][metric] for p in pairs)

    results["happy"] = {
        "pairs": pairs,
        "cpu_ratio_median": ratio("cpu_s_per_turn"),
        "wall_ratio_median": ratio("wall_s_per_turn"),
        "alloc_bytes_per_turn": {
            b: statistics.median(p[b]["alloc_bytes_per_turn"] for p in pairs) for b in BUILDS
        },
    }

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
    results["elapsed_s"] = time.monotonic() - t0

    (args.out / "results").mkdir(parents=True, exist_ok=True)
    stamp = dt.date.today().isoformat()
    raw = args.out / "results" / f"{stamp}-{args.line}.json"
    raw.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    sys.path.insert(0, str(BENCH))
    import report

    report.write(results, out=args.out, raw_path=raw.relative_to(ROOT))
    log(f"wrote {raw.relative_to(ROOT)}, bench/REPORT.md and plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
