"""A failed realtime response is asked again like a failed LLM completion, never re-spoken.

The retry loop shared by ``_realtime_reply_task`` and ``_realtime_generation_task`` is driven
by ``SessionConnectOptions.llm_conn_options`` and retries only a ``RealtimeError`` with
``retryable=True`` that came before any output reached the user and before any function call.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from livekit.agents import (
    NOT_GIVEN,
    Agent,
    AgentSession,
    APIConnectionError,
    APIConnectOptions,
    function_tool,
    llm,
)
from livekit.agents.llm import FunctionCall, RealtimeError, RealtimeModelError
from livekit.agents.metrics import RealtimeModelMetrics
from livekit.agents.telemetry import set_tracer_provider, trace_types, tracer
from livekit.agents.voice.agent_session import SessionConnectOptions
from livekit.agents.voice.events import CloseEvent, ErrorEvent, SpeechCreatedEvent

from .fake_realtime_session import (
    Attempt,
    PlayoutAudioOutput,
    ScriptedRealtimeModel,
    ScriptedRealtimeSession,
)

pytestmark = pytest.mark.unit

RETRY_INTERVAL = 0.3
# APIConnectOptions._interval_for_retry: the first retry waits 0.1 s, the next ones retry_interval
FIRST_INTERVAL = 0.1


class _Run:
    def __init__(self, session: AgentSession, model: ScriptedRealtimeModel) -> None:
        self.session = session
        self.model = model
        self.errors: list[ErrorEvent] = []
        self.closes: list[CloseEvent] = []
        self.metrics: list[RealtimeModelMetrics] = []
        self.speeches: list[SpeechCreatedEvent] = []
        session.on("error", self.errors.append)
        session.on("close", self.closes.append)
        session.on("speech_created", self.speeches.append)
        session.on(
            "metrics_collected",
            lambda ev: (
                self.metrics.append(ev.metrics)
                if isinstance(ev.metrics, RealtimeModelMetrics) and ev.metrics.request_id
                else None
            ),
        )

    @property
    def rt(self) -> ScriptedRealtimeSession:
        return self.model.rt

    def realtime_errors(self) -> list[RealtimeModelError]:
        return [ev.error for ev in self.errors if isinstance(ev.error, RealtimeModelError)]

    def recoverable(self) -> list[bool]:
        return [err.recoverable for err in self.realtime_errors()]

    def assistant_texts(self) -> list[str]:
        return [
            item.text_content or ""
            for item in self.session.history.items
            if item.type == "message" and item.role == "assistant"
        ]

    def reissue_delays(self) -> list[float]:
        """Time from each delivered failure to the request that followed it."""
        return [
            req.at - failed_at
            for failed_at, req in zip(self.rt.failures_at, self.rt.requests[1:], strict=False)
        ]


@contextlib.asynccontextmanager
async def _run(
    attempts: list[Attempt],
    *,
    max_retry: int = 3,
    retry_interval: float = RETRY_INTERVAL,
    max_unrecoverable_errors: int = 3,
    agent: Agent | None = None,
    reports_outcome: bool = True,
) -> AsyncIterator[_Run]:
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, ctx: loop_errors.append(ctx))

    model = ScriptedRealtimeModel(attempts, reports_outcome=reports_outcome)
    session: AgentSession = AgentSession(
        llm=model,
        conn_options=SessionConnectOptions(
            llm_conn_options=APIConnectOptions(max_retry=max_retry, retry_interval=retry_interval),
            max_unrecoverable_errors=max_unrecoverable_errors,
        ),
    )
    run = _Run(session, model)
    try:
        session.output.audio = PlayoutAudioOutput()
        await session.start(agent or Agent(instructions="You are a helpful assistant."))
        yield run
    finally:
        await session.aclose()
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()
        await asyncio.sleep(0)
        loop.set_exception_handler(previous_handler)
        never_retrieved = [
            ctx for ctx in loop_errors if "never retrieved" in ctx.get("message", "")
        ]
        assert not never_retrieved, never_retrieved

    assert run.rt.overlapping_requests == 0, "two response.create in flight"


def _code(error: RealtimeModelError) -> object:
    body = getattr(error.error, "body", None)
    return body.get("code") if isinstance(body, dict) else getattr(error.error, "code", None)


async def _reply(run: _Run, **kwargs: Any) -> Any:
    handle = run.session.generate_reply(**kwargs)
    await asyncio.wait_for(handle.wait_for_playout(), timeout=10)
    return handle


# -- retried ----------------------------------------------------------------------------------


async def test_retries_until_success() -> None:
    async with _run(
        [Attempt.fail(code="server_error"), Attempt.rejected(code="rate_limit_exceeded")]
    ) as run:
        handle = await _reply(run, instructions="greet the user", tool_choice="none")

        assert handle.exception() is None
        assert len(run.rt.requests) == 3
        # the same request every time
        assert {r.instructions for r in run.rt.requests} == {"greet the user"}
        assert {r.tool_choice for r in run.rt.requests} == {"none"}
        # one recoverable error per failure, none terminal
        assert run.recoverable() == [True, True]
        # the provider's error, as the session reported it (an APIError with its body)
        assert [_code(e) for e in run.realtime_errors()] == ["server_error", "rate_limit_exceeded"]
        # the recovered reply was played, and is the only one in the history
        assert run.assistant_texts() == ["hello there"]
        assert not run.closes

        delays = run.reissue_delays()
        assert len(delays) == 2
        for delay, interval in zip(delays, (FIRST_INTERVAL, RETRY_INTERVAL), strict=True):
            assert interval * 0.9 <= delay < interval + 0.25, delays


async def test_exhausted_ends_turn_with_one_terminal_error() -> None:
    async with _run([Attempt.fail(), Attempt.fail(), Attempt.fail()], max_retry=2) as run:
        handle = await _reply(run)

        assert len(run.rt.requests) == 3
        # the session's report of each attempt, then the turn's own that it gave up
        assert run.recoverable() == [True, True, True, False]
        exc = handle.exception()
        assert run.errors[-1].error.error is exc
        assert isinstance(exc, APIConnectionError)
        assert exc.message == "failed to generate realtime response after 3 attempts"
        assert isinstance(exc.__cause__, RealtimeError)
        assert exc.__cause__.retryable is True
        assert run.assistant_texts() == []
        # a failed turn, not a failed session: it counts like a failed LLM completion
        await asyncio.sleep(0.05)
        assert not run.closes


async def test_exhausted_turns_count_against_max_unrecoverable_errors() -> None:
    async with _run(
        [Attempt.fail(), Attempt.fail(), Attempt.fail()], max_retry=0, max_unrecoverable_errors=1
    ) as run:
        first = await _reply(run)
        assert isinstance(first.exception(), APIConnectionError)
        await asyncio.sleep(0.05)
        assert not run.closes

        run.session.generate_reply()
        for _ in range(100):
            if run.closes:
                break
            await asyncio.sleep(0.02)
        assert len(run.closes) == 1
        assert run.closes[0].error is not None
        assert run.recoverable() == [True, False, True, False]


async def test_max_retry_zero_disables_retry() -> None:
    async with _run([Attempt.fail(code="server_error")], max_retry=0) as run:
        handle = await _reply(run)

        assert len(run.rt.requests) == 1
        assert run.recoverable() == [True, False]
        exc = handle.exception()
        assert isinstance(exc, APIConnectionError) and "after 1 attempt" in str(exc)
        assert isinstance(exc.__cause__, RealtimeError) and exc.__cause__.code == "server_error"


async def test_server_created_failure_is_asked_again_for_the_same_turn() -> None:
    async with _run([Attempt.fail(), Attempt.fail()]) as run:
        run.rt.server_response()
        for _ in range(100):
            if run.speeches:
                break
            await asyncio.sleep(0.01)
        handle = run.speeches[0].speech_handle
        await asyncio.wait_for(handle.wait_for_playout(), timeout=10)

        assert handle.exception() is None
        # asked again twice, with the session defaults, as the server would have
        assert len(run.rt.requests) == 2
        assert all(r.instructions is NOT_GIVEN for r in run.rt.requests)
        assert all(r.tool_choice is NOT_GIVEN for r in run.rt.requests)
        assert run.recoverable() == [True, True]
        assert run.assistant_texts() == ["hello there"]
        # no user message was made up for the retry
        assert not [i for i in run.session.history.items if getattr(i, "role", None) == "user"]
        assert len(run.speeches) == 1


# -- clean re-issue -----------------------------------------------------------------------------


async def test_failed_response_item_is_deleted_and_never_in_history() -> None:
    async with _run([Attempt.fail()]) as run:
        await _reply(run)

        assert run.rt.deleted_items == ["item_1"]
        assert run.rt.chat_ctx.get_by_id("item_1") is None
        activity_ctx = run.session.current_agent.chat_ctx
        assert activity_ctx.get_by_id("item_1") is None
        assert run.session.history.get_by_id("item_1") is None
        # the answer that replaced it is kept everywhere
        assert run.session.history.get_by_id("item_2") is not None
        assert run.rt.chat_ctx.get_by_id("item_2") is not None


async def test_every_attempt_reports_its_metrics() -> None:
    async with _run([Attempt.fail(), Attempt.rejected()]) as run:
        await _reply(run)
        await asyncio.sleep(0.05)

        # the rejected attempt never created a response
        assert run.rt.response_ids == ["resp_1", "resp_2"]
        assert sorted(m.request_id for m in run.metrics) == ["resp_1", "resp_2"]


@pytest.fixture
def span_exporter() -> Iterator[InMemorySpanExporter]:
    original_provider = tracer._tracer_provider
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        set_tracer_provider(original_provider)
        provider.shutdown()


async def test_agent_turn_records_retry_count(span_exporter: InMemorySpanExporter) -> None:
    async with _run([Attempt.fail(), Attempt.fail()]) as run:
        await _reply(run)

    spans = span_exporter.get_finished_spans()
    (turn,) = [s for s in spans if s.name == "agent_turn"]
    assert turn.attributes is not None
    # a later tool step would overwrite it on the shared turn span: it is on each step's span
    assert trace_types.ATTR_RETRY_COUNT not in turn.attributes
    inference = [s for s in spans if s.name == "realtime_inference"]
    assert [s.attributes[trace_types.ATTR_RETRY_COUNT] for s in inference if s.attributes] == [
        0,
        1,
        2,
    ]


@pytest.mark.review(round=1)
async def test_every_attempt_has_its_own_inference_span(
    span_exporter: InMemorySpanExporter,
) -> None:
    # the first request is rejected before any response exists: it is an attempt all the same
    async with _run([Attempt.rejected(), Attempt.fail()]) as run:
        await _reply(run)

    spans = span_exporter.get_finished_spans()
    inference = [s for s in spans if s.name == "realtime_inference"]
    counts = [s.attributes[trace_types.ATTR_RETRY_COUNT] for s in inference if s.attributes]
    assert counts == [0, 1, 2], f"realtime_inference spans per attempt: {counts}"


@pytest.mark.review(round=1)
async def test_interrupt_while_the_failed_items_are_removed_does_not_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    removing = asyncio.Event()
    async with _run([Attempt.fail()]) as run:
        run.rt.removal_hold = removing
        handle = run.session.generate_reply()
        for _ in range(400):
            if run.rt.removals_started:
                break
            await asyncio.sleep(0.005)
        assert run.rt.removals_started, "the failed response's item was not removed"

        caplog.clear()
        run.session.interrupt()
        removing.set()
        await asyncio.wait_for(handle.wait_for_playout(), timeout=2)

        retrying = [r for r in caplog.records if "retrying" in r.getMessage()]
        assert not retrying, "logged a retry for a turn the user interrupted"
        assert len(run.rt.requests) == 1
        assert handle.interrupted and handle.exception() is None
        assert run.recoverable() == [True]


@pytest.mark.review(round=1)
async def test_interrupt_as_the_outcome_fails_sets_no_error_on_the_speech() -> None:
    ended = asyncio.Event()
    heard = Attempt(
        text="hello th",
        audio=0.05,
        error=RealtimeError("response failed", code="server_error", retryable=True),
        outcome_hold=ended,
    )
    async with _run([heard]) as run:
        handle = run.session.generate_reply()
        for _ in range(400):
            if run.assistant_texts() or run.rt._active is None:
                break
            await asyncio.sleep(0.005)
        # the 50 ms reply plays out in real time; then the loop waits for its outcome
        await asyncio.sleep(0.4)
        ended.set()
        run.session.interrupt()
        await asyncio.wait_for(handle.wait_for_playout(), timeout=2)

        assert handle.interrupted
        assert handle.exception() is None, (
            f"the interrupted speech ended with {handle.exception()!r}"
        )


# -- not retried ----------------------------------------------------------------------------------


async def test_no_retry_after_output_reached_the_user() -> None:
    heard = Attempt(
        text="hello th",
        audio=0.05,
        error=RealtimeError("response failed", code="server_error", retryable=True),
    )
    async with _run([heard]) as run:
        handle = await _reply(run)

        assert len(run.rt.requests) == 1
        assert run.recoverable() == [True, False]
        assert isinstance(handle.exception(), APIConnectionError)
        # what the user heard is kept, as an interrupted message
        (msg,) = [
            i for i in run.session.history.items if i.type == "message" and i.role == "assistant"
        ]
        assert msg.text_content == "hello th"
        assert msg.interrupted
        assert run.rt.deleted_items == []


async def test_no_retry_after_a_function_call() -> None:
    calls: list[str] = []

    class _ToolAgent(Agent):
        def __init__(self) -> None:
            super().__init__(instructions="You look things up.")

        @function_tool
        async def lookup(self) -> str:
            """Look something up."""
            calls.append("lookup")
            return "found"

    called = Attempt(
        message=False,
        function_call=FunctionCall(call_id="call_1", name="lookup", arguments="{}"),
        error=RealtimeError("response failed", code="server_error", retryable=True),
    )
    async with _run([called], agent=_ToolAgent()) as run:
        handle = await _reply(run)

        assert calls == ["lookup"]
        # the failed response is not asked again; only the tool's reply is asked for. The turn
        # carries on, so only the session's recoverable report of the attempt is seen
        assert len(run.rt.requests) == 2
        assert run.recoverable() == [True]
        assert handle.exception() is None
        assert run.assistant_texts() == ["hello there"]


@pytest.mark.parametrize("retryable", [False])
@pytest.mark.parametrize("rejected", [True, False])
async def test_not_retryable_is_not_retried(retryable: bool, rejected: bool) -> None:
    attempt = (
        Attempt.rejected(retryable=retryable, code="invalid_value")
        if rejected
        else Attempt.fail(retryable=retryable, code="invalid_value")
    )
    async with _run([attempt]) as run:
        handle = await _reply(run)

        assert len(run.rt.requests) == 1
        # a request the server refused ends the turn, not the session: one error, recoverable,
        # as before (it does not count against max_unrecoverable_errors)
        assert run.recoverable() == [True]
        exc = handle.exception()
        assert isinstance(exc, RealtimeError) and exc.code == "invalid_value"
        assert not run.closes


async def test_fatal_code_is_not_retried() -> None:
    async with _run([Attempt.rejected(retryable=False, code="insufficient_quota")]) as run:
        run.session.generate_reply()
        for _ in range(100):
            if run.closes:
                break
            await asyncio.sleep(0.02)

        assert len(run.rt.requests) == 1
        assert run.recoverable() == [False]
        assert len(run.closes) == 1


async def test_plugin_without_outcome_behaves_as_before() -> None:
    async with _run([Attempt.fail()], reports_outcome=False) as run:
        handle = await _reply(run)

        assert len(run.rt.requests) == 1
        # the plugin's own report reaches the session unchanged, and nothing else
        assert run.recoverable() == [True]
        assert handle.exception() is None
        assert run.rt.deleted_items == []


# -- abort ------------------------------------------------------------------------------------------


async def _wait_for_errors(run: _Run, n: int) -> None:
    for _ in range(500):
        if len(run.errors) >= n:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"expected {n} errors, got {len(run.errors)}")


def _pending_sleeps() -> list[asyncio.Task[Any]]:
    return [
        t
        for t in asyncio.all_tasks()
        if not t.done() and getattr(t.get_coro(), "__qualname__", "") == "sleep"
    ]


async def test_interrupt_during_backoff_stops_the_retry() -> None:
    async with _run([Attempt.fail(), Attempt.fail()], retry_interval=5.0) as run:
        handle = run.session.generate_reply()
        # the second failure backs off retry_interval (5 s)
        await _wait_for_errors(run, 2)
        started = time.perf_counter()
        run.session.interrupt()
        await asyncio.wait_for(handle.wait_for_playout(), timeout=1)
        assert time.perf_counter() - started < 0.5

        await asyncio.sleep(0.2)
        assert len(run.rt.requests) == 2
        assert run.recoverable() == [True, True]
        assert handle.interrupted
        assert not _pending_sleeps()


async def test_interrupt_while_the_retry_is_pending_withdraws_it() -> None:
    unanswered = asyncio.Event()
    async with _run([Attempt.fail(), Attempt(hold=unanswered)]) as run:
        handle = run.session.generate_reply()
        for _ in range(200):
            if len(run.rt.requests) == 2:
                break
            await asyncio.sleep(0.005)
        assert len(run.rt.requests) == 2

        run.session.interrupt()
        await asyncio.wait_for(handle.wait_for_playout(), timeout=1)

        assert run.rt.cancelled_requests == 1
        assert run.recoverable() == [True]
        assert run.assistant_texts() == []
        unanswered.set()
        await asyncio.sleep(0.05)
        assert len(run.rt.requests) == 2


async def test_aclose_during_backoff_stops_the_retry() -> None:
    async with _run([Attempt.fail(), Attempt.fail()], retry_interval=5.0) as run:
        handle = run.session.generate_reply()
        await _wait_for_errors(run, 2)
        started = time.perf_counter()
        await asyncio.wait_for(run.session.aclose(), timeout=2)
        assert time.perf_counter() - started < 1.0
        assert handle.done()

        await asyncio.sleep(0.2)
        assert len(run.rt.requests) == 2
        assert run.recoverable() == [True, True]
        assert len(run.closes) == 1
        assert not _pending_sleeps()


# -- llm.RealtimeError stays the public contract -------------------------------------------------


def test_realtime_error_defaults_to_unclassified() -> None:
    assert llm.RealtimeError("boom").retryable is False
