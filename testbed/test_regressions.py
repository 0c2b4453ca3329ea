"""Regression tests: one per failure listed under "Why" in the foundation issue.

Each test drives a real ``AgentSession`` on ``openai.realtime.RealtimeModel`` against the
emulator and asserts the correct behaviour, so it fails on pristine livekit-agents 1.8.9 with an
AssertionError naming the symptom. Until its fix landed, each was ``xfail(strict=True)`` with
the issue that fixes it (#3: patch 0009, #4: patches 0002-0008); the fixes removed the marks.
``pytest --pristine`` checks that every one of them still fails on the pristine build, for the
expected reason.
"""

from __future__ import annotations

import pytest

from livekit.agents.voice.speech_handle import SpeechHandle

from .harness import NEVER_RETRIEVED, SessionHarness
from .realtime_emulator import (
    AcceptThenClose,
    CloseAfterCreated,
    ErrorThenClose,
    FailResponse,
    FaultPlan,
    HangHandshake,
    RealtimeEmulator,
    RejectCreate,
    RejectUpgrade,
)

pytestmark = pytest.mark.unit


def _assert_reply_delivered(h: SessionHarness, handle: SpeechHandle | None, *, what: str) -> None:
    assert h.audio.frames, f"{what}: no audio frame reached the output"
    if handle is not None:
        assert handle.exception() is None, (
            f"{what}: the SpeechHandle ended with {handle.exception()!r}"
        )
    assert h.assistant_messages(), f"{what}: no assistant message in the session history"


# ---------------------------------------------------------------------------------------------
# issue 3: a failed response drops the turn
# ---------------------------------------------------------------------------------------------


@pytest.mark.regression(issue=3)
async def test_failed_response_done_is_retried() -> None:
    plan = FaultPlan(responses={1: FailResponse(code="server_error", type="server_error")})
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=3) as h:
        handle = h.session.generate_reply(instructions="greet the user")
        await h.wait_for_speech(handle, what="generate_reply after a failed response")

        assert emu.num_response_creates >= 2, (
            "failed response.done (server_error) is not retried: "
            f"{emu.num_response_creates} response.create, no reply"
        )
        _assert_reply_delivered(h, handle, what="after a failed response.done")
        assert not emu.overlapping_creates, "a response.create overlapped an active response"


@pytest.mark.regression(issue=3)
async def test_rate_limited_response_create_is_retried() -> None:
    plan = FaultPlan(responses={1: RejectCreate(code="rate_limit_exceeded")})
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=3) as h:
        handle = h.session.generate_reply(instructions="greet the user")
        await h.wait_for_speech(handle, what="generate_reply after a rate-limit error event")

        assert emu.num_response_creates >= 2, (
            "response.create rejected by error rate_limit_exceeded is not re-issued: "
            f"{emu.num_response_creates} response.create, no reply"
        )
        _assert_reply_delivered(h, handle, what="after a rate_limit_exceeded error event")


@pytest.mark.regression(issue=3)
async def test_failed_server_vad_response_is_reasked() -> None:
    plan = FaultPlan(responses={1: FailResponse(code="server_error", type="server_error")})
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=3) as h:
        await emu.wait_connected()
        first = await emu.server_vad_turn("what's the weather like?")
        assert first.origin == "server"

        await emu.wait_for(
            lambda: emu.num_response_creates >= 1,
            timeout=3.0,
            what="the client to re-ask after its server-VAD response failed "
            "(server-VAD turn dropped: no response.create)",
        )
        await h.wait_for(
            lambda: bool(h.assistant_messages()), what="the reply to the re-asked server-VAD turn"
        )
        _assert_reply_delivered(h, None, what="re-asked server-VAD turn")
        assert len(h.user_messages()) == 1, (
            f"the re-ask added a user message: {[m.text_content for m in h.user_messages()]}"
        )


@pytest.mark.regression(issue=3)
async def test_reply_lost_to_socket_drop_is_reasked() -> None:
    plan = FaultPlan(responses={1: CloseAfterCreated()})
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=3) as h:
        handle = h.session.generate_reply(instructions="greet the user")
        await h.wait_for_speech(handle, what="generate_reply across a socket drop")

        assert emu.num_connections >= 2, "the engine did not reconnect after the drop"
        assert emu.num_response_creates >= 2, (
            "reply lost to a socket drop after response.created is never re-asked: "
            f"{emu.num_response_creates} response.create over {emu.num_connections} connections"
        )
        assert emu.response_creates[-1].conn > 1, "the re-ask was not sent on the new connection"
        _assert_reply_delivered(h, handle, what="after the socket drop")


# ---------------------------------------------------------------------------------------------
# issue 4: the OpenAI engine's reconnect, error and close paths
# ---------------------------------------------------------------------------------------------


@pytest.mark.regression(issue=4)
async def test_accept_then_close_gives_up_after_max_retry() -> None:
    max_retry = 2
    plan = FaultPlan(every_connection=AcceptThenClose())
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=max_retry) as h:
        await h.wait_for(
            lambda: h.closed.is_set() or emu.num_connections > max_retry + 1,
            timeout=10.0,
            what="the session to give up on a server that closes every connection",
        )
        attempts = emu.num_connections
        assert attempts <= max_retry + 1, (
            f"reconnects without bound: {attempts} connection attempts to a server that "
            f"closes every connection (max_retry={max_retry} allows {max_retry + 1})"
        )
        assert attempts == max_retry + 1, f"{attempts} attempts, expected {max_retry + 1}"
        assert len(h.unrecoverable_errors) == 1, (
            f"expected exactly one non-recoverable error, got: {h.describe_errors()}"
        )
        assert h.errors[-1] is h.unrecoverable_errors[0], "the terminal error is not the last one"
        assert len(h.close_events) == 1 and h.close_events[0].error is not None, (
            "AgentSession did not emit close with the error"
        )


@pytest.mark.regression(issue=4)
async def test_error_then_close_gives_one_error_per_cause() -> None:
    plan = FaultPlan(every_connection=ErrorThenClose(code="server_error", type="server_error"))
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=2) as h:
        await h.wait_for(
            lambda: (
                h.closed.is_set()
                or len([e for e in h.errors if e.error.recoverable]) > emu.num_connections
            ),
            timeout=10.0,
            what="the session to end on a server that sends an error and closes",
        )
        causes = emu.num_connections  # each connection is one cause: an error, then a close
        recoverable = [e for e in h.errors if e.error.recoverable]
        assert len(recoverable) <= causes, (
            f"two error events for one cause: {len(recoverable)} recoverable error events for "
            f"{causes} error-then-close connections ({h.describe_errors()})"
        )
        assert h.closed.is_set(), "AgentSession did not emit close"
        # each cause reported once, at once; then the session gives up, once
        assert [e.error.recoverable for e in h.errors] == [True] * causes + [False], (
            h.describe_errors()
        )


@pytest.mark.regression(issue=4)
@pytest.mark.parametrize(
    "fault",
    [HangHandshake(), RejectUpgrade(status=401), RejectUpgrade(status=500)],
    ids=["handshake-hangs", "upgrade-401", "upgrade-500"],
)
async def test_connect_failure_closes_session_cleanly(
    fault: HangHandshake | RejectUpgrade,
) -> None:
    max_retry = 2
    plan = FaultPlan(every_connection=fault)
    async with (
        RealtimeEmulator(plan) as emu,
        SessionHarness(emu, max_retry=max_retry, timeout=0.5) as h,
    ):
        await h.wait_for(
            lambda: h.closed.is_set() or any(m.startswith(NEVER_RETRIEVED) for m in h.guard.seen()),
            timeout=8.0,
            what="AgentSession to emit close after the connection failed "
            f"(no close event; {emu.num_connections} attempts, errors: {h.describe_errors()})",
        )
        never_retrieved = h.guard.never_retrieved
        assert not never_retrieved, (
            "'Task exception was never retrieved' after a failed connect, "
            f"close emitted: {h.closed.is_set()}, {emu.num_connections} attempts: "
            + never_retrieved[0].split(" (caused by")[0]
        )
        await h.wait_closed(timeout=5.0, what="AgentSession to emit close")
        close = h.close_events[0]
        assert close.error is not None, "close was emitted without the error"
        if isinstance(fault, RejectUpgrade) and fault.status == 401:
            assert emu.num_connections == 1, (
                f"a 401 at the upgrade is retried like a 500: {emu.num_connections} attempts"
            )
        else:
            assert emu.num_connections == max_retry + 1
    assert h.aclose_error is None, f"session.aclose() raised {h.aclose_error!r}"
    h.guard.assert_clean()


@pytest.mark.regression(issue=4)
async def test_failed_response_leaves_no_unretrieved_future() -> None:
    plan = FaultPlan(responses={1: FailResponse(code="server_error", type="server_error")})
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=0) as h:
        handle = h.session.generate_reply(instructions="greet the user")
        await h.wait_for_speech(handle, what="generate_reply whose response failed")
        await emu.wait_for(lambda: emu.responses[0].status == "failed", what="the failed response")
    never_retrieved = h.guard.never_retrieved
    assert not never_retrieved, (
        f"a failed response leaves 'Future exception was never retrieved': {never_retrieved[0]}"
    )
