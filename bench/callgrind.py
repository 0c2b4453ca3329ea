"""Happy-path cost in instructions: both builds' turn counted under callgrind.

Timing one happy turn on a shared machine gives an interval wider than a 2 % effect. This
module counts the instructions a turn executes instead:

- The emulator runs in its own process (``python -m testbed.realtime_emulator``), outside
  valgrind, so only the agent side (``AgentSession`` on ``openai.realtime.RealtimeModel``, the
  harness' recording sinks) is counted.
- Each measured run is ``valgrind --tool=callgrind <build's python> bench/callgrind.py client
  --turns N``: start-up, imports, session start, 3 warm-up turns, then N happy turns. A short
  and a long run are subtracted, which removes everything but the ``long - short`` turns:
  ``per turn = (I(long) - I(short)) / (long - short)``.
- Event-loop timing still moves a turn's count by a few percent (how often the loop wakes,
  polls, times out) and str hashing (``PYTHONHASHSEED``, the same for both builds within a
  repetition), so the measurement is repeated, pristine and patched in alternation, and the
  goal (patched / pristine <= ``--goal``) is judged on a 95 % interval of the ratio of the mean
  counts (delta method, Welch's t): ``yes`` when the interval's upper end is at or below the
  goal, ``no`` when its lower end is above it; otherwise another repetition, up to
  ``--max-reps``.

valgrind comes from Debian's package: :func:`ensure_valgrind` installs it with apt-get when it
is missing and it can (root), and otherwise the figure is skipped with the reason.

Usage (``bench/run.py`` calls :func:`measure`; alone)::

    python bench/callgrind.py measure --patched .venv/bin/python \\
        --pristine .venv-pristine/bin/python --out build/callgrind
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUILDS = ("pristine", "patched")
_TOTALS_RE = re.compile(r"^(?:summary|totals):\s+(\d+)", re.M)


# --- the counted process -------------------------------------------------------------------


def _start_instrumentation() -> None:
    """Switch callgrind's instrumentation on (``CALLGRIND_START_INSTRUMENTATION``).

    The run starts with ``--instr-atstart=no`` when the helper library could be built, so the
    interpreter's start-up, the imports and the warm-up turns run at valgrind's uninstrumented
    speed; what stays counted before the first measured turn and after the last one (turning
    instrumentation on, closing the session, exiting) is the same in the short and the long
    run and cancels in their difference.
    """
    lib = os.environ.get("RTRETRY_CG_LIB")
    if lib:
        import ctypes

        ctypes.CDLL(lib).rtretry_cg_start()


async def _client(http_url: str, api_key: str, turns: int, warmup: int) -> int:
    """Run ``warmup + turns`` happy turns through an AgentSession on the emulator at
    ``http_url``; return how many reached the audio sink."""
    from types import SimpleNamespace

    sys.path.insert(0, str(ROOT))
    from testbed.harness import SessionHarness

    # callgrind slows the process ~50x: no timeout may fire on a healthy turn
    emu: Any = SimpleNamespace(http_url=http_url, api_key=api_key)
    delivered = 0
    async with SessionHarness(emu, timeout=300.0, retry_interval=5.0) as h:
        for i in range(warmup + turns):
            if i == warmup:
                _start_instrumentation()
            before = len(h.audio.frames)
            handle = h.session.generate_reply(instructions="answer the user")
            await handle.wait_for_playout()
            delivered += len(h.audio.frames) > before and handle.exception() is None
    return delivered


def client_main(args: argparse.Namespace) -> int:
    import logging

    logging.getLogger("livekit.agents").setLevel(logging.CRITICAL)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    delivered = asyncio.run(_client(args.http_url, args.api_key, args.turns, args.warmup))
    total = args.warmup + args.turns
    print(json.dumps({"turns": args.turns, "delivered": delivered, "of": total}), flush=True)
    return 0 if delivered == total else 1


# --- valgrind ------------------------------------------------------------------------------


def ensure_valgrind() -> str | None:
    """valgrind's path, installing Debian's package when it is missing; None when it cannot.

    Returns:
        The path of ``valgrind``, or None (then :func:`skip_reason` says why).
    """
    global _SKIP_REASON
    found = shutil.which("valgrind")
    if found:
        return found
    if shutil.which("apt-get") is None:
        _SKIP_REASON = "valgrind is not installed and there is no apt-get to install it"
        return None
    if os.geteuid() != 0:
        _SKIP_REASON = "valgrind is not installed; `apt-get install -y valgrind` needs root"
        return None
    print("callgrind: installing valgrind (apt-get)", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "valgrind"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            _SKIP_REASON = f"`{' '.join(cmd)}` failed: " + " / ".join(tail)
            return None
    return shutil.which("valgrind")


_SKIP_REASON = ""


def skip_reason() -> str:
    return _SKIP_REASON


_HELPER_C = """
#include <valgrind/callgrind.h>
void rtretry_cg_start(void) { CALLGRIND_START_INSTRUMENTATION; CALLGRIND_ZERO_STATS; }
"""


def build_helper(out: Path) -> Path | None:
    """Compile the one-function library that turns instrumentation on from Python (ctypes).

    Returns:
        The library, or None without a C compiler or valgrind's headers (then every run is
        instrumented from its start: the same figure, several times slower).
    """
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not Path("/usr/include/valgrind/callgrind.h").exists():
        return None
    out.mkdir(parents=True, exist_ok=True)
    src, lib = out / "cgctl.c", out / "libcgctl.so"
    src.write_text(_HELPER_C)
    proc = subprocess.run([cc, "-O1", "-shared", "-fPIC", "-o", str(lib), str(src)])
    return lib if proc.returncode == 0 else None


# --- the measurement -----------------------------------------------------------------------


class Emulator:
    """``python -m testbed.realtime_emulator`` in its own process (never under valgrind)."""

    def __init__(self, python: str) -> None:
        self.proc = subprocess.Popen(
            [python, "-m", "testbed.realtime_emulator", "--max-seconds", "7200"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        info = json.loads(self.proc.stdout.readline())
        self.http_url: str = info["http_url"]
        self.api_key: str = info["api_key"]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # the emulator exits when its stdin closes
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def count_run(
    valgrind: str,
    python: str,
    emu: Emulator,
    turns: int,
    out: Path,
    lib: Path | None,
    hash_seed: int = 0,
) -> int:
    """Instructions (Ir) callgrind collected in one client run of ``turns`` measured turns.

    ``hash_seed`` is the run's ``PYTHONHASHSEED``: str hashes decide dict and set layouts and so
    move the count a little; each repetition gives both builds the same seed, and the seeds
    change from one repetition to the next.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}"]
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    if lib is not None:
        cmd.append("--instr-atstart=no")
        env["RTRETRY_CG_LIB"] = str(lib)
    cmd += [python, str(Path(__file__).resolve()), "client"]
    cmd += ["--http-url", emu.http_url, "--api-key", emu.api_key, "--turns", str(turns)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"callgrind run failed ({proc.returncode}): {proc.stdout[-500:]}{proc.stderr[-1500:]}"
        )
    m = _TOTALS_RE.search(out.read_text(errors="replace"))
    if m is None:
        raise RuntimeError(f"no totals in {out}")
    return int(m[1])


# two-sided 95 % quantiles of Student's t by degrees of freedom (a fractional df rounds down)
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}  # fmt: skip


def _t975(df: float) -> float:
    return next((q for d, q in sorted(_T975.items(), reverse=True) if d <= df), _T975[1])


def ratio_interval(num: list[float], den: list[float]) -> tuple[float, float, float]:
    """mean(num) / mean(den) with a 95 % interval: delta method, Welch's degrees of freedom.

    With a handful of repetitions a bootstrap interval is too narrow (3 values resample to 10
    distinct means); Student's t with Welch-Satterthwaite's df is the honest small-sample one.
    """
    mn, md = statistics.fmean(num), statistics.fmean(den)
    ratio = mn / md
    vn = statistics.variance(num) / len(num) / mn**2  # squared relative standard errors
    vd = statistics.variance(den) / len(den) / md**2
    if vn + vd == 0:
        return ratio, ratio, ratio
    df = (vn + vd) ** 2 / (vn**2 / (len(num) - 1) + vd**2 / (len(den) - 1))
    half = _t975(df) * ratio * (vn + vd) ** 0.5
    return ratio, ratio - half, ratio + half


def verdict(lo: float, hi: float, goal: float) -> str:
    if hi <= goal:
        return "yes"
    if lo > goal:
        return "no"
    return "undecided"


def measure(
    pythons: dict[str, str],
    *,
    out: Path,
    short: int = 5,
    long: int = 85,
    min_reps: int = 4,
    max_reps: int = 10,
    goal: float = 1.02,
    emulator_python: str | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Instructions per happy-path turn of each build, their ratio and the goal's verdict.

    Args:
        pythons: ``{"pristine": <python>, "patched": <python>}``.
        out: folder for the callgrind output files (kept for ``callgrind_annotate``).
        short: measured turns of the short run.
        long: measured turns of the long run.
        min_reps: repetitions (a short and a long run of each build) before judging.
        max_reps: repetitions at most; the verdict may stay ``undecided``.
        goal: the ratio patched / pristine the goal allows.
        emulator_python: the python that runs the emulator (default: the patched build's).
        log: ``log(message)`` for progress.

    Returns:
        The result (``skipped`` with the reason when valgrind is unavailable).
    """
    say = log or (lambda msg: print(f"callgrind: {msg}", file=sys.stderr, flush=True))
    valgrind = ensure_valgrind()
    if valgrind is None:
        say(f"skipped: {skip_reason()}")
        return {"skipped": skip_reason()}
    version = subprocess.run([valgrind, "--version"], capture_output=True, text=True).stdout
    lib = build_helper(out)
    emu = Emulator(emulator_python or pythons["patched"])
    per_turn: dict[str, list[float]] = {b: [] for b in BUILDS}
    runs: list[dict[str, Any]] = []
    point = lo = hi = float("nan")
    decision = "undecided"
    t0 = time.monotonic()
    try:
        for rep in range(max_reps):
            order = BUILDS if rep % 2 == 0 else BUILDS[::-1]
            for build in order:
                counts = {}
                for turns in (short, long):
                    path = out / f"callgrind.{build}.{rep}.{turns}.out"
                    counts[turns] = count_run(
                        valgrind, pythons[build], emu, turns, path, lib, hash_seed=rep + 1
                    )
                value = (counts[long] - counts[short]) / (long - short)
                per_turn[build].append(value)
                runs.append(
                    {
                        "rep": rep,
                        "build": build,
                        "hash_seed": rep + 1,
                        "ir": counts,
                        "ir_per_turn": value,
                    }
                )
                say(f"rep {rep + 1} {build}: {value / 1e6:.2f} M instructions per turn")
            if rep + 1 >= min_reps:
                point, lo, hi = ratio_interval(per_turn["patched"], per_turn["pristine"])
                decision = verdict(lo, hi, goal)
                say(f"ratio {point:.4f} [{lo:.4f}, {hi:.4f}] after {rep + 1} reps: {decision}")
                if decision != "undecided":
                    break
    finally:
        emu.close()
    return {
        "tool": version.strip(),
        "instrumentation": "from the first measured turn" if lib else "whole process",
        "short_turns": short,
        "long_turns": long,
        "reps": len(per_turn["patched"]),
        "ir_per_turn": {
            b: {
                "median": statistics.median(v),
                "min": min(v),
                "max": max(v),
                "cv": statistics.stdev(v) / statistics.fmean(v) if len(v) > 1 else 0.0,
                "samples": v,
            }
            for b, v in per_turn.items()
        },
        "ratio": point,
        "ratio_ci95": [lo, hi],
        "goal": goal,
        "verdict": decision,
        "runs": runs,
        "elapsed_s": time.monotonic() - t0,
    }


# --- the report ----------------------------------------------------------------------------

HEADLINE = "happy-path CPU in instructions per turn (callgrind), patched/pristine"


def headline_cells(result: dict[str, Any]) -> list[str]:
    """The headline row of bench/REPORT.md: figure, pristine, patched, goal, met."""
    if "skipped" in result:
        return [HEADLINE, "", f"skipped: {result['skipped']}", "", "not measured"]
    ir = result["ir_per_turn"]
    lo, hi = result["ratio_ci95"]
    met = {"yes": "yes", "no": "**no**"}.get(result["verdict"], "undecided")
    return [
        f"{HEADLINE}, mean of {result['reps']} reps (95 % interval)",
        f"{statistics.fmean(ir['pristine']['samples']) / 1e6:.2f} M",
        f"{statistics.fmean(ir['patched']['samples']) / 1e6:.2f} M; "
        f"{result['ratio']:.4f} [{lo:.4f}, {hi:.4f}]",
        f"<= {result['goal']} (upper end of the 95 % interval)",
        met,
    ]


def report_lines(result: dict[str, Any], timed: dict[str, Any] | None = None) -> list[str]:
    """The section of bench/REPORT.md: method, per-build counts, ratio, verdict."""
    out = ["", "### Instructions per happy turn (callgrind)", ""]
    if "skipped" in result:
        return out + [f"Skipped: {result['skipped']}."]
    ir = result["ir_per_turn"]
    lo, hi = result["ratio_ci95"]
    out += [
        f"`bench/callgrind.py` ({result['tool']}): the emulator in its own process, outside "
        "valgrind; each counted run is one client process (an `AgentSession` on "
        "`openai.realtime.RealtimeModel`, 3 warm-up turns, then N happy turns), instrumented "
        f"{result['instrumentation']}. Instructions per turn = (I(N={result['long_turns']}) - "
        f"I(N={result['short_turns']})) / {result['long_turns'] - result['short_turns']}, so "
        "start-up, imports, session start and close cancel. Pristine and patched alternate, "
        "each repetition with its own `PYTHONHASHSEED` for both builds; "
        f"{result['reps']} repetitions, stopped as soon as the interval decided the goal.",
        "",
        _md_row(["build", "M instructions per turn (mean)", "median", "min", "max", "CV"]),
        _md_row(["---"] * 6),
    ]
    for build in BUILDS:
        v = ir[build]
        out.append(
            _md_row(
                [
                    build,
                    f"{statistics.fmean(v['samples']) / 1e6:.3f}",
                    f"{v['median'] / 1e6:.3f}",
                    f"{v['min'] / 1e6:.3f}",
                    f"{v['max'] / 1e6:.3f}",
                    f"{v['cv'] * 100:.2f} %",
                ]
            )
        )
    verdict_text = {
        "yes": "**yes**: the whole interval is at or below the goal",
        "no": "**no**: the whole interval is above the goal",
    }.get(result["verdict"], "undecided: the interval straddles the goal")
    out += [
        "",
        f"Ratio patched/pristine (mean instructions per turn): **{result['ratio']:.4f}**, "
        f"95 % interval [{lo:.4f}, {hi:.4f}] (delta method, Student's t with Welch's degrees "
        f"of freedom over the repetitions). Goal <= {result['goal']}: {verdict_text}.",
    ]
    if timed is not None and "cpu_ratio_ci95" in timed:
        tlo, thi = timed["cpu_ratio_ci95"]
        out.append(
            f"The timed CPU ratio of this report is {timed['cpu_ratio_median']:.3f} "
            f"[{tlo:.3f}, {thi:.3f}]: the instruction count's interval is "
            f"{(thi - tlo) / max(hi - lo, 1e-9):.0f} times narrower."
        )
    return out


def _md_row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def splice(raw: Path, result: dict[str, Any], note: str) -> None:
    """Add a callgrind result to an earlier bench run's raw results (then ``run.py
    --report-only`` rewrites REPORT.md from them), with a note saying so."""
    data = json.loads(raw.read_text())
    data["callgrind"] = result
    data["remeasured"] = note
    raw.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def _main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_client = sub.add_parser("client", help="the counted process (run under valgrind)")
    p_client.add_argument("--http-url", required=True)
    p_client.add_argument("--api-key", required=True)
    p_client.add_argument("--turns", type=int, required=True)
    p_client.add_argument("--warmup", type=int, default=3)
    p_measure = sub.add_parser("measure", help="both builds, until the goal is decided")
    p_measure.add_argument("--patched", required=True, help="python of the patched venv")
    p_measure.add_argument("--pristine", required=True, help="python of the pristine venv")
    p_measure.add_argument("--out", type=Path, default=ROOT / "build" / "callgrind")
    p_measure.add_argument("--short", type=int, default=5)
    p_measure.add_argument("--long", type=int, default=85)
    p_measure.add_argument("--min-reps", type=int, default=4)
    p_measure.add_argument("--max-reps", type=int, default=10)
    p_measure.add_argument("--json", type=Path, help="write the result here")
    p_splice = sub.add_parser("splice", help="add a measured result to a bench run's raw JSON")
    p_splice.add_argument("--result", type=Path, required=True, help="what `measure` wrote")
    p_splice.add_argument("--raw", type=Path, required=True, help="bench/results/<run>.json")
    p_splice.add_argument("--note", required=True, help="the report's note on the splice")
    args = parser.parse_args()
    if args.cmd == "client":
        return client_main(args)
    if args.cmd == "splice":
        splice(args.raw, json.loads(args.result.read_text()), args.note)
        return 0
    result = measure(
        {"pristine": args.pristine, "patched": args.patched},
        out=args.out,
        short=args.short,
        long=args.long,
        min_reps=args.min_reps,
        max_reps=args.max_reps,
    )
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
