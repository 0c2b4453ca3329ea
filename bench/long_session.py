"""The long-session suite: does the reply latency stay flat over hours of state?

One bare OpenAI realtime session (the engine, no AgentSession) against the emulator, run by
``bench/worker.py long_session`` in one build's interpreter. Over ``turns`` turns it meets
what a long session meets: requests the server never answers (each leaves a given-up request
behind), user interruptions that land before the response was created, and server expiries
(``session_expired`` after ``expire_after`` seconds of a connection). At each measured turn
the user interrupts and asks again at once; the figure is the next-reply delay, from the
interrupted response's ``response.done`` to the next ``response.create`` at the server.
"""

from __future__ import annotations

import asyncio
from typing import Any

from livekit.agents import APIConnectOptions
from livekit.plugins import openai
from testbed.realtime_emulator import ErrorThenClose, FaultPlan, NoAnswer, RealtimeEmulator
from testbed.realtime_emulator.plan import ResponseFault


async def _until(predicate: Any, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def suite_long_session(
    turns: int = 200,
    measure_at: tuple[int, ...] = (10, 50, 100, 150, 200),
    unanswered_at: tuple[int, ...] = (5, 40, 80, 120, 160),
    expiries: int = 2,
    expire_after: float = 10.5,
    pace: float = 0.08,
    timeout: float = 1.0,
) -> dict[str, Any]:
    # response numbers follow the turns: one response.create per turn, two for a measured
    # turn (the interrupted one and the next); a lost request is not asked again here
    responses: dict[int, ResponseFault] = {}
    number = 0
    for turn in range(1, turns + 1):
        number += 1
        if turn in unanswered_at:
            responses[number] = NoAnswer()
        if turn in measure_at:
            number += 1
    expiry = ErrorThenClose(
        code="session_expired", type="invalid_request_error", after=expire_after
    )
    plan = FaultPlan(responses=responses, connections=dict.fromkeys(range(1, expiries + 1), expiry))

    delays: dict[int, float | None] = {}
    failed_turns = 0
    async with RealtimeEmulator(plan) as emu:
        model = openai.realtime.RealtimeModel(
            base_url=emu.http_url,
            api_key=emu.api_key,
            conn_options=APIConnectOptions(max_retry=3, retry_interval=0.1, timeout=timeout),
        )
        session = model.session()
        try:
            for turn in range(1, turns + 1):
                await asyncio.sleep(pace)
                before = len(emu.responses)
                fut = session.generate_reply(instructions=f"turn {turn}")
                if turn in measure_at:
                    # the user interrupts as the request goes out, before the response exists
                    def _interrupt(ev: dict[str, Any], f: asyncio.Future[Any] = fut) -> None:
                        if ev.get("type") == "response.create":
                            f.cancel()

                    session.on("openai_client_event_queued", _interrupt)
                    await _until(fut.done, 5.0)
                    session.off("openai_client_event_queued", _interrupt)
                    nxt = session.generate_reply(instructions=f"turn {turn}, again")
                    got = await _until(lambda b=before: len(emu.responses) > b + 1, 5.0)
                    interrupted = emu.responses[before] if len(emu.responses) > before else None
                    if got and interrupted is not None and interrupted.done_at is not None:
                        delays[turn] = emu.responses[before + 1].requested_at - interrupted.done_at
                    else:
                        delays[turn] = None
                    fut = nxt
                try:
                    await asyncio.wait_for(asyncio.shield(fut), timeout + 1.0)
                except Exception:
                    failed_turns += 1
                    continue
                last = emu.responses[-1]
                await _until(lambda r=last: r.done_at is not None, 5.0)
            connections = emu.num_connections
        finally:
            await session.aclose()
            await model.aclose()

    return {
        "turns": turns,
        "timeout_s": timeout,
        "next_reply_delay_ms": {
            str(t): (round(d * 1000, 2) if d is not None else None) for t, d in delays.items()
        },
        "unanswered_requests": len(unanswered_at),
        "expiries": expiries,
        "connections": connections,
        "connections_per_expiry": (connections - 1) / expiries if expiries else None,
        "failed_turns": failed_turns,
    }
