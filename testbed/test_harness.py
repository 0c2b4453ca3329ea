"""Self-tests of the AgentSession harness: the recording sinks and the exception guard."""

from __future__ import annotations

import asyncio

import pytest

from .harness import ExceptionGuard, SessionHarness
from .realtime_emulator import FaultPlan, RealtimeEmulator, Reply

pytestmark = pytest.mark.unit


async def test_instant_playout_records_frames_and_text() -> None:
    async with RealtimeEmulator() as emu, SessionHarness(emu) as h:
        handle = h.session.generate_reply(instructions="greet the user")
        await h.wait_for_speech(handle, what="the greeting")
        reply = emu.plan.reply
        assert h.audio.pushed_duration == pytest.approx(reply.audio_deltas * reply.chunk_ms / 1000)
        [(position, interrupted)] = h.audio.segments
        assert position == pytest.approx(h.audio.pushed_duration) and not interrupted
        assert all(f.sample_rate == 24000 and f.num_channels == 1 for f in h.audio.frames)
        assert h.text.text == reply.transcript
        assert h.realtime_session is not None
    assert [e.reason for e in h.close_events] == ["user_initiated"]


async def test_real_time_playout_is_interruptible() -> None:
    plan = FaultPlan(reply=Reply(audio_deltas=40, delta_interval=0.001))  # 0.8 s of audio
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, playout_speed=1.0) as h:
        handle = h.session.generate_reply(instructions="talk for a while")
        await h.wait_for(lambda: bool(h.audio.frames), what="the first audio frame")
        await asyncio.sleep(0.05)
        handle.interrupt()
        await h.wait_for_speech(handle, what="the interrupted speech")
        assert handle.interrupted
        assert h.audio.interrupted_segments == 1
        position, interrupted = h.audio.segments[0]
        assert interrupted and position < 0.8


async def test_guard_restores_the_previous_handler() -> None:
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    loop.set_exception_handler(lambda _loop, ctx: seen.append(str(ctx["message"])))
    try:
        guard = ExceptionGuard().install()
        loop.call_exception_handler({"message": "inside"})
        guard.uninstall()
        loop.call_exception_handler({"message": "outside"})
        assert guard.seen() == ["inside"]
        assert seen == ["outside"]
    finally:
        loop.set_exception_handler(None)
