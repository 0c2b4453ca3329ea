"""Turns the bench's raw results into bench/REPORT.md and the PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import callgrind  # bench/callgrind.py: the happy-path instruction count
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

GOALS = {
    "success_p03": "patched >= 99 %, pristine ~ 70 %",
    "recovery_p50": "<= 20 ms beyond the backoff",
    "recovery_p95": "< 2 ms beyond the backoff",
    "cpu_ratio": "<= 1.02 (upper end of the 95 % interval)",
    "attempts": "= max_retry + 1",
    "memory": "<= 256 B per cycle patched, outside the session record",
    "soak": "0 invariant violations",
}


def _fmt(v: float | None, unit: str = "", nd: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{nd}f}{unit}"


def _plot_success(results: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    theory = results["success"]["theory"]
    ax.plot([t["p"] for t in theory], [t["rate"] * 100 for t in theory], "k--", label="theory")
    for build, style in (("pristine", "o-"), ("patched", "s-")):
        rows = results["success"]["builds"][build]
        xs = [r["p"] for r in rows]
        ys = [r["rate"] * 100 for r in rows]
        err = [
            [y - r["ci95"][0] * 100 for y, r in zip(ys, rows, strict=True)],
            [r["ci95"][1] * 100 - y for y, r in zip(ys, rows, strict=True)],
        ]
        ax.errorbar(xs, ys, yerr=err, fmt=style, capsize=3, label=build)
    mr = results["params"]["max_retry"]
    ax.set(
        xlabel="injected pre-output failure probability p",
        ylabel="turns with a delivered reply (%)",
        title=f"Turn success, max_retry={mr} (95 % Wilson intervals)",
        ylim=(0, 105),
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_memory(results: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for build, color in (("pristine", "tab:blue"), ("patched", "tab:orange")):
        mem = results["memory"][build]
        ax.plot(
            mem["cycles"],
            [b / 1024 for b in mem["retained_bytes"]],
            "-",
            color=color,
            label=f"{build}: outside the session record",
        )
        if "record_bytes" in mem:
            ax.plot(
                mem["cycles"],
                [b / 1024 for b in mem["record_bytes"]],
                "--",
                color=color,
                label=f"{build}: session record (_recorded_events)",
            )
    ax.set(
        xlabel="reconnect cycle",
        ylabel="retained since cycle 0 (KiB, tracemalloc)",
        title="Memory retained across reconnect cycles",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_latency(results: dict[str, Any], path: Path) -> None:
    soak = results["soak"]
    fig, ax = plt.subplots(figsize=(6, 4))
    data = [[v * 1000 for v in soak[b]["latency_s"]] for b in ("pristine", "patched")]
    ax.boxplot(data, whis=(1, 99), showfliers=True, flierprops={"markersize": 2})
    ax.set_xticks([1, 2], ["pristine", "patched"])
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    s = soak["patched"]
    ax.set(
        ylabel="turn latency (ms, log scale)",
        title=f"Soak: {s['sessions']} concurrent sessions x {s['turns_per_session']} turns\n"
        "box: p25-p75, line: median, whiskers: p1-p99",
    )
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, -(-len(ordered) * q // 100) - 1))]


def _profile_diff(results: dict[str, Any], top: int = 12) -> list[dict[str, Any]]:
    """Functions whose own time per turn is higher on patched, keyed by file and name."""

    def by_key(build: str) -> dict[str, dict[str, float]]:
        acc: dict[str, dict[str, float]] = {}
        for r in results["profile"][build]["functions"]:
            file_line, name = r["function"].rsplit("(", 1)
            key = f"{file_line.rsplit(':', 1)[0]} ({name}"
            a = acc.setdefault(key, {"own": 0.0, "cum": 0.0, "calls": 0.0})
            a["own"] += r["own_ms_per_turn"]
            a["cum"] += r["cum_ms_per_turn"]
            a["calls"] += r["calls_per_turn"]
        return acc

    pr, pa = by_key("pristine"), by_key("patched")
    rows = []
    for key, a in pa.items():
        b = pr.get(key, {"own": 0.0, "cum": 0.0, "calls": 0.0})
        rows.append(
            {
                "function": key,
                "own_patched": a["own"],
                "own_pristine": b["own"],
                "delta_own": a["own"] - b["own"],
                "cum_patched": a["cum"],
                "calls_patched": a["calls"],
                "calls_pristine": b["calls"],
                "new": key not in pr,
            }
        )
    rows.sort(key=lambda r: -r["delta_own"])
    return rows[:top]


def _profile_new(results: dict[str, Any], top: int = 10) -> list[dict[str, Any]]:
    """Patched-only functions (by file and name), by cumulative time per turn."""
    names = {r["function"].rsplit(":", 1)[0] + r["function"].rsplit("(", 1)[1]
             for r in results["profile"]["pristine"]["functions"]}  # fmt: skip
    rows = [
        r
        for r in results["profile"]["patched"]["functions"]
        if r["function"].rsplit(":", 1)[0] + r["function"].rsplit("(", 1)[1] not in names
    ]
    rows.sort(key=lambda r: -r["cum_ms_per_turn"])
    return rows[:top]


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def write(results: dict[str, Any], *, out: Path, raw_path: Path) -> None:
    """Write REPORT.md and the plots next to it."""
    _plot_success(results, out / "success_rate.png")
    _plot_memory(results, out / "memory_per_cycle.png")
    if "soak" in results:
        _plot_latency(results, out / "soak_latency.png")

    m = results["machine"]
    mr = results["params"]["max_retry"]
    succ = {
        b: {r["p"]: r for r in results["success"]["builds"][b]}
        for b in results["success"]["builds"]
    }
    rec = results["recovery"]
    happy = results["happy"]
    storm = results["storm"]
    mem = results["memory"]

    def s_at(build: str, p: float) -> str:
        r = succ[build].get(p)
        if r is None:
            return "n/a"
        lo, hi = r["ci95"]
        return f"{r['rate'] * 100:.1f} % [{lo * 100:.1f}, {hi * 100:.1f}]"

    lines = [
        "# Bench: pristine vs patched livekit-agents " + results["line"],
        "",
        f"Machine: {m.get('cpu')}, {m['cpus']} cores, Python {m['python']}, {m['platform']}.",
        f"Date: {m['date']}. Run time: {results['elapsed_s']:.0f} s. Raw figures: `{raw_path}`.",
        f"Builds: pristine `{results['versions']['pristine']}`, patched "
        f"`{results['versions']['patched']}`. Regenerate with `make bench`.",
        *(["", f"Note: {results['remeasured']}."] if results.get("remeasured") else []),
        "",
        "## Headline",
        "",
        _row(["figure", "pristine", "patched", "goal", "met"]),
        _row(["---"] * 5),
    ]
    p03 = succ["patched"].get(0.3)
    met_s = p03 is not None and p03["rate"] >= 0.99
    lines.append(
        _row(
            [
                "turn success at p=0.3",
                s_at("pristine", 0.3),
                s_at("patched", 0.3),
                GOALS["success_p03"],
                "yes" if met_s else "**no**",
            ]
        )  # fmt: skip
    )
    # p50 and p95 of the same figure, each against its own goal
    for q, goal, met in (("p50", "recovery_p50", lambda v: v <= 20),
                         ("p95", "recovery_p95", lambda v: v < 2)):  # fmt: skip
        r = rec["to_create_ms_beyond_backoff"][q]
        lines.append(
            _row(
                [
                    f"recovery overhead {q} beyond backoff (to re-issued create)",
                    "no retry",
                    _fmt(r, " ms"),
                    GOALS[goal],
                    "yes" if r is not None and met(r) else "**no**",
                ]
            )
        )
    cpu = happy["cpu_ratio_median"]
    cpu_lo, cpu_hi = happy.get("cpu_ratio_ci95", [cpu, cpu])
    lines.append(
        _row(
            [
                f"happy-path CPU per turn, patched/pristine (median of {len(happy['pairs'])} "
                "pairs, bootstrap 95 % interval)",
                "1",
                f"{cpu:.3f} [{cpu_lo:.3f}, {cpu_hi:.3f}]",
                GOALS["cpu_ratio"],
                "yes" if cpu_hi <= 1.02 else ("undecided" if cpu_lo <= 1.02 else "**no**"),
            ]
        )  # fmt: skip
    )
    if "callgrind" in results:
        lines.append(_row(callgrind.headline_cells(results["callgrind"])))
    for mode in storm["patched"]:
        pr, pa = storm["pristine"][mode], storm["patched"][mode]
        expected = 1 if mode == "reject_401" else mr + 1
        lines.append(
            _row(
                [
                    f"connection attempts, permanent `{mode}`",
                    f"{pr['connections']} in {pr['window_s']:.0f} s"
                    + ("" if pr["gave_up_s"] else ", never gave up"),
                    f"{pa['connections']}",
                    f"= {expected}",
                    "yes" if pa["connections"] == expected else "**no**",
                ]
            )  # fmt: skip
        )
    other = mem["patched"]["bytes_per_cycle"]
    lines.append(
        _row(
            [
                "memory retained per reconnect cycle, outside the session record",
                f"{mem['pristine']['bytes_per_cycle']:.0f} B",
                f"{other:.0f} B",
                GOALS["memory"],
                "yes" if other <= 256 else "**no**",
            ]
        )  # fmt: skip
    )
    if "record_bytes_per_cycle" in mem["patched"]:
        heavy = mem["patched"]["record_heavy_refs"]
        lines.append(
            _row(
                [
                    "session record growth per reconnect cycle (tracebacks/frames/sockets in it)",
                    f"{mem['pristine']['record_bytes_per_cycle']:.0f} B "
                    f"({', '.join(mem['pristine']['record_heavy_refs']) or 'none'})",
                    f"{mem['patched']['record_bytes_per_cycle']:.0f} B "
                    f"({', '.join(heavy) or 'none'})",
                    "reported; no traceback, frame or socket",
                    "yes" if not heavy else "**no**",
                ]
            )  # fmt: skip
        )
    soak = results.get("soak")
    if soak is not None:
        viol = len(soak["patched"]["violations"])
        lines.append(
            _row(
                [
                    "soak invariant violations",
                    str(len(soak["pristine"]["violations"])),
                    str(viol),
                    GOALS["soak"],
                    "yes" if viol == 0 else "**no**",
                ]
            )  # fmt: skip
        )

    missed = []
    # the instruction count, when it decided, settles the CPU goal the timing left open
    cg_verdict = results.get("callgrind", {}).get("verdict")
    if cg_verdict == "no":
        figure = callgrind.headline_cells(results["callgrind"])[2]
        missed.append(f"- Happy-path CPU in instructions per turn: {figure}, above 1.02.")
    if cpu_hi > 1.02 and cg_verdict not in ("yes", "no"):
        missed.append(
            f"- Happy-path CPU ratio {cpu:.3f}, 95 % interval [{cpu_lo:.3f}, {cpu_hi:.3f}]: "
            "the upper end is above 1.02"
            + (", so the goal is not shown to be met" if cpu_lo <= 1.02 else ", missed")
            + ". See the profile below for what the patched turn does more."
        )
    if other > 256:
        missed.append(
            f"- Memory outside the session record: {other:.0f} B per reconnect cycle > 256 B."
        )
    if soak is not None and soak["patched"]["violations"]:
        missed.append(
            f"- Soak: {len(soak['patched']['violations'])} invariant violations on patched "
            "(listed in the soak section)."
        )
    if missed:
        lines += ["", "Goals missed on this run:", "", *missed]

    lines += [
        "",
        f"## Turn success under transient failure (max_retry={mr}, "
        f"{results['params']['turns']} turns per p, seed {results['params']['seed']})",
        "",
        "Each turn's responses fail before any output with probability p (seeded RNG). A turn "
        "succeeds when its reply reached the audio sink. Theory: 1 - p^(max_retry+1).",
        "",
        _row(["p", "pristine", "patched", "theory"]),
        _row(["---"] * 4),
    ]
    for t in results["success"]["theory"]:
        p = t["p"]
        lines.append(_row([p, s_at("pristine", p), s_at("patched", p), f"{t['rate'] * 100:.1f} %"]))
    lines += ["", "![success rate](success_rate.png)", ""]

    lines += [
        "## Recovery overhead",
        "",
        f"A reply whose first response fails before output ({rec['samples']} samples). Time "
        f"from the failed `response.done` (sent by the emulator) to the re-issued "
        f"`response.create` (received by it), and to the first audio frame of the recovered "
        f"reply at the sink, minus the configured backoff ({rec['backoff_ms']:.0f} ms). The "
        "physical floor is the backoff plus one loopback round trip "
        f"(measured: {_fmt(rec.get('loopback_rtt_ms'), ' ms', 2)}).",
        "",
        _row(["interval", "p50 beyond backoff", "p95 beyond backoff"]),
        _row(["---"] * 3),
    ]
    for key, name in (("to_create_ms", "failed done -> re-issued create"),
                      ("to_audio_ms", "failed done -> first recovered audio frame")):  # fmt: skip
        b = rec[f"{key}_beyond_backoff"]
        lines.append(_row([name, _fmt(b["p50"], " ms"), _fmt(b["p95"], " ms")]))
    if (timer := rec.get("timer_overshoot")) is not None:
        lines.append(
            _row(
                [
                    "floor: a bare `asyncio.sleep` of the backoff in the same process",
                    _fmt(timer["p50"], " ms", 2),
                    _fmt(timer["p95"], " ms", 2),
                ]
            )
        )
        lines += [
            "",
            "The backoff counts from the failure (`GenerationDone.ended_at`), so unwinding the "
            "failed response happens during the wait. What remains beyond it is the event loop's "
            "own timer (the last row: epoll waits in whole milliseconds, and the machine adds its "
            "wake-up latency), the failed `response.done` reaching the engine, and the new "
            "request being built and written. `bench/recovery_profile.py` splits it stage by "
            "stage.",
        ]

    lines += [
        "",
        "## Happy-path cost (p = 0)",
        "",
        f"{len(happy['pairs'])} pairs of runs in alternation (pristine first in even pairs, "
        "patched first in odd ones; one warm worker process per build), "
        f"{results['params']['pair_turns']} turns each; ratios are medians over pairs.",
        "",
        _row(["figure", "pristine", "patched", "ratio"]),
        _row(["---"] * 4),
    ]
    for metric, name, scale, unit in (
        ("cpu_s_per_turn", "CPU per turn", 1000, " ms"),
        ("wall_s_per_turn", "wall latency per turn", 1000, " ms"),
    ):
        pr = sorted(p["pristine"][metric] for p in happy["pairs"])[len(happy["pairs"]) // 2]
        pa = sorted(p["patched"][metric] for p in happy["pairs"])[len(happy["pairs"]) // 2]
        r = happy["cpu_ratio_median"] if metric.startswith("cpu") else happy["wall_ratio_median"]
        lines.append(_row([name, _fmt(pr * scale, unit, 2), _fmt(pa * scale, unit, 2), f"{r:.3f}"]))
    a = happy["alloc_bytes_per_turn"]
    lines.append(
        _row(
            [
                "allocated per turn (tracemalloc, net)",
                f"{a['pristine']:.0f} B",
                f"{a['patched']:.0f} B",
                f"{a['patched'] - a['pristine']:+.0f} B",
            ]
        )  # fmt: skip
    )

    if "cpu_ratio_ci95" in happy:
        lo, hi = happy["cpu_ratio_ci95"]
        wlo, whi = happy["wall_ratio_ci95"]
        lines += [
            "",
            f"Per-pair ratio patched/pristine: CPU median {happy['cpu_ratio_median']:.3f}, "
            f"95 % bootstrap interval [{lo:.3f}, {hi:.3f}] (10000 resamples of the pairs); "
            f"wall median {happy['wall_ratio_median']:.3f} [{wlo:.3f}, {whi:.3f}]. The goal "
            "(<= 1.02) is met only if the whole interval is at or below it.",
        ]

    if "profile" in results:
        rows = _profile_diff(results)
        tot = {
            b: sum(r["own_ms_per_turn"] for r in results["profile"][b]["functions"])
            for b in ("pristine", "patched")
        }
        lines += [
            "",
            f"### Profile of the happy turn ({results['profile']['patched']['turns']} turns, "
            "cProfile on CPU time, cyclic GC paused, per turn)",
            "",
            f"Own time in livekit code per turn (cProfile-inflated): pristine "
            f"{tot['pristine']:.2f} ms, patched {tot['patched']:.2f} ms. The functions whose "
            "own time grew most on patched (by file and name; line numbers differ):",
            "",
            _row(
                [
                    "function",
                    "own ms/turn pristine",
                    "own ms/turn patched",
                    "delta",
                    "calls/turn pristine -> patched",
                ]
            ),  # fmt: skip
            _row(["---"] * 5),
        ]
        for r in rows:
            lines.append(
                _row(
                    [
                        f"`{r['function']}`" + (" (new)" if r["new"] else ""),
                        f"{r['own_pristine']:.3f}",
                        f"{r['own_patched']:.3f}",
                        f"{r['delta_own']:+.3f}",
                        f"{r['calls_pristine']:.1f} -> {r['calls_patched']:.1f}",
                    ]
                )
            )

        new_rows = _profile_new(results)
        if new_rows:
            lines += [
                "",
                "Functions that only the patched build has, by cumulative time per turn "
                "(among the 400 with the most own time):",
                "",
                _row(["function", "cum ms/turn", "own ms/turn", "calls/turn"]),
                _row(["---"] * 4),
            ]
            for r in new_rows:
                lines.append(
                    _row(
                        [
                            f"`{r['function']}`",
                            f"{r['cum_ms_per_turn']:.3f}",
                            f"{r['own_ms_per_turn']:.3f}",
                            f"{r['calls_per_turn']:.1f}",
                        ]
                    )
                )

    if "callgrind" in results:
        lines += callgrind.report_lines(results["callgrind"], happy)

    soak = results.get("soak")
    if soak is not None:
        lines += [
            "",
            "## Soak under concurrency",
            "",
            f"{soak['patched']['sessions']} concurrent sessions in one process, "
            f"{soak['patched']['turns_per_session']} turns each (`generate_reply`, instant "
            "playout), one emulator per session, seeded faults at a realistic mix (about 1 "
            "response in 10: pre-output `server_error` 4 %, rate-limited create 2 %, failure "
            "after audio 1 %, close mid-stream 1 %, close after created, no answer, "
            "`incomplete`, `rate_limits.updated` with remaining 0: 0.5 % each), max_retry=3. "
            "tracemalloc runs during the whole soak (1 frame), which inflates CPU equally on "
            "both builds. The invariants: no speech ends silently, no overlapping "
            "`response.create`, the session does not close, and no more `error` events than "
            "causes (the failures on the wire, plus each request the client timed out: under "
            "this load a 1 s `conn_options.timeout` can expire before a late answer), besides "
            "each failed turn's one report that it gave up.",
            "",
            _row(
                [
                    "build",
                    "success",
                    "latency p50 / p95 / p99",
                    "CPU per turn",
                    "RSS start -> end",
                    "traced start -> end",
                    "invariant violations",
                ]
            ),  # fmt: skip
            _row(["---"] * 7),
        ]
        for b in ("pristine", "patched"):
            r = soak[b]
            lat = r["latency_s"]
            lines.append(
                _row(
                    [
                        b,
                        f"{r['delivered']}/{r['turns']} ({r['delivered'] / r['turns'] * 100:.1f} %)",
                        " / ".join(_fmt((_pct(lat, q) or 0) * 1000, " ms") for q in (50, 95, 99)),
                        f"{r['cpu_s_per_turn'] * 1000:.1f} ms",
                        f"{r['rss_start'] / 2**20:.0f} -> {r['rss_end'] / 2**20:.0f} MiB",
                        f"{r['traced_start'] / 2**20:.1f} -> {r['traced_end'] / 2**20:.1f} MiB",
                        str(len(r["violations"])),
                    ]
                )
            )
        for b in ("pristine", "patched"):
            if soak[b]["violations"]:
                shown = soak[b]["violations"][:10]
                lines += ["", f"Violations on {b} (first {len(shown)}):", ""]
                lines += [f"- {v}" for v in shown]
        lines += ["", "![soak latency](soak_latency.png)"]

    lines += [
        "",
        f"## Reconnect storm (permanent failure, max_retry={mr}, window {results['params']['storm_window']} s)",
        "",
        _row(
            [
                "mode",
                "build",
                "connection attempts",
                "errors recoverable / non-recoverable",
                "gave up after",
                "close emitted",
            ]
        ),  # fmt: skip
        _row(["---"] * 6),
    ]
    for mode in storm["patched"]:
        for b in ("pristine", "patched"):
            s = storm[b][mode]
            lines.append(
                _row(
                    [
                        f"`{mode}`",
                        b,
                        s["connections"],
                        f"{s['errors_recoverable']} / {s['errors_fatal']}",
                        _fmt(s["gave_up_s"], " s", 2)
                        if s["gave_up_s"] is not None
                        else "never (window)",
                        "yes" if s["closed"] else "no",
                    ]
                )  # fmt: skip
            )
    lines += [
        "",
        f"Memory across {results['params']['cycles']} reconnect cycles (tracemalloc, retained "
        "after gc, large max_retry so both builds keep reconnecting):",
        "",
        "Two figures per build: what `AgentSession` keeps in its session record "
        "(`_recorded_events`, measured by releasing the events recorded since the baseline at "
        "each sample) and everything else retained (measured after that release). The record "
        "is searched for tracebacks, frames, sockets and transports (gc referents, not into "
        "the live models and sessions).",
        "",
        _row(
            [
                "build",
                "retained per cycle, outside the record",
                "session record per cycle",
                "record events per cycle",
                "tracebacks/frames/sockets in the record",
                "total retained outside the record",
            ]
        ),  # fmt: skip
        _row(["---"] * 6),
    ]
    for b in ("pristine", "patched"):
        lines.append(
            _row(
                [
                    b,
                    f"{mem[b]['bytes_per_cycle']:.0f} B",
                    f"{mem[b].get('record_bytes_per_cycle', float('nan')):.0f} B",
                    f"{mem[b].get('record_events_per_cycle', float('nan')):.1f}",
                    ", ".join(mem[b].get("record_heavy_refs", [])) or "none",
                    f"{mem[b]['retained_bytes'][-1] / 1024:.1f} KiB",
                ]
            )
        )
    lines += ["", "![memory per cycle](memory_per_cycle.png)", ""]

    matrix = results["matrix"]
    cols = ["reply", "attempts", "errors rec/non-rec", "close", "unhandled", "overlaps",
            "orphan items", "dup tool calls"]  # fmt: skip
    lines += [
        "## Fault matrix",
        "",
        "Generated from the scenarios in `testbed/scenarios.py` (the ones the tests assert on). "
        "Each cell: pristine -> patched.",
        "",
        _row(["scenario", *cols]),
        _row(["---"] * (len(cols) + 1)),
    ]

    def cell(o: dict[str, Any]) -> list[str]:
        return [
            "yes" if o["reply_delivered"] else "no",
            str(o["attempts"]),
            f"{o['errors_recoverable']}/{o['errors_fatal']}",
            "yes" if o["close_emitted"] else "no",
            str(o["unhandled"]),
            str(o["overlapping_creates"]),
            str(o["orphan_items"]),
            str(o["duplicate_tool_calls"]),
        ]

    for name in matrix["patched"]:
        pr, pa = cell(matrix["pristine"][name]), cell(matrix["patched"][name])
        lines.append(
            _row(
                [
                    f"`{name}`",
                    *(a if a == b else f"{a} -> **{b}**" for a, b in zip(pr, pa, strict=True)),
                ]
            )
        )
    lines += _long_session_lines(results)
    (out / "REPORT.md").write_text("\n".join(lines) + "\n")


def _long_session_lines(results: dict[str, Any]) -> list[str]:
    """The long-session section (bench/long_session.py), if the run has it."""
    runs = results.get("long_session")
    if runs is None:
        return []
    first = runs["patched"]
    turns = sorted(first["next_reply_delay_ms"], key=int)
    lines = [
        "",
        "## A long session: next-reply delay after an interruption, and expiries",
        "",
        f"One bare engine session, {first['turns']} turns, `conn_options.timeout` "
        f"{first['timeout_s']} s; {first['unanswered_requests']} requests the server never "
        f"answers, and {first['expiries']} server expiries (`session_expired` after 10.5 s of "
        "a connection). At each measured turn the user interrupts as the request goes out and "
        "asks again at once; the delay runs from the interrupted response's `response.done` "
        "to the next `response.create` at the server (`bench/long_session.py`). A flat row "
        "means no stale state holds later replies back.",
        "",
        _row(
            ["build", *[f"turn {t} (ms)" for t in turns], "connections per expiry", "failed turns"]
        ),
        _row(["---"] * (len(turns) + 3)),
    ]
    for build in ("pristine", "patched"):
        run = runs[build]
        delays = [run["next_reply_delay_ms"].get(t) for t in turns]
        lines.append(
            _row(
                [
                    build,
                    *[_fmt(d, "", 1) for d in delays],
                    _fmt(run["connections_per_expiry"], "", 2),
                    run["failed_turns"],
                ]
            )
        )
    return lines
