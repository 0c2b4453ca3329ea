"""Turns the bench's raw results into bench/REPORT.md and the PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GOALS = {
    "success_p03": "patched >= 99 %, pristine ~ 70 %",
    "recovery_p50": "<= 20 ms beyond the backoff",
    "cpu_ratio": "<= 1.02",
    "attempts": "= max_retry + 1",
    "memory": "<= 1 KiB per cycle patched (pristine ~ 23 KB)",
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
    for build, style in (("pristine", "-"), ("patched", "-")):
        mem = results["memory"][build]
        ax.plot(mem["cycles"], [b / 1024 for b in mem["retained_bytes"]], style, label=build)
    ax.set(
        xlabel="reconnect cycle",
        ylabel="retained memory since cycle 0 (KiB, tracemalloc)",
        title="Memory retained across reconnect cycles",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def write(results: dict[str, Any], *, out: Path, raw_path: Path) -> None:
    """Write REPORT.md and the plots next to it."""
    _plot_success(results, out / "success_rate.png")
    _plot_memory(results, out / "memory_per_cycle.png")

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
    r50 = rec["to_create_ms_beyond_backoff"]["p50"]
    lines.append(
        _row(
            [
                "recovery overhead p50 beyond backoff (to re-issued create)",
                "no retry",
                _fmt(r50, " ms"),
                GOALS["recovery_p50"],
                "yes" if r50 is not None and r50 <= 20 else "**no**",
            ]
        )  # fmt: skip
    )
    cpu = happy["cpu_ratio_median"]
    lines.append(
        _row(
            [
                "happy-path CPU per turn, patched/pristine (median of pairs)",
                "1",
                f"{cpu:.3f}",
                GOALS["cpu_ratio"],
                "yes" if cpu <= 1.02 else "**no**",
            ]
        )  # fmt: skip
    )
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
    lines.append(
        _row(
            [
                "memory retained per reconnect cycle",
                f"{mem['pristine']['bytes_per_cycle']:.0f} B",
                f"{mem['patched']['bytes_per_cycle']:.0f} B",
                GOALS["memory"],
                "yes" if mem["patched"]["bytes_per_cycle"] <= 1024 else "**no**",
            ]
        )  # fmt: skip
    )

    missed = []
    if cpu > 1.02:
        missed.append(
            f"- Happy-path CPU ratio {cpu:.3f} > 1.02. The patched turn does more per response: "
            "it awaits the generation's `outcome` future and keeps per-attempt spans; the "
            "per-turn medians differ by about 1 % while single pairs vary by several percent "
            "on this 2-core machine, so more pairs (`--pairs`) narrow the figure. Not yet "
            "profiled down to the goal."
        )
    if mem["patched"]["bytes_per_cycle"] > 1024:
        missed.append(
            f"- Memory {mem['patched']['bytes_per_cycle']:.0f} B per reconnect cycle > 1 KiB. "
            "The error events no longer pin tracebacks (pristine ~22 KB); what is left is the "
            "per-connection `metrics_collected` (connection acquire) and usage events that "
            "`AgentSession` keeps for its session report by design, the same on both builds."
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

    lines += [
        "",
        "## Happy-path cost (p = 0)",
        "",
        f"{len(happy['pairs'])} pairs of runs in alternation (pristine, patched, pristine, ...), "
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
        _row(["build", "retained per cycle", "total retained"]),
        _row(["---"] * 3),
    ]
    for b in ("pristine", "patched"):
        lines.append(
            _row(
                [
                    b,
                    f"{mem[b]['bytes_per_cycle']:.0f} B",
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
        "Generated from the scenarios in `tests/scenarios.py` (the ones the tests assert on). "
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
    (out / "REPORT.md").write_text("\n".join(lines) + "\n")
