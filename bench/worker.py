"""One bench suite in one build's interpreter; prints its result as one JSON line.

Usage: ``<venv>/bin/python bench/worker.py <suite> '<json params>'``. The process imports the
livekit-agents build installed in that venv and nothing else, and drives a real
``AgentSession`` through the emulator of ``testbed/``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import random
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.long_session import suite_long_session  # noqa: E402
from livekit.agents import __version__  # noqa: E402
from testbed.harness import SessionHarness  # noqa: E402
from testbed.realtime_emulator import (  # noqa: E402
    AcceptThenClose,
    CloseAfterCreated,
    CloseMidStream,
    ErrorThenClose,
    FailResponse,
    FaultPlan,
    HangHandshake,
    Incomplete,
    NoAnswer,
    RateLimit,
    RateLimitsBefore,
    RealtimeEmulator,
    RejectCreate,
    RejectUpgrade,
    ResponseFault,
)

# the engine logs every failure; the bench reads events, not logs
logging.getLogger("livekit.agents").setLevel(logging.CRITICAL)
logging.getLogger("asyncio").setLevel(logging.CRITICAL)

FIRST_RETRY_BACKOFF = 0.1  # APIConnectOptions._interval_for_retry(0)


async def _turn(h: SessionHarness, timeout: float = 10.0) -> bool:
    """One generate_reply; True when its reply reached the audio sink."""
    before = len(h.audio.frames)
    handle = h.session.generate_reply(instructions="answer the user")
    try:
        await asyncio.wait_for(asyncio.shield(handle.wait_for_playout()), timeout)
    except asyncio.TimeoutError:
        return False
    return len(h.audio.frames) > before and handle.exception() is None


async def suite_success(p: float, turns: int, max_retry: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    # every response the emulator hands out fails before output with probability p
    horizon = turns * (max_retry + 1) + 16
    plan = FaultPlan(responses={n: FailResponse() for n in range(1, horizon) if rng.random() < p})
    delivered = 0
    sessions = 0
    async with RealtimeEmulator(plan) as emu:
        h: SessionHarness | None = None
        try:
            for _ in range(turns):
                if h is None or h.closed.is_set():
                    if h is not None:
                        await h.aclose()
                    h = await SessionHarness(
                        emu, max_retry=max_retry, retry_interval=0.05, timeout=2.0,
                        max_unrecoverable_errors=10**6,
                    ).start()  # fmt: skip
                    sessions += 1
                delivered += await _turn(h)
        finally:
            if h is not None:
                await h.aclose()
        creates = emu.num_response_creates
    return {
        "p": p,
        "turns": turns,
        "delivered": delivered,
        "creates": creates,
        "sessions": sessions,
    }


async def recovered_turn(h: SessionHarness, emu: RealtimeEmulator) -> tuple[float, float] | None:
    """One turn of ``h``: when its response failed and when the emulator got the re-issued
    ``response.create`` (monotonic), or None if no response failed or none was asked again."""
    n0 = len(emu.responses)
    await _turn(h)
    recs = emu.responses[n0:]
    failed = next((r for r in recs if r.status == "failed"), None)
    if failed is None or failed.done_at is None:
        return None
    after = [r for r in recs if r.requested_at >= failed.done_at]
    return (failed.done_at, after[0].requested_at) if after else None


async def suite_recovery(samples: int) -> dict[str, Any]:
    # odd responses fail before output, even ones succeed: each turn recovers once
    plan = FaultPlan(responses={n: FailResponse() for n in range(1, 2 * samples + 2, 2)})
    to_create: list[float] = []
    to_audio: list[float] = []
    async with RealtimeEmulator(plan) as emu:
        async with SessionHarness(emu, max_retry=3, retry_interval=0.05, timeout=2.0) as h:
            frame_times: list[float] = []
            original = h.audio.capture_frame

            async def capture_frame(frame: Any) -> None:
                frame_times.append(time.monotonic())
                await original(frame)

            h.audio.capture_frame = capture_frame  # type: ignore[method-assign]
            rtt = await _loopback_rtt(emu)
            timer = await _timer_overshoot(FIRST_RETRY_BACKOFF, rounds=40)
            for _ in range(samples):
                f0 = len(frame_times)
                recovered = await recovered_turn(h, emu)
                if recovered is None:
                    continue  # not re-issued (pristine)
                failed_at, reissued_at = recovered
                to_create.append((reissued_at - failed_at) * 1000)
                if len(frame_times) > f0:
                    to_audio.append((frame_times[f0] - failed_at) * 1000)
    return {
        "samples": samples,
        "backoff_ms": FIRST_RETRY_BACKOFF * 1000,
        "to_create_ms": to_create,
        "to_audio_ms": to_audio,
        "loopback_rtt_ms": rtt,
        "timer_overshoot_ms": timer,
    }


async def _timer_overshoot(delay: float, rounds: int) -> list[float]:
    """How late a bare ``asyncio.sleep`` of about ``delay`` wakes in this process, in ms: the
    event loop's own floor for any backoff. The waits are ``delay`` minus 0 to 0.9 ms, as a
    retry's is once the time since the failure is taken off: epoll waits in whole
    milliseconds, so a fraction of one is rounded up, and the machine adds its wake-up
    latency."""
    late = []
    for i in range(rounds):
        wait = delay - (i % 10) / 10_000
        t0 = time.monotonic()
        await asyncio.sleep(wait)
        late.append((time.monotonic() - t0 - wait) * 1000)
    return late


async def _loopback_rtt(emu: RealtimeEmulator, rounds: int = 20) -> float:
    """Median time for a client event to be answered by the emulator, over a raw socket."""
    import aiohttp

    times = []
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {emu.api_key}"}
        async with http.ws_connect(f"{emu.ws_url}?model=gpt-realtime", headers=headers) as ws:
            await ws.receive()  # session.created
            for i in range(rounds):
                t0 = time.monotonic()
                await ws.send_json(
                    {"type": "session.update", "event_id": f"rtt_{i}", "session": {}}
                )
                while (await ws.receive_json()).get("type") != "session.updated":
                    pass
                times.append((time.monotonic() - t0) * 1000)
    times.sort()
    return times[len(times) // 2]


async def suite_happy(turns: int) -> dict[str, Any]:
    async with RealtimeEmulator() as emu, SessionHarness(emu) as h:
        for _ in range(3):  # warm up: first connection, imports, caches
            await _turn(h)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(turns):
            await _turn(h)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        alloc_turns = max(5, turns // 4)
        for _ in range(alloc_turns):
            await _turn(h)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
    return {
        "turns": turns,
        "cpu_s_per_turn": cpu / turns,
        "wall_s_per_turn": wall / turns,
        "alloc_bytes_per_turn": grown / alloc_turns,
    }


STORM_MODES: dict[str, Any] = {
    "accept_then_close": AcceptThenClose(),
    "error_then_close": ErrorThenClose(),
    "hang_handshake": HangHandshake(),
    "reject_401": RejectUpgrade(status=401),
}


async def suite_storm(window: float, max_retry: int) -> dict[str, Any]:
    out = {}
    for name, fault in STORM_MODES.items():
        async with RealtimeEmulator(FaultPlan(every_connection=fault)) as emu:
            t0 = time.monotonic()
            h = SessionHarness(emu, max_retry=max_retry, retry_interval=0.1, timeout=0.5)
            gave_up: float | None = None
            try:
                await h.start()
                while time.monotonic() - t0 < window:
                    if gave_up is None and (h.unrecoverable_errors or h.closed.is_set()):
                        gave_up = time.monotonic() - t0
                    await asyncio.sleep(0.02)
                closed_by_itself = h.closed.is_set()
            finally:
                await h.aclose()
            out[name] = {
                "window_s": window,
                "connections": emu.num_connections,
                "errors_recoverable": len(h.recoverable_errors),
                "errors_fatal": len(h.unrecoverable_errors),
                "gave_up_s": gave_up,
                "closed": closed_by_itself,
                "unhandled": len(h.guard.collect()),
            }
    return out


async def suite_memory(cycles: int) -> dict[str, Any]:
    """Memory retained per reconnect cycle, split in two.

    At each sample the events ``AgentSession`` recorded for its session report since the
    baseline (``session._recorded_events``, write-only until the report) are measured by
    releasing them: traced bytes before minus after the release is what the record retained;
    what is still retained after the release is everything else. Before the first release the
    record is searched for tracebacks, frames and sockets (``_heavy_refs``). The harness'
    ``h.errors`` (a test-side listener holding the same error events) is released with it, so
    the bench's own bookkeeping is not counted as retained by the library.
    """
    warmup = 10
    step = 40
    plan = FaultPlan(every_connection=AcceptThenClose())
    xs: list[int] = []
    ys: list[int] = []
    rec: list[int] = []
    record_events = 0
    heavy: list[str] = []
    async with RealtimeEmulator(plan) as emu:
        async with SessionHarness(emu, max_retry=100_000, retry_interval=0.0, timeout=2.0) as h:
            await _wait(lambda: emu.num_connections >= warmup, timeout=60)
            events = h.session._recorded_events
            tracemalloc.start(16)
            base_conn = emu.num_connections
            base_len = len(events)
            base = _client_bytes()
            record_total = 0
            while emu.num_connections - base_conn < cycles and not h.closed.is_set():
                target = emu.num_connections + step
                await _wait(lambda t=target: emu.num_connections >= t, timeout=60)
                with_record = _client_bytes()
                new = events[base_len:]
                record_events += len(new)
                if not heavy:
                    heavy = _heavy_refs(new)
                del events[base_len:]
                del new
                # the harness' own lists of the same events (test-side listeners)
                h.errors.clear()
                h.timeline.clear()
                without = _client_bytes()
                record_total += with_record - without
                xs.append(emu.num_connections - base_conn)
                ys.append(without - base)
                rec.append(record_total)
            tracemalloc.stop()
    return {
        "cycles": xs,
        "retained_bytes": ys,
        "record_bytes": rec,
        "bytes_per_cycle": _slope(xs, ys),
        "record_bytes_per_cycle": _slope(xs, rec),
        "record_events_per_cycle": record_events / xs[-1] if xs else 0.0,
        "record_heavy_refs": heavy,
    }


def _heavy_refs(roots: list[Any], limit: int = 20000) -> list[str]:
    """Tracebacks, frames, sockets or transports reachable from ``roots`` (the record).

    Walks ``gc.get_referents`` breadth-first, but not into live objects that the session owns
    anyway (models, realtime sessions, the AgentSession, HTTP client sessions), classes and
    modules: the question is what the record itself keeps alive.
    """
    import socket
    import types

    from livekit.agents import AgentSession, llm

    stop = (llm.RealtimeModel, llm.LLM, llm.RealtimeSession, AgentSession, type,
            types.ModuleType, types.FunctionType)  # fmt: skip
    heavy = (types.TracebackType, types.FrameType, socket.socket, asyncio.BaseTransport)
    found: list[str] = []
    seen: set[int] = set()
    queue: list[Any] = list(roots)
    while queue and len(seen) < limit and len(found) < 5:
        obj = queue.pop(0)
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, heavy):
            found.append(type(obj).__name__)
            continue
        if isinstance(obj, stop) or type(obj).__module__.startswith("aiohttp"):
            if "ClientWebSocketResponse" in type(obj).__name__:
                found.append(type(obj).__name__)
            continue
        queue.extend(gc.get_referents(obj))
    return found


_EMULATOR_FILES = str(ROOT / "testbed" / "realtime_emulator" / "*")


def _client_bytes() -> int:
    """Traced bytes after gc, leaving out what the emulator's own records hold."""
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [
            tracemalloc.Filter(False, _EMULATOR_FILES, all_frames=True),
            tracemalloc.Filter(False, tracemalloc.__file__),
        ]
    )
    return sum(stat.size for stat in snapshot.statistics("filename"))


def _slope(xs: list[int], ys: list[int]) -> float:
    if len(xs) < 2:
        return 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


async def _wait(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("bench condition not reached")
        await asyncio.sleep(0.005)


def soak_fault(rng: random.Random) -> ResponseFault | None:
    """A realistic per-response mix: about 1 response in 10 misbehaves, most often transiently."""
    x = rng.random()
    mix: list[tuple[float, ResponseFault]] = [
        (0.04, FailResponse(code="server_error")),
        (0.02, RejectCreate(code="rate_limit_exceeded")),
        (0.01, FailResponse(code="server_error", after_audio_deltas=2)),
        (0.01, CloseMidStream(after_audio_deltas=2)),
        (0.005, CloseAfterCreated()),
        (0.005, NoAnswer()),
        (0.005, Incomplete(reason="max_output_tokens")),
        (0.005, RateLimitsBefore(rate_limits=(RateLimit(remaining=0, reset_seconds=0.2),))),
    ]
    for p, fault in mix:
        if x < p:
            return fault
        x -= p
    return None


def _client_timeouts(h: SessionHarness) -> int:
    """The session's errors that are a request timing out: the engine's ``APITimeoutError``
    (this series reports it), or a turn's ``generate_reply timed out.`` (earlier builds)."""
    from livekit.agents import APITimeoutError, llm

    return sum(
        1
        for e in h.errors
        if isinstance(err := getattr(e.error, "error", None), APITimeoutError)
        or (isinstance(err, llm.RealtimeError) and "timed out" in str(err))
    )


def _give_up_reports(h: SessionHarness, failed: list[BaseException]) -> int:
    """The session's errors that are a turn's own report that it gave up: the exception its
    speech ended with (error contract 2, docs/error-contract.md)."""
    return sum(1 for e in h.errors if any(getattr(e.error, "error", None) is x for x in failed))


async def _soak_session(index: int, turns: int, seed: int, out: dict[str, Any]) -> None:
    from testbed.exploration import failure_causes

    rng = random.Random(seed * 1000 + index)
    horizon = turns * 4 + 16
    responses = {n: f for n in range(1, horizon) if (f := soak_fault(rng)) is not None}
    plan = FaultPlan(responses=responses)
    async with RealtimeEmulator(plan) as emu:
        h = SessionHarness(emu, max_retry=3, retry_interval=0.05, timeout=1.0,
                           max_unrecoverable_errors=10**6)  # fmt: skip
        await h.start()
        failed: list[BaseException] = []  # what the turns ended with
        try:
            for _ in range(turns):
                if h.closed.is_set():
                    out["not_run"] += 1
                    continue
                before = len(h.audio.frames)
                t0 = time.perf_counter()
                handle = h.session.generate_reply(instructions="answer the user")
                try:
                    await asyncio.wait_for(asyncio.shield(handle.wait_for_playout()), 15.0)
                except asyncio.TimeoutError:
                    out["violations"].append(f"session {index}: a speech not done in 15 s")
                    continue
                out["latency_s"].append(time.perf_counter() - t0)
                if (exc := handle.exception()) is not None:
                    failed.append(exc)
                ok = len(h.audio.frames) > before and exc is None
                out["delivered"] += ok
                if not handle.interrupted and exc is None and not handle.chat_items:
                    out["violations"].append(f"session {index}: a speech ended silently")
            n_causes, _ = failure_causes([emu])
            # a request the loaded machine could not get answered within conn_options.timeout
            # (1 s here) is a cause too, seen by the client only: the wire shows a late answer
            n_causes += _client_timeouts(h)
            # besides them, a turn that gave up reports it once, itself
            give_ups = _give_up_reports(h, failed)
            if give_ups > len(failed):
                out["violations"].append(
                    f"session {index}: {give_ups} give-up reports for {len(failed)} failed turns"
                )
            if len(h.errors) - give_ups > n_causes:
                out["violations"].append(
                    f"session {index}: {len(h.errors) - give_ups} errors for {n_causes} causes"
                )
            if emu.overlapping_creates:
                out["violations"].append(f"session {index}: overlapping response.create")
            if h.closed.is_set():
                out["violations"].append(f"session {index}: the session closed by itself")
        finally:
            await h.aclose()
        unhandled = h.guard.seen()
        if unhandled:
            out["violations"].append(f"session {index}: unhandled {unhandled[:2]}")


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def suite_soak(sessions: int, turns: int, seed: int) -> dict[str, Any]:
    """N concurrent sessions in this process, M turns each, seeded realistic faults."""
    gc.collect()
    tracemalloc.start(1)
    rss0, traced0 = _rss_bytes(), tracemalloc.get_traced_memory()[0]
    out: dict[str, Any] = {"delivered": 0, "not_run": 0, "latency_s": [], "violations": []}
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(_soak_session(i, turns, seed, out) for i in range(sessions)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    gc.collect()
    rss1, traced1 = _rss_bytes(), tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    total = sessions * turns
    return {
        "sessions": sessions,
        "turns_per_session": turns,
        "turns": total,
        "delivered": out["delivered"],
        "not_run": out["not_run"],
        "latency_s": out["latency_s"],
        "cpu_s_per_turn": cpu / total,
        "wall_s": wall,
        "rss_start": rss0,
        "rss_end": rss1,
        "traced_start": traced0,
        "traced_end": traced1,
        "violations": out["violations"],
    }


async def profile_turns(
    h: SessionHarness, turns: int, *, warm_up: int = 3
) -> dict[tuple[str, int, str], tuple[int, float, float]]:
    """cProfile of ``turns`` turns of ``h`` after ``warm_up`` ones: per function (file, line,
    name), its calls, own and cumulative CPU seconds."""
    import cProfile
    import pstats

    for _ in range(warm_up):
        await _turn(h)
    # the cyclic GC would charge its pauses to whichever function allocates when it runs;
    # allocation is measured apart (alloc_bytes_per_turn), so it is paused while profiling
    gc.collect()
    gc.disable()
    # CPU time, not wall time: the machine's other load must not be charged to a function
    prof = cProfile.Profile(time.process_time)
    try:
        prof.enable()
        for _ in range(turns):
            await _turn(h)
        prof.disable()
    finally:
        gc.enable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    return {key: (nc, tt, ct) for key, (_cc, nc, tt, ct, _callers) in stats.items()}


async def suite_profile(turns: int) -> dict[str, Any]:
    """cProfile of happy-path turns: per function, own and cumulative ms per turn."""
    async with RealtimeEmulator() as emu, SessionHarness(emu) as h:
        stats = await profile_turns(h, turns)
    rows = []
    for (filename, line, name), (nc, tt, ct) in stats.items():
        if "livekit" not in filename or "testbed/" in filename:
            continue
        short = filename.split("site-packages/")[-1]
        rows.append(
            {
                "function": f"{short}:{line}({name})",
                "calls_per_turn": nc / turns,
                "own_ms_per_turn": tt * 1000 / turns,
                "cum_ms_per_turn": ct * 1000 / turns,
            }
        )
    rows.sort(key=lambda r: -r["own_ms_per_turn"])
    return {"turns": turns, "functions": rows[:400]}


async def suite_matrix() -> dict[str, Any]:
    from testbed import scenarios

    return {name: await scenarios.run(name) for name in scenarios.SCENARIOS}


async def suite_version() -> str:
    return __version__


SUITES: dict[str, Callable[..., Awaitable[Any]]] = {
    "version": suite_version,
    "success": suite_success,
    "recovery": suite_recovery,
    "happy": suite_happy,
    "storm": suite_storm,
    "memory": suite_memory,
    "matrix": suite_matrix,
    "soak": suite_soak,
    "profile": suite_profile,
    "long_session": suite_long_session,
}


def serve() -> None:
    """``worker.py serve``: one JSON request per stdin line, one JSON result per stdout line.

    A request is ``{"suite": <name>, "params": {...}}``; each runs in a fresh event loop. Lets
    the orchestrator alternate builds run after run without paying interpreter start-up and
    imports each time (the happy-path pairs).
    """
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        result = asyncio.run(SUITES[request["suite"]](**request.get("params", {})))
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


def main() -> None:
    if sys.argv[1] == "serve":
        serve()
        return
    suite, params = sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    result = asyncio.run(SUITES[suite](**params))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
