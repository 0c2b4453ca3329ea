"""Where the recovery overhead goes: a recovered turn's timeline, stage by stage, and its profile.

``bench/run.py``'s recovery figure is the time from a failed ``response.done`` (the emulator
sends it) to the re-issued ``response.create`` (the emulator receives it), minus the backoff.
This script runs the same scenario (``worker.suite_recovery``: odd responses fail before any
output, even ones succeed, ``max_retry=3``, ``retry_interval=0.05`` so the first backoff is
0.1 s, the emulator in the same event loop) on the patched build and splits that interval at
the points the code passes through, with ``time.monotonic`` stamps (engine events, wrappers
around ``AgentActivity`` methods, and a stand-in for ``asyncio`` inside ``agent_activity`` that
stamps sleeps of 50 ms or more):

1. ``done -> engine``: the emulator sends the failed ``response.done``; the engine's receive
   loop has parsed it (``openai_server_event_received``) and fails the outcome.
2. ``engine -> turn sees failure``: the turn unwinds the generation (forwarding tasks, tees,
   outputs) until ``_wait_for_realtime_done`` returns the failure.
3. ``items removed``: a failed response that opened an item has it deleted
   (``_remove_realtime_items``), here and on the server (one round trip).
4. ``retry decision``: the rest, until the backoff starts (``_update_agent_state("thinking")``).
5. ``backoff overshoot``: the sleep as measured, minus what was asked for. The backoff counts
   from the failure (``GenerationDone.ended_at``), so the turn asks for 100 ms minus the time
   stages 1-4 took after the engine ended the response: those stages are spent inside the
   backoff, and the total beyond it is stage 1, the overshoot, and stages 6-7.
6. ``backoff -> create queued``: ``generate_reply`` again, until ``response.create`` is queued.
7. ``create queued -> emulator``: the write, until the emulator received it.

It runs twice: with the harness's listeners as they are (``list.append`` bound methods on
``error`` and ``agent_state_changed``, as in ``bench/run.py``), and with each replaced by a
Python function that does the same: ``livekit.rtc.EventEmitter.emit`` calls
``inspect.signature`` on every listener at every emit, which for a builtin method parses its
text signature (tokenize, ``ast.parse``, ``compile``).

Then a cProfile (CPU time) of recovered turns against happy turns, per function, per turn: the
functions a recovered turn spends more in. Not part of ``make bench``; run it alone::

    .venv/bin/python bench/recovery_profile.py --samples 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from worker import profile_turns, recovered_turn  # noqa: E402

from testbed.harness import SessionHarness  # noqa: E402
from testbed.realtime_emulator import FailResponse, FaultPlan, RealtimeEmulator  # noqa: E402

logging.getLogger("livekit.agents").setLevel(logging.CRITICAL)
logging.getLogger("asyncio").setLevel(logging.CRITICAL)

STAGES = (
    "done -> engine",
    "engine -> turn sees failure",
    "items removed",
    "retry decision",
    "backoff overshoot",
    "backoff -> create queued",
    "create queued -> emulator",
)
BACKOFF_MS = 100.0  # APIConnectOptions(retry_interval=0.05)._interval_for_retry(0)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, -(-len(ordered) * q // 100) - 1))]


class _SleepStamps:
    """Stands in for the ``asyncio`` module inside ``agent_activity``: stamps the start and the
    end of every sleep of 50 ms or more there (the retry's backoff); all else is asyncio's."""

    def __init__(self, stamps: list[tuple[float, str]]) -> None:
        self._stamps = stamps

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, delay: float, result: Any = None) -> Any:
        if delay < 0.05:
            return await asyncio.sleep(delay, result)
        self._stamps.append((time.monotonic(), f"sleep:start:{delay}"))
        try:
            return await asyncio.sleep(delay, result)
        finally:
            self._stamps.append((time.monotonic(), "sleep:end"))


def _stamp_methods(stamps: list[tuple[float, str]]) -> list[tuple[type, str, Any]]:
    """Wrap the turn's methods that mark a stage; returns what to restore."""
    from livekit.agents.voice.agent_activity import AgentActivity

    restore: list[tuple[type, str, Any]] = []
    original_done = AgentActivity._wait_for_realtime_done
    original_remove = AgentActivity._remove_realtime_items

    async def wait_for_done(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await original_done(self, *args, **kwargs)
        finally:
            stamps.append((time.monotonic(), "outcome seen"))

    async def remove_items(self: Any, *args: Any, **kwargs: Any) -> Any:
        stamps.append((time.monotonic(), "remove:start"))
        try:
            return await original_remove(self, *args, **kwargs)
        finally:
            stamps.append((time.monotonic(), "remove:end"))

    for name, wrapper, original in (
        ("_wait_for_realtime_done", wait_for_done, original_done),
        ("_remove_realtime_items", remove_items, original_remove),
    ):
        setattr(AgentActivity, name, wrapper)
        restore.append((AgentActivity, name, original))
    return restore


def _python_listeners(h: SessionHarness) -> None:
    """Replace the harness's builtin-method listeners by Python functions doing the same."""
    session = h.session
    for event, builtin in (
        ("error", h.errors.append),
        ("error", h.timeline.append),
        ("agent_state_changed", h.timeline.append),
        ("speech_created", h.speeches.append),
    ):
        session.off(event, builtin)
        session.on(event, lambda ev, append=builtin: append(ev))


async def timeline(samples: int, *, python_listeners: bool) -> dict[str, list[float]]:
    """Per recovered turn, the duration of each stage in ms."""
    from livekit.agents.voice import agent_activity

    plan = FaultPlan(responses={n: FailResponse() for n in range(1, 2 * samples + 2, 2)})
    stamps: list[tuple[float, str]] = []
    out: dict[str, list[float]] = {stage: [] for stage in STAGES}
    out["total beyond backoff"] = []
    out["items deleted"] = []
    agent_activity.asyncio = _SleepStamps(stamps)  # type: ignore[assignment]
    restore = _stamp_methods(stamps)
    try:
        async with RealtimeEmulator(plan) as emu:
            async with SessionHarness(emu, max_retry=3, retry_interval=0.05, timeout=2.0) as h:
                if python_listeners:
                    _python_listeners(h)
                rt = h.realtime_session
                assert rt is not None
                rt.on(
                    "openai_server_event_received",
                    lambda ev: stamps.append((time.monotonic(), f"recv:{ev.get('type')}")),
                )
                rt.on(
                    "openai_client_event_queued",
                    lambda ev: stamps.append((time.monotonic(), f"sent:{ev.get('type')}")),
                )
                for _ in range(samples):
                    s0 = len(stamps)
                    recovered = await recovered_turn(h, emu)
                    if recovered is None:
                        continue
                    failed_at, reissued_at = recovered
                    marks = [(t, what) for t, what in stamps[s0:] if t >= failed_at]

                    def first(what: str, since: float, marks: list = marks) -> float:
                        return next(t for t, w in marks if w == what and t >= since)

                    try:
                        t_engine = first("recv:response.done", failed_at)
                        t_seen = first("outcome seen", t_engine)
                        t_remove = first("remove:start", t_seen)
                        t_removed = first("remove:end", t_remove)
                        t_sleep, asked = next(
                            (t, float(w.rsplit(":", 1)[1]))
                            for t, w in marks
                            if w.startswith("sleep:start:") and t >= t_removed
                        )
                        t_woke = first("sleep:end", t_sleep)
                        t_create = first("sent:response.create", t_woke)
                    except StopIteration:
                        continue  # a turn that did not take this path (none expected)
                    t_emu = reissued_at
                    stages = [
                        t_engine - failed_at,
                        t_seen - t_engine,
                        t_removed - t_remove,
                        (t_remove - t_seen) + (t_sleep - t_removed),
                        t_woke - t_sleep - asked,
                        t_create - t_woke,
                        t_emu - t_create,
                    ]
                    for stage, value in zip(STAGES, stages, strict=True):
                        out[stage].append(value * 1000)
                    out["total beyond backoff"].append((t_emu - failed_at) * 1000 - BACKOFF_MS)
                    out["items deleted"].append(
                        sum(1 for _, w in marks if w == "sent:conversation.item.delete")
                    )
    finally:
        agent_activity.asyncio = asyncio  # type: ignore[assignment]
        for cls, name, original in restore:
            setattr(cls, name, original)
    return out


async def profile(turns: int, failing: bool) -> dict[str, dict[str, float]]:
    """cProfile (CPU time) of ``turns`` turns, each recovering once when ``failing``."""
    plan = FaultPlan(
        responses={n: FailResponse() for n in range(1, 2 * turns + 8, 2)} if failing else {}
    )
    async with RealtimeEmulator(plan) as emu:
        async with SessionHarness(emu, max_retry=3, retry_interval=0.05, timeout=2.0) as h:
            stats = await profile_turns(h, turns, warm_up=2)
    rows: dict[str, dict[str, float]] = {}
    for (filename, line, name), (nc, tt, ct) in stats.items():
        short = filename.split("site-packages/")[-1].replace(str(ROOT) + "/", "")
        rows[f"{short}:{line}({name})"] = {
            "calls": nc / turns,
            "own_ms": tt * 1000 / turns,
            "cum_ms": ct * 1000 / turns,
        }
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--profile-turns", type=int, default=60)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    stages = {
        variant: asyncio.run(timeline(args.samples, python_listeners=variant == "python"))
        for variant in ("builtin", "python")
    }
    for variant, figures in stages.items():
        print(f"\nlisteners: {variant}; recovered turns: {len(figures['total beyond backoff'])}")
        print(f"{'stage':<30} {'p50 ms':>8} {'p95 ms':>8}")
        for stage, values in figures.items():
            if values:
                print(f"{stage:<30} {_pct(values, 50):8.2f} {_pct(values, 95):8.2f}")

    happy = asyncio.run(profile(args.profile_turns, failing=False))
    failing = asyncio.run(profile(args.profile_turns, failing=True))
    total = {k: sum(r["own_ms"] for r in rows.values()) for k, rows in (("happy", happy),
             ("recovered", failing))}  # fmt: skip
    print(f"\nCPU per turn (cProfile): happy {total['happy']:.2f} ms, "
          f"recovered {total['recovered']:.2f} ms")  # fmt: skip
    delta = sorted(
        ((r["cum_ms"] - happy.get(k, {}).get("cum_ms", 0.0), k, r) for k, r in failing.items()),
        key=lambda x: -x[0],
    )
    print(f"\n{'cum ms more per recovered turn':>10}  {'calls':>6}  function")
    for d, k, r in delta[:40]:
        print(f"{d:10.3f}  {r['calls'] - happy.get(k, {}).get('calls', 0.0):6.1f}  {k}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"stages": stages, "happy": happy, "recovered": failing}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
