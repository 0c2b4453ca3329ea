"""bench/callgrind.py's arithmetic and its headline row (the measurement itself is make bench's).

The verdict on the happy-path CPU goal rests on ``ratio_interval`` and ``verdict``; the row it
writes into bench/REPORT.md must be one that ``make pr`` quotes in every pull request body.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tools"))
import callgrind  # noqa: E402
import patchqueue as pq  # noqa: E402

pytestmark = pytest.mark.unit


def test_ratio_interval_is_the_t_interval_of_the_ratio_of_means() -> None:
    den = [100.0, 102.0, 98.0, 100.0]  # mean 100, variance 8/3
    num = [101.0, 101.0, 101.0, 101.0]  # mean 101, no spread
    ratio, lo, hi = callgrind.ratio_interval(num, den)
    assert ratio == pytest.approx(1.01)
    # relative SE of the denominator: sqrt(8/3 / 4) / 100; Welch df = 3 -> t = 3.182
    half = 3.182 * 1.01 * (8 / 3 / 4) ** 0.5 / 100
    assert (lo, hi) == (pytest.approx(1.01 - half), pytest.approx(1.01 + half))


def test_t_quantile_rounds_degrees_of_freedom_down() -> None:
    assert callgrind._t975(3.0) == 3.182
    assert callgrind._t975(3.9) == 3.182  # never narrower than the df it has
    assert callgrind._t975(11) == 2.228
    assert callgrind._t975(0.5) == 12.706
    assert callgrind._t975(1000) == 2.042


def test_verdict_needs_the_whole_interval_on_one_side() -> None:
    assert callgrind.verdict(1.011, 1.0191, 1.02) == "yes"
    assert callgrind.verdict(1.011, 1.02, 1.02) == "yes"
    assert callgrind.verdict(1.015, 1.025, 1.02) == "undecided"
    assert callgrind.verdict(1.021, 1.03, 1.02) == "no"


def _result(verdict: str) -> dict[str, object]:
    samples = {"pristine": [17.7e6, 17.8e6], "patched": [18.0e6, 18.1e6]}
    return {
        "reps": 2,
        "ir_per_turn": {b: {"samples": v} for b, v in samples.items()},
        "ratio": 1.0153,
        "ratio_ci95": [1.011, 1.019],
        "goal": 1.02,
        "verdict": verdict,
    }


def test_make_pr_quotes_the_headline_row(tmp_path: Path) -> None:
    row = "| " + " | ".join(callgrind.headline_cells(_result("yes"))) + " |"
    report = tmp_path / "REPORT.md"
    report.write_text(
        "# Bench\n\n## Headline\n\n| figure | pristine | patched | goal | met |\n"
        f"| --- | --- | --- | --- | --- |\n{row}\n\n## Next\n"
    )
    quoted = pq.bench_headline(report, pq.load_line("1.8.9"))
    assert row in quoted
    assert row.endswith("| yes |") and "1.0153 [1.0110, 1.0190]" in row


def test_a_skipped_measurement_says_why() -> None:
    cells = callgrind.headline_cells({"skipped": "no apt-get"})
    assert cells[-1] == "not measured" and "no apt-get" in cells[2]
    assert callgrind.report_lines({"skipped": "no apt-get"})[-1] == "Skipped: no apt-get."
