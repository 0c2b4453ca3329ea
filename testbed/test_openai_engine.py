"""The OpenAI Realtime engine against the emulator, through a real AgentSession.

Each test asserts the number of connection attempts, the error events (count and
``recoverable``), whether ``close`` was emitted, and that no unhandled or "never retrieved"
exception was left behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from livekit.agents import APIError, llm
from livekit.agents.llm._realtime import openai as engine

from .harness import SessionHarness
from .realtime_emulator import (
    AcceptThenClose,
    ErrorThenClose,
    FailResponse,
    FaultPlan,
    HangHandshake,
    Malformed,
    MalformedKind,
    NoAnswer,
    RateLimit,
    RealtimeEmulator,
    RejectCreate,
    RejectUpgrade,
)

pytestmark = pytest.mark.unit


def _assert_gave_up(
    h: SessionHarness, emu: RealtimeEmulator, attempts: int, *, announced: bool = False
) -> None:
    """``attempts`` connections, one error per attempt, the last one terminal, then close.

    ``announced``: each connection's failure was an error event, reported at once (recoverable)
    before the close that followed it; giving up is then an error of its own.
    """
    assert emu.num_connections == attempts, f"{emu.num_connections} attempts, want {attempts}"
    recoverable = [True] * attempts if announced else [True] * (attempts - 1)
    assert [e.error.recoverable for e in h.errors] == [*recoverable, False], h.describe_errors()
    assert all(isinstance(e.error, llm.RealtimeModelError) for e in h.errors)
    assert len(h.close_events) == 1, "AgentSession did not emit close"
    assert h.close_events[0].error is h.errors[-1].error, "close does not carry the error"


def _accepted(emu: RealtimeEmulator, n: int) -> Callable[[], bool]:
    return lambda: len(emu.accepted_connections) >= n


def _attempted(emu: RealtimeEmulator, n: int) -> Callable[[], bool]:
    return lambda: emu.num_connections >= n


async def _wait_terminal(h: SessionHarness, *, timeout: float = 10.0) -> None:
    await h.wait_closed(timeout=timeout, what="AgentSession to close after the terminal error")
    # nothing more happens once the session gave up
    await asyncio.sleep(0.3)


async def test_accept_then_close_gives_up_after_max_retry() -> None:
    plan = FaultPlan(every_connection=AcceptThenClose())
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=3) as h:
        await _wait_terminal(h)
        _assert_gave_up(h, emu, attempts=4)
    assert h.aclose_error is None
    h.guard.assert_clean()


async def test_error_then_close_is_one_error_per_cause() -> None:
    plan = FaultPlan(every_connection=ErrorThenClose(code="server_error", type="server_error"))
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=3) as h:
        await _wait_terminal(h)
        # each connection is one cause (an error event, then the close): one error each, at
        # once; then the session gives up
        _assert_gave_up(h, emu, attempts=4, announced=True)
        cause = h.errors[0].error.error
        assert isinstance(cause, APIError), cause
        assert engine._error_field(cause.body, "code") == "server_error", (
            "the error event is the cause"
        )
    assert h.aclose_error is None
    h.guard.assert_clean()


async def test_fatal_error_then_close_makes_one_attempt() -> None:
    plan = FaultPlan(every_connection=ErrorThenClose(code="insufficient_quota"))
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=3) as h:
        await _wait_terminal(h)
        _assert_gave_up(h, emu, attempts=1)
    h.guard.assert_clean()


async def test_handshake_hangs() -> None:
    plan = FaultPlan(every_connection=HangHandshake())
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=2, timeout=0.3) as h:
        await _wait_terminal(h)
        _assert_gave_up(h, emu, attempts=3)
    assert h.aclose_error is None
    h.guard.assert_clean()


@pytest.mark.parametrize(("status", "attempts"), [(401, 1), (403, 1), (429, 4), (500, 4)])
async def test_rejected_upgrade(status: int, attempts: int) -> None:
    plan = FaultPlan(every_connection=RejectUpgrade(status=status))
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=3) as h:
        await _wait_terminal(h)
        _assert_gave_up(h, emu, attempts=attempts)
        # the client's handshake error holds the request headers (the API key): not chained
        assert h.errors[-1].error.error.__cause__ is None
        assert h.errors[-1].error.error.__context__ is None
    assert h.aclose_error is None
    h.guard.assert_clean()


async def test_healthy_session_with_periodic_drops_keeps_reconnecting() -> None:
    # max_retry=1 would give up on the second failed attempt in a row; every connection here
    # completes a response before it drops, so each drop starts the count afresh
    drops = 4
    plan = FaultPlan(every_connection=AcceptThenClose(after=0.6))
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=1) as h:
        for n in range(1, drops + 2):
            await emu.wait_for(_accepted(emu, n), what=f"connection {n}")
            rt = h.realtime_session
            assert rt is not None
            ev = await asyncio.wait_for(rt.generate_reply(instructions="hi"), 2.0)
            done = await asyncio.wait_for(ev.done(), 2.0)
            assert done is not None and done.error is None  # completed
            if n <= drops:
                await emu.wait_for(_attempted(emu, n + 1), what=f"reconnection {n}")
        assert not h.closed.is_set(), f"gave up: {h.describe_errors()}"
        assert emu.num_connections == drops + 1
        assert len(h.errors) == drops and not h.unrecoverable_errors, h.describe_errors()
    h.guard.assert_clean()


async def test_idle_session_stable_for_the_healthy_period_keeps_reconnecting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # an idle connection proves healthy by staying up; shrink the period to keep the test fast
    monkeypatch.setattr(engine, "_HEALTHY_CONNECTION_SECONDS", 0.2)
    plan = FaultPlan(every_connection=AcceptThenClose(after=0.35))
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=1) as h:
        await emu.wait_for(lambda: emu.num_connections >= 5, timeout=8.0, what="5 connections")
        assert not h.closed.is_set(), f"gave up: {h.describe_errors()}"
        assert not h.unrecoverable_errors, h.describe_errors()
    h.guard.assert_clean()


async def test_rate_limit_reset_is_honoured(caplog: pytest.LogCaptureFixture) -> None:
    reset = 0.8
    plan = FaultPlan(
        every_connection=ErrorThenClose(
            code="rate_limit_exceeded",
            type="invalid_request_error",
            rate_limits=(RateLimit(name="requests", limit=100, remaining=0, reset_seconds=reset),),
        )
    )
    caplog.set_level(logging.WARNING, logger="livekit.agents")
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=2) as h:
        await _wait_terminal(h)
        _assert_gave_up(h, emu, attempts=3, announced=True)
        starts = [c.t for c in emu.connections]
        # the announcement arrives after the connect, so the next connect is at least one reset
        # later (the configured backoff is 0.1 s, then 0.05 s)
        gaps = [b - a for a, b in zip(starts[:-1], starts[1:], strict=True)]
        assert all(gap >= reset for gap in gaps), gaps
    waits = [
        float(r.__dict__["retry_interval"]) for r in caplog.records if hasattr(r, "rate_limit_wait")
    ]
    assert len(waits) == 2 and all(0 < w <= reset for w in waits), waits
    h.guard.assert_clean()


@pytest.mark.parametrize(
    "kind",
    [
        "bad_json",
        "unknown_type",
        "missing_fields",
        "error_message_not_string",
        "status_details_string",
    ],
)
async def test_malformed_event_is_skipped(
    kind: MalformedKind, caplog: pytest.LogCaptureFixture
) -> None:
    plan = FaultPlan(responses={1: Malformed(kind)})
    caplog.set_level(logging.DEBUG, logger="livekit.agents")
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=0) as h:
        first = h.session.generate_reply(instructions="first")
        await h.wait_for_speech(first, what="the reply with a malformed event")
        second = h.session.generate_reply(instructions="second")
        await h.wait_for_speech(second, what="the reply after it")
        await emu.wait_for(
            lambda: bool(emu.responses_with("completed")), what="a completed response after it"
        )
        assert emu.num_connections == 1, "the malformed event cost the connection"
        assert not h.closed.is_set(), h.describe_errors()
        # the turn's own report that it gave up is not the session's
        reported = [e for e in h.errors if e.error.error is not first.exception()]
        assert len(reported) <= 1, h.describe_errors()
        if kind == "status_details_string":
            # a failed response whose details are a bare string: skipped details, still a
            # failure; with max_retry=0 the turn gives up on it, and says so once
            assert first.exception() is not None
            assert len(h.errors) == 2 and h.errors[-1].error.error is first.exception()
        else:
            assert not h.unrecoverable_errors, h.describe_errors()
    # static messages: the payload only ever goes under an lk.pii key
    for record in caplog.records:
        if record.name.startswith("livekit.agents") and "emulator" in record.getMessage():
            pytest.fail(f"payload in a log message: {record.getMessage()!r}")
    h.guard.assert_clean()


async def test_failed_response_then_close_is_one_cause() -> None:
    plan = FaultPlan(responses={1: FailResponse(code="server_error", close_after=True)})
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=2) as h:
        handle = h.session.generate_reply(instructions="hi")
        await h.wait_for_speech(handle, what="the failed reply")
        await emu.wait_for(lambda: emu.num_connections >= 2, what="the reconnection")
        await asyncio.sleep(0.2)
        # a retryable response failure is reported by whoever asks again (the response retry
        # loop); the engine adds nothing for it nor for the close that followed it
        assert len(h.errors) <= 1 and not h.unrecoverable_errors, h.describe_errors()
        assert not h.closed.is_set()
    h.guard.assert_clean()


async def test_generate_reply_failures_are_classified() -> None:
    plan = FaultPlan(
        responses={
            1: RejectCreate(code="rate_limit_exceeded", type="invalid_request_error"),
            2: RejectCreate(code="invalid_value", type="invalid_request_error"),
            3: NoAnswer(),
            4: FailResponse(code="server_error"),
            5: FailResponse(code="insufficient_quota"),
        }
    )
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=3, timeout=0.5) as h:
        rt = h.realtime_session
        assert rt is not None

        with pytest.raises(llm.RealtimeError) as rate_limited:
            await rt.generate_reply()
        assert rate_limited.value.code == "rate_limit_exceeded"
        assert rate_limited.value.retryable is True
        # no turn waits on this request: the session's own report reaches AgentSession
        assert [e.error.recoverable for e in h.errors] == [True]
        assert rate_limited.value.__cause__ is h.errors[0].error.error

        with pytest.raises(llm.RealtimeError) as rejected:
            await rt.generate_reply()
        assert rejected.value.code == "invalid_value" and rejected.value.retryable is False
        assert [e.error.recoverable for e in h.errors] == [True, True]

        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(llm.RealtimeError) as timed_out:
            await rt.generate_reply()
        assert timed_out.value.retryable is True
        assert loop.time() - t0 >= 0.5, "the timeout is conn_options.timeout"
        # reported as the provider's failures are, at once
        assert len(h.errors) == 3 and timed_out.value.__cause__ is h.errors[-1].error.error

        # the next request waits, bounded, for the unanswered one; then it fails
        ev = await asyncio.wait_for(rt.generate_reply(), 3.0)
        done = await ev.done()
        assert done is not None and isinstance(failed := done.error, llm.RealtimeError)
        assert failed.code == "server_error" and failed.retryable is True
        assert len(h.errors) == 4 and failed.__cause__ is h.errors[-1].error.error

        ev = await asyncio.wait_for(rt.generate_reply(), 3.0)
        done = await ev.done()
        assert done is not None and isinstance(fatal := done.error, llm.RealtimeError)
        assert fatal.retryable is False
        await h.wait_closed(what="close after a fatal response failure")
        assert [e.error.recoverable for e in h.errors] == [True, True, True, True, False]
        assert emu.num_connections == 1
        assert not emu.overlapping_creates

        # after the session ended, a request fails at once
        with pytest.raises(llm.RealtimeError) as closed:
            await asyncio.wait_for(rt.generate_reply(), 0.1)
        assert closed.value.retryable is False
    h.guard.assert_clean()


async def test_late_answer_to_a_timed_out_request_never_overlaps() -> None:
    # the first request is answered only after its timeout; the engine cancels that response
    # by id, and the next request waits until it is done instead of colliding with it
    plan = FaultPlan()
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=3, timeout=0.3) as h:
        rt = h.realtime_session
        assert isinstance(rt, engine.RealtimeSession)
        sent = rt.generate_reply()
        rt._discard_response_create("never-answered")  # as if an earlier request timed out
        second = rt.generate_reply()
        assert (await asyncio.wait_for(sent, 2.0)).response_id
        assert (await asyncio.wait_for(second, 2.0)).response_id
        assert not emu.overlapping_creates
    h.guard.assert_clean()
