"""Pins: pristine behaviour that the series keeps, checked on pristine and on every prefix.

The travelling tests of a patch prove what that patch changes. These prove what no patch may
change by accident: each passes on pristine livekit-agents 1.8.9 (`make pristine-check` runs
them there) and on the build of every prefix of the series (`make check-series`). A test here
asserts only what holds on both sides of every patch: for example, a failed server-VAD response
is reported on the session's ``error`` event on every prefix, whether the engine reports it
(pristine, patches 1-14) or the turn that withholds and retries it (patch 15 on).
"""

from __future__ import annotations

import pytest

from livekit.agents import APIError

from .harness import SessionHarness
from .realtime_emulator import (
    FailResponse,
    FaultPlan,
    RealtimeEmulator,
    RejectCreate,
)

pytestmark = [pytest.mark.unit, pytest.mark.pin]


def _provider_codes(h: SessionHarness) -> list[object]:
    """The provider error codes of the realtime errors the session reported, in order."""
    codes = []
    for error in h.realtime_errors:
        body = error.error.body if isinstance(error.error, APIError) else None
        codes.append(
            getattr(body, "code", None) if not isinstance(body, dict) else body.get("code")
        )
    return codes


async def test_failed_server_vad_response_is_reported_on_the_session() -> None:
    # the prefix the issue names: 0001-0008 of the old series reported nothing for this
    plan = FaultPlan(responses={1: FailResponse(code="server_error", type="server_error")})
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=0) as h:
        await emu.wait_connected()
        await emu.server_vad_turn("what's the weather like?")
        await h.wait_for(
            lambda: "server_error" in _provider_codes(h),
            what="an error event for the failed server-VAD response",
        )
        assert not h.close_events, "one failed response closed the session"


async def test_refused_generate_reply_ends_its_speech_with_an_error() -> None:
    plan = FaultPlan(
        responses={1: RejectCreate(code="invalid_value", type="invalid_request_error")}
    )
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=3) as h:
        handle = h.session.generate_reply(instructions="greet the user")
        await h.wait_for_speech(handle, what="the refused reply")
        assert handle.exception() is not None, "a refused reply ended without an error"
        assert emu.num_response_creates == 1, "a refused request was sent again"
        assert not h.close_events, "a refused request closed the session"
    h.guard.assert_clean()


async def test_control_generate_reply_is_delivered() -> None:
    async with RealtimeEmulator() as emu, SessionHarness(emu) as h:
        handle = h.session.generate_reply(instructions="greet the user")
        await h.wait_for_speech(handle, what="the greeting")

        assert h.audio.frames, "healthy generate_reply: no audio frame reached the output"
        assert handle.exception() is None, f"the SpeechHandle ended with {handle.exception()!r}"
        assert emu.num_response_creates == 1
        reply = emu.plan.reply
        assert h.audio.pushed_duration == pytest.approx(reply.audio_deltas * reply.chunk_ms / 1000)
        assert h.assistant_messages()[-1].text_content == emu.plan.reply.transcript
        assert not emu.overlapping_creates
        assert not h.errors, h.describe_errors()
        assert emu.num_connections == 1
    assert h.aclose_error is None
    assert len(h.close_events) == 1
    h.guard.assert_clean()


async def test_control_server_vad_turn_is_answered() -> None:
    async with RealtimeEmulator() as emu, SessionHarness(emu) as h:
        await emu.wait_connected()
        await emu.server_vad_turn("what time is it?")
        await h.wait_for(
            lambda: len(h.assistant_messages()) == 1, what="the answer to the server-VAD turn"
        )

        assert h.audio.frames
        assert [m.text_content for m in h.user_messages()] == ["what time is it?"]
        assert emu.num_response_creates == 0
        assert not h.errors, h.describe_errors()
    h.guard.assert_clean()
