"""Review round 1: the defects a maintainer-style review found in the 1.8.9 series, and the
error contract they are fixed under.

Each ``review``-marked test reproduces one defect of the series as it stood before the fix
(``1.8.9+rtretry.9``) and fails there for the reason its message names; the ``contract``
tests prove the six points of the error contract through a real ``AgentSession`` on the
emulator:

1. a direct listener of the ``RealtimeSession`` sees every provider failure at once,
   classified (upstream's contract);
2. ``AgentSession`` listeners see the pipeline's contract: one error per failed attempt,
   ``recoverable=True`` while the turn asks again, ``False`` when it gives up; the error is the
   provider's ``APIError`` with its body;
3. one cause, one event;
4. a turn that carries on with its tool emits no terminal error;
5. turn failures count against ``max_unrecoverable_errors`` like pipeline LLM failures;
6. ``RealtimeModelFallbackAdapter`` fails over when a turn exhausts its attempts.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Iterator
from typing import Any

import pytest

from livekit.agents import (
    Agent,
    APIConnectionError,
    APIError,
    function_tool,
    llm,
)
from livekit.agents.llm._realtime import openai as engine
from livekit.agents.voice.events import AgentStateChangedEvent, ErrorEvent

from .harness import SessionHarness
from .realtime_emulator import (
    AcceptThenClose,
    CloseMidStream,
    ErrorThenClose,
    FailResponse,
    FaultPlan,
    FunctionCall,
    HangHandshake,
    Incomplete,
    NoAnswer,
    RateLimit,
    RealtimeEmulator,
    RejectCreate,
    RejectUpgrade,
    Reply,
    SlowHandshake,
)

pytestmark = pytest.mark.unit
review = pytest.mark.review(round=1)


def _code(event: ErrorEvent) -> object:
    assert isinstance(event.error, llm.RealtimeModelError)
    return engine._error_field(getattr(event.error.error, "body", None), "code")


async def _done(h: SessionHarness, handle: Any, *, what: str, timeout: float = 10.0) -> None:
    await h.wait_for(handle.done, timeout=timeout, what=what)


# -- defects --------------------------------------------------------------------------------------


@review
@pytest.mark.parametrize("reason", ["max_output_tokens", "content_filter"])
async def test_incomplete_response_is_a_normal_end(reason: str) -> None:
    plan = FaultPlan(responses={1: Incomplete(reason=reason)})  # type: ignore[arg-type]
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu) as h:
        try:
            await asyncio.wait_for(h.session.run(user_input="tell me everything"), 10.0)
        except llm.RealtimeError as e:
            raise AssertionError(f"an incomplete response failed the turn: {e!r}") from None

        (message,) = h.assistant_messages()
        assert message.text_content == emu.plan.reply.transcript
        assert not message.interrupted, "a complete reply ending incomplete read as interrupted"
        assert not h.errors, h.describe_errors()
        assert emu.num_response_creates == 1
    h.guard.assert_clean()


@review
async def test_draining_shutdown_during_backoff_lets_the_retry_finish() -> None:
    # the first retry waits 0.1 s, the second retry_interval: drain in the middle of that
    plan = FaultPlan(responses={1: FailResponse(), 2: FailResponse()})
    async with (
        RealtimeEmulator(plan) as emu,
        SessionHarness(emu, max_retry=3, retry_interval=0.5) as h,
    ):
        handle = h.session.generate_reply(instructions="greet the user")
        await h.wait_for(lambda: len(h.errors) == 2, what="the second attempt to fail")
        h.session.shutdown(drain=True)
        await h.wait_closed(what="the drained session to close")

        assert emu.num_response_creates == 3, (
            f"the drain dropped the retry: {emu.num_response_creates} response.create"
        )
        assert handle.done() and handle.exception() is None, handle.exception()
        assert h.audio.frames, "the retried reply was not played before the session closed"
    h.guard.assert_clean()


@review
async def test_closing_without_drain_during_backoff_ends_the_turn_with_its_error() -> None:
    # the first retry waits 0.1 s, the second retry_interval: close in the middle of that
    plan = FaultPlan(responses={1: FailResponse(), 2: FailResponse()})
    async with (
        RealtimeEmulator(plan) as emu,
        SessionHarness(emu, max_retry=3, retry_interval=0.5) as h,
    ):
        handle = h.session.generate_reply(instructions="greet the user")
        await h.wait_for(lambda: len(h.errors) == 2, what="the second attempt to fail")
        h.session.shutdown(drain=False)
        await _done(h, handle, what="the speech to end")

        assert handle.exception() is not None, "the turn was dropped silently by the close"
        assert emu.num_response_creates == 2
    h.guard.assert_clean()


@review
async def test_request_queued_during_a_slow_reconnect_is_sent_once() -> None:
    # connection 1 is dropped; connection 2 fails at once, so connection 3 comes after a full
    # retry_interval, and its handshake is slow: together longer than the request timeout
    plan = FaultPlan(connections={2: AcceptThenClose(), 3: SlowHandshake(seconds=0.6)})
    async with (
        RealtimeEmulator(plan) as emu,
        SessionHarness(emu, max_retry=3, retry_interval=0.6, timeout=1.0) as h,
    ):
        await emu.wait_connected()
        await emu.drop_connection()
        await emu.wait_for(lambda: emu.num_connections >= 2, what="the reconnection")
        handle = h.session.generate_reply(instructions="greet the user")
        await h.wait_for_speech(handle, what="the reply after the reconnection", timeout=10.0)

        assert emu.num_response_creates == 1, (
            f"{emu.num_response_creates} response.create for one reply: a request queued during "
            "the reconnection timed out before it was sent, and was asked again"
        )
        assert not emu.overlapping_creates
        assert len(h.speeches) == 1, f"{len(h.speeches)} speeches: an orphan response played"
        assert handle.exception() is None
    h.guard.assert_clean()


def _reconnect_waits(caplog: pytest.LogCaptureFixture) -> list[float]:
    return [
        float(r.__dict__["rate_limit_wait"])
        for r in caplog.records
        if hasattr(r, "rate_limit_wait")
    ]


@review
async def test_a_completed_response_ends_the_rate_limited_state(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limit = RateLimit(name="requests", limit=100, remaining=0, reset_seconds=1.0)
    plan = FaultPlan(responses={1: RejectCreate(rate_limits=(limit,))}, rate_limits=None)
    caplog.set_level(logging.WARNING, logger="livekit.agents")
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=3) as h:
        handle = h.session.generate_reply(instructions="greet the user")
        await h.wait_for_speech(handle, what="the reply after the rate limit")
        assert emu.responses[-1].status == "completed"

        # an unrelated drop: nothing is rate limited any more
        await emu.drop_connection()
        await emu.wait_for(lambda: len(emu.accepted_connections) >= 2, what="the reconnection")
        waits = _reconnect_waits(caplog)
        assert waits == [0.0], (
            f"the reconnection after a completed response waited for a stale rate limit: {waits}"
        )
    h.guard.assert_clean()


@review
async def test_response_retry_waits_for_the_announced_reset() -> None:
    reset = 0.8
    limit = RateLimit(name="requests", limit=100, remaining=0, reset_seconds=reset)
    plan = FaultPlan(responses={1: RejectCreate(rate_limits=(limit,))})
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=3) as h:
        handle = h.session.generate_reply(instructions="greet the user")
        await h.wait_for_speech(handle, what="the reply after the rate limit")

        first, second = (e.t for e in emu.response_creates)
        assert second - first >= reset * 0.95, (
            f"asked again {second - first:.2f}s after a rate limit announced to reset in {reset}s"
        )
    h.guard.assert_clean()


def _holds(obj: object, secret: str, *, depth: int = 0, seen: set[int] | None = None) -> str | None:
    """Where ``secret`` is reachable from an error: its chain, attributes, arguments, and the
    locals of its traceback's frames (but not the objects those frames run on)."""
    seen = set() if seen is None else seen
    if depth > 8 or id(obj) in seen:
        return None
    seen.add(id(obj))
    if isinstance(obj, (str, bytes)):
        return (
            "value"
            if secret in (obj if isinstance(obj, str) else obj.decode(errors="replace"))
            else None
        )
    children: list[tuple[str, object]] = []
    if isinstance(obj, BaseException):
        children += [("__cause__", obj.__cause__), ("__context__", obj.__context__)]
        children += [(f"args[{i}]", a) for i, a in enumerate(obj.args)]
        tb = obj.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            children += [
                (f"{frame.f_code.co_name}.{k}", v) for k, v in frame.f_locals.items() if k != "self"
            ]
            tb = tb.tb_next
    if isinstance(obj, dict) or hasattr(obj, "items") and callable(obj.items):
        try:
            children += [(f"[{k!r}]", v) for k, v in obj.items()]  # type: ignore[attr-defined]
        except Exception:
            pass
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children += [(f"[{i}]", v) for i, v in enumerate(obj)]
    if hasattr(obj, "__dict__") and not isinstance(obj, (type, types.ModuleType)):
        module = type(obj).__module__
        # the session's own objects legitimately hold the key; errors and what they carry do not
        if isinstance(obj, BaseException) or not module.startswith("livekit"):
            children += list(vars(obj).items())
    for name, child in children:
        if child is None or isinstance(child, (int, float, bool, type, types.ModuleType)):
            continue
        if (where := _holds(child, secret, depth=depth + 1, seen=seen)) is not None:
            return f"{name}.{where}"
    return None


@review
async def test_recorded_errors_hold_no_api_key() -> None:
    plan = FaultPlan(every_connection=RejectUpgrade(status=401))
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=3) as h:
        await h.wait_closed(what="the session to close after HTTP 401")
        assert h.errors and h.close_events
        for event in [*h.errors, *h.close_events]:
            recorded = event.error
            assert recorded is not None
            where = _holds(recorded.error, emu.api_key)
            assert where is None, f"a recorded error holds the API key at {where}"
    h.guard.assert_clean()


@review
async def test_provider_message_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    secret = "the user said: my card number is 4111"
    plan = FaultPlan(responses={1: RejectCreate(code="invalid_value", message=secret)})
    caplog.set_level(logging.DEBUG, logger="livekit.agents")
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=3) as h:
        handle = h.session.generate_reply(instructions="greet the user")
        await _done(h, handle, what="the rejected turn to end")
    for record in caplog.records:
        assert secret not in record.getMessage(), f"logged: {record.getMessage()!r}"
        leaked = [
            k for k, v in vars(record).items() if secret in str(v) and not k.startswith("lk.pii.")
        ]
        assert not leaked, f"the provider's message is logged under {leaked}"
    h.guard.assert_clean()


@review
async def test_reconnect_warning_keeps_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    plan = FaultPlan(connections={1: AcceptThenClose(after=0.2)})
    caplog.set_level(logging.WARNING, logger="livekit.agents")
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=3) as h:
        await emu.wait_for(lambda: len(emu.accepted_connections) >= 2, what="the reconnection")
        (record,) = [r for r in caplog.records if hasattr(r, "rate_limit_wait")]
        assert record.exc_info is not None
        assert record.exc_info[2] is not None, "the reconnect warning lost its traceback"
        assert not h.closed.is_set()
    h.guard.assert_clean()


@pytest.fixture
def short_healthy_period(monkeypatch: pytest.MonkeyPatch) -> Iterator[float]:
    monkeypatch.setattr(engine, "_HEALTHY_CONNECTION_SECONDS", 0.2)
    yield 0.2


@review
async def test_a_server_failing_late_is_not_reconnected_for_ever(
    short_healthy_period: float,
) -> None:
    # every connection reports an error at once and is closed only after the healthy period:
    # staying up proves nothing once it failed. (A connection that served the whole period
    # before its failure did prove healthy, and is reconnected: the verdict is the one reached
    # when the period elapsed, see docs/connection-rules.md.)
    plan = FaultPlan(every_connection=ErrorThenClose(close_after=short_healthy_period * 1.5))
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=2) as h:
        await h.wait_for(
            lambda: h.closed.is_set() or emu.num_connections > 3,
            timeout=15.0,
            what="the session to give up on a server that fails late",
        )
        assert emu.num_connections == 3, (
            f"{emu.num_connections} connections to a server that fails every one (max_retry=2)"
        )
        await h.wait_closed(what="close after the reconnection gave up")
    h.guard.assert_clean()


@review
async def test_agent_is_thinking_while_a_response_is_retried() -> None:
    plan = FaultPlan(responses={1: FailResponse()})
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, retry_interval=0.3) as h:
        handle = h.session.generate_reply(instructions="greet the user")
        await h.wait_for_speech(handle, what="the retried reply")

        first_error = next(i for i, ev in enumerate(h.timeline) if isinstance(ev, ErrorEvent))
        states = [
            ev.new_state
            for ev in h.timeline[first_error:]
            if isinstance(ev, AgentStateChangedEvent)
        ]
        assert states[:2] == ["thinking", "speaking"], (
            f"agent states from the failure on: {states}; want thinking while it asks again"
        )
        assert states[-1] == "listening"
        assert emu.num_response_creates == 2
    h.guard.assert_clean()


# -- the contract -----------------------------------------------------------------------------------


@review
async def test_contract_1_direct_listeners_see_every_failure_at_once() -> None:
    plan = FaultPlan(responses={1: FailResponse(code="server_error")})
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=3) as h:
        rt = h.realtime_session
        assert rt is not None
        seen: list[llm.RealtimeModelError] = []
        rt.on("error", seen.append)

        # a failed response that a turn retries: still reported on the session, classified
        handle = h.session.generate_reply(instructions="greet the user")
        await h.wait_for_speech(handle, what="the retried reply")
        assert [e.recoverable for e in seen] == [True], (
            f"the session reported {[e.recoverable for e in seen]} for a failed response"
        )
        assert isinstance(seen[0].error, APIError)
        assert engine._error_field(seen[0].error.body, "code") == "server_error"

        # a transient error event: reported at once, not held back for a close
        await emu.send_event(
            {"type": "error", "error": {"type": "server_error", "code": "server_error"}}
        )
        await h.wait_for(lambda: len(seen) == 2, timeout=0.5, what="the error event, at once")
        assert seen[1].recoverable is True
    h.guard.assert_clean()


@review
async def test_contract_2_one_error_per_failed_attempt_as_the_pipeline() -> None:
    plan = FaultPlan(responses={1: FailResponse(), 2: FailResponse(code="rate_limit_exceeded")})
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=3) as h:
        handle = h.session.generate_reply(instructions="greet the user")
        await h.wait_for_speech(handle, what="the reply on the third attempt")

        assert [e.error.recoverable for e in h.errors] == [True, True], h.describe_errors()
        for event in h.errors:
            assert isinstance(event.error, llm.RealtimeModelError)
            assert isinstance(event.error.error, APIError), (
                f"AgentSession listeners got {event.error.error!r}, not the provider's APIError"
            )
        assert [_code(e) for e in h.errors] == ["server_error", "rate_limit_exceeded"]
        assert handle.exception() is None
    h.guard.assert_clean()


@review
@pytest.mark.parametrize("max_retry", [0, 2])
async def test_contract_2_the_attempt_that_gives_up_is_not_recoverable(max_retry: int) -> None:
    plan = FaultPlan(every_response=FailResponse())
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=max_retry) as h:
        handle = h.session.generate_reply(instructions="greet the user")
        await _done(h, handle, what="the turn to give up")

        # each attempt as the session reported it, then the turn's own report that it gave up
        # (review round 2: no layer intercepts another's errors)
        assert [e.error.recoverable for e in h.errors] == [True] * (max_retry + 1) + [False], (
            h.describe_errors()
        )
        got = [type(e.error.error).__name__ for e in h.errors]  # type: ignore[union-attr]
        assert got[:-1] == ["APIError"] * (max_retry + 1), f"AgentSession listeners got {got}"
        exc = handle.exception()
        assert h.errors[-1].error.error is exc, "the give-up is not the error the turn ends with"
        # its own error, even after one attempt (review round 3: not the session's report again),
        # chained from the last failure
        assert isinstance(exc, APIConnectionError), exc
        attempts = max_retry + 1
        assert str(exc.message).endswith(f"after {attempts} attempt{'s' if attempts > 1 else ''}")
        assert isinstance(exc.__cause__, llm.RealtimeError) and exc.__cause__.code == "server_error"
        assert emu.num_response_creates == max_retry + 1
        assert not h.closed.is_set(), "one failed turn closed the session"
    h.guard.assert_clean()


@review
async def test_contract_3_a_socket_lost_mid_response_is_one_error() -> None:
    plan = FaultPlan(responses={1: CloseMidStream(after_audio_deltas=0)})
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=3) as h:
        handle = h.session.generate_reply(instructions="greet the user")
        await h.wait_for_speech(handle, what="the reply after the reconnection")

        assert len(h.errors) == 1, f"one lost socket, {len(h.errors)} errors: {h.describe_errors()}"
        assert h.errors[0].error.recoverable
        assert emu.num_response_creates == 2 and emu.num_connections == 2
    h.guard.assert_clean()


@review
async def test_contract_3_a_connection_fault_failing_a_pending_reply_is_one_error() -> None:
    # the socket is lost, the reconnection hangs until the engine gives up, and a reply is
    # asked for meanwhile
    plan = FaultPlan(connections={2: HangHandshake(), 3: HangHandshake()})
    async with (
        RealtimeEmulator(plan) as emu,
        SessionHarness(emu, max_retry=2, timeout=0.5) as h,
    ):
        await emu.wait_connected()
        await emu.drop_connection()
        handle = h.session.generate_reply(instructions="greet the user")
        await h.wait_closed(what="the session to give up reconnecting")
        await _done(h, handle, what="the pending reply to end")

        # one error per failed connection; the pending reply adds none
        assert [e.error.recoverable for e in h.errors] == [True, True, False], (
            f"{emu.num_connections} connections: {h.describe_errors()}"
        )
        assert emu.num_response_creates == 0, "a request was sent while no connection was up"
    h.guard.assert_clean()


class _LookupAgent(Agent):
    def __init__(self) -> None:
        super().__init__(instructions="You look things up.")
        self.calls = 0

    @function_tool
    async def lookup(self) -> str:
        """Look something up."""
        self.calls += 1
        return "found"


@review
async def test_contract_4_a_turn_that_carries_on_emits_no_terminal_error() -> None:
    agent = _LookupAgent()
    plan = FaultPlan(responses={1: FunctionCall("lookup", then_fail=FailResponse())})
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, agent=agent) as h:
        handle = h.session.generate_reply(instructions="look it up")
        await h.wait_for(
            lambda: emu.num_response_creates >= 2 and h.audio.frames,
            what="the tool's reply to play",
        )
        await _done(h, handle, what="the turn to end")

        assert agent.calls == 1
        assert [e.error.recoverable for e in h.errors] == [True], (
            f"the turn carried on with its tool: {h.describe_errors()}"
        )
        assert handle.exception() is None
    h.guard.assert_clean()


async def test_contract_5_turn_failures_count_against_max_unrecoverable_errors() -> None:
    plan = FaultPlan(every_response=FailResponse())
    async with (
        RealtimeEmulator(plan) as emu,
        SessionHarness(emu, max_retry=1, max_unrecoverable_errors=1) as h,
    ):
        first = h.session.generate_reply(instructions="greet the user")
        await _done(h, first, what="the first turn to give up")
        await asyncio.sleep(0.1)
        assert not h.closed.is_set(), "the first exhausted turn closed the session"

        second = h.session.generate_reply(instructions="greet the user")
        await _done(h, second, what="the second turn to give up")
        await h.wait_closed(what="the second exhausted turn to close the session")
        assert emu.num_connections == 1, "a turn failure is not a connection failure"
    h.guard.assert_clean()


@review
async def test_contract_6_the_fallback_adapter_fails_over_an_exhausted_turn() -> None:
    primary_plan = FaultPlan(every_response=FailResponse())
    async with (
        RealtimeEmulator(primary_plan) as primary,
        RealtimeEmulator() as secondary,
        SessionHarness(primary, fallback=secondary, max_retry=1, max_unrecoverable_errors=1) as h,
    ):
        first = h.session.generate_reply(instructions="greet the user")
        await _done(h, first, what="the first turn on the failing primary")
        await secondary.wait_for(
            lambda: secondary.num_response_creates >= 1, what="the adapter to fail over"
        )
        await h.wait_for(lambda: h.audio.frames, what="the reply on the fallback model")

        second = h.session.generate_reply(instructions="and again")
        await h.wait_for_speech(second, what="a second turn on the fallback model")
        assert not h.closed.is_set(), f"closed: {h.describe_errors()}"
        assert primary.num_response_creates == 2  # max_retry + 1 on the primary, once
        assert all(e.error.recoverable for e in h.errors), h.describe_errors()
    h.guard.assert_clean()


# -- found reviewing the fix (guards; the series before it had other defects on these paths) ---


async def _state_after(h: SessionHarness, handle: Any) -> str:
    await _done(h, handle, what="the speech to end")
    await h.wait_for(
        lambda: h.session.agent_state != "thinking", timeout=2.0, what="the state to settle"
    )
    return h.session.agent_state


@pytest.mark.parametrize("moment", ["backoff", "pending request"])
async def test_an_interrupt_during_a_retry_leaves_the_agent_listening(moment: str) -> None:
    second = NoAnswer() if moment == "pending request" else FailResponse()
    plan = FaultPlan(responses={1: FailResponse(), 2: second})
    async with (
        RealtimeEmulator(plan) as emu,
        SessionHarness(emu, retry_interval=0.05, timeout=5.0) as h,
    ):
        handle = h.session.generate_reply(instructions="greet the user")
        n = 1 if moment == "backoff" else 2
        await emu.wait_for(lambda: emu.num_response_creates >= n, what="the attempt to interrupt")
        if moment == "backoff":
            await h.wait_for(lambda: h.session.agent_state == "thinking", what="the backoff")
        h.session.interrupt()
        assert await _state_after(h, handle) == "listening"
        assert handle.interrupted
    h.guard.assert_clean()


async def test_a_failure_withheld_for_an_interrupted_turn_is_still_reported() -> None:
    plan = FaultPlan(
        responses={1: FailResponse(after_audio_deltas=5)},
        reply=Reply(audio_deltas=5, chunk_ms=200),
    )
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, playout_speed=1.0) as h:
        rt = h.realtime_session
        assert rt is not None
        seen: list[llm.RealtimeModelError] = []
        rt.on("error", seen.append)
        handle = h.session.generate_reply(instructions="greet the user")
        await h.wait_for(lambda: seen and h.audio.frames, what="the failure during playout")
        h.session.interrupt()
        await _done(h, handle, what="the interrupted speech to end")
        await h.wait_for(lambda: h.errors, timeout=2.0, what="the failure to reach AgentSession")
        assert [e.error.recoverable for e in h.errors] == [True], h.describe_errors()
        assert handle.exception() is None
    h.guard.assert_clean()


async def test_a_refused_request_ends_the_turn_without_counting() -> None:
    refused = RejectCreate(code="conversation_already_has_active_response")
    plan = FaultPlan(responses={1: refused, 2: refused})
    async with (
        RealtimeEmulator(plan) as emu,
        SessionHarness(emu, max_unrecoverable_errors=1) as h,
    ):
        for _ in range(2):
            handle = h.session.generate_reply(instructions="greet the user")
            await _done(h, handle, what="the refused turn to end")
            assert isinstance(handle.exception(), llm.RealtimeError)
        await asyncio.sleep(0.1)
        assert [e.error.recoverable for e in h.errors] == [True, True], h.describe_errors()
        assert not h.closed.is_set(), "benign refusals closed the session"
        assert emu.num_response_creates == 2
    h.guard.assert_clean()


@pytest.mark.parametrize(
    "fault",
    [FailResponse(code="invalid_value"), FailResponse(after_audio_deltas=2)],
    ids=["refused", "after-output"],
)
async def test_the_fallback_adapter_keeps_its_model_for_a_turn_level_failure(
    fault: FailResponse,
) -> None:
    async with (
        RealtimeEmulator(FaultPlan(responses={1: fault})) as primary,
        RealtimeEmulator() as secondary,
        SessionHarness(primary, fallback=secondary, max_retry=3) as h,
    ):
        handle = h.session.generate_reply(instructions="greet the user")
        await _done(h, handle, what="the turn to end")
        await asyncio.sleep(0.3)
        assert secondary.num_response_creates == 0, "swapped the model for one turn's failure"
    h.guard.assert_clean()


@pytest.mark.parametrize("max_retry", [0, 1])
async def test_the_fallback_adapter_reissues_the_reply_whatever_max_retry(max_retry: int) -> None:
    async with (
        RealtimeEmulator(FaultPlan(every_response=FailResponse())) as primary,
        RealtimeEmulator() as secondary,
        SessionHarness(primary, fallback=secondary, max_retry=max_retry) as h,
    ):
        handle = h.session.generate_reply(instructions="greet the user")
        await _done(h, handle, what="the turn on the failing primary")
        await secondary.wait_for(
            lambda: secondary.num_response_creates >= 1, what="the reply re-issued"
        )
        await h.wait_for(lambda: h.audio.frames, what="the reply on the fallback")
    h.guard.assert_clean()


async def test_closing_without_drain_while_a_retry_is_pending_ends_the_turn_with_its_error() -> (
    None
):
    plan = FaultPlan(responses={1: FailResponse(), 2: NoAnswer()})
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, timeout=5.0) as h:
        handle = h.session.generate_reply(instructions="greet the user")
        await emu.wait_for(lambda: emu.num_response_creates >= 2, what="the retry's request")
        h.session.shutdown(drain=False)
        await _done(h, handle, what="the speech to end")
        assert handle.exception() is not None, "a turn with a failed attempt ended silently"
    h.guard.assert_clean()
