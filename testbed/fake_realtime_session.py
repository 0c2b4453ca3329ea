"""A hermetic realtime model whose responses are scripted one attempt at a time.

Each ``generate_reply`` (or server-created response) consumes the next :class:`Attempt`,
which says what the response does before it ends and how it ends: the ``generate_reply``
future rejected, a response created that fails (before or after its audio, after a function
call), or one that completes. As the ``llm`` base classes ask of a plugin, the session reports
how each response ended through ``GenerationCreatedEvent.done()`` with a
``RealtimeError(code=..., retryable=...)``, and every failure on its own ``error`` event in the
same step (recoverable unless fatal), the ``RealtimeError`` chained from (``__cause__``) the
error it reported. ``reports_errors=False`` makes a plugin that reports failures only through
``done()``.

It records what the framework did to it: every ``generate_reply`` with its arguments and
time, overlapping requests, interruptions, and the items deleted from the conversation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from typing import Any, Literal

from livekit import rtc
from livekit.agents import NOT_GIVEN, APIError, NotGivenOr, utils
from livekit.agents.llm import (
    ChatContext,
    ChatMessage,
    FunctionCall,
    GenerationCreatedEvent,
    MessageGeneration,
    RealtimeCapabilities,
    RealtimeError,
    RealtimeModel,
    RealtimeModelError,
    RealtimeSession,
    RemoteItemAddedEvent,
)
from livekit.agents.llm.tool_context import Tool, ToolChoice, ToolContext
from livekit.agents.metrics import RealtimeModelMetrics
from livekit.agents.voice.io import AudioOutput, AudioOutputCapabilities

SAMPLE_RATE = 24000
FATAL_CODES = frozenset({"insufficient_quota", "invalid_api_key"})


@dataclass
class Attempt:
    """What one response does, in order: audio and text, a function call, then its end."""

    reject: bool = False
    """Fail the ``generate_reply`` future (no response is created), e.g. a rate limit."""
    message: bool = True
    """Create an assistant message item (it may stay empty)."""
    audio: float = 0.0
    """Seconds of audio streamed into the message before the response ends."""
    text: str = ""
    """Transcript streamed into the message before the response ends."""
    function_call: FunctionCall | None = None
    error: RealtimeError | None = None
    """How the response ends: ``None`` completes it."""
    hold: asyncio.Event | None = None
    """Until the event is set, the request goes unanswered (``generate_reply``), or the
    response stays active with its streams open (a server-created response)."""
    outcome_hold: asyncio.Event | None = None
    """Until the event is set, the ended response (its streams closed) reports no end."""

    @staticmethod
    def ok(text: str = "hello there", audio: float = 0.05) -> Attempt:
        return Attempt(text=text, audio=audio)

    @staticmethod
    def fail(
        *, retryable: bool | None = True, code: str = "server_error", message: bool = True
    ) -> Attempt:
        return Attempt(
            message=message,
            error=RealtimeError("response failed", code=code, retryable=retryable),
        )

    @staticmethod
    def rejected(*, retryable: bool | None = True, code: str = "rate_limit_exceeded") -> Attempt:
        return Attempt(
            reject=True,
            message=False,
            error=RealtimeError("response.create rejected", code=code, retryable=retryable),
        )


@dataclass
class ReplyRequest:
    instructions: NotGivenOr[str]
    tool_choice: NotGivenOr[ToolChoice]
    tools: NotGivenOr[list[Tool]]
    at: float


@dataclass
class _Response:
    response_id: str
    message_id: str | None
    message_ch: utils.aio.Chan[MessageGeneration]
    function_ch: utils.aio.Chan[FunctionCall]
    text_ch: utils.aio.Chan[str] | None
    audio_ch: utils.aio.Chan[rtc.AudioFrame] | None
    event: GenerationCreatedEvent | None = None
    outcome: asyncio.Future[None] | None = None
    """the series before review round 2 reported the end on ``GenerationCreatedEvent.outcome``"""
    task: asyncio.Task[None] | None = None
    modalities: asyncio.Future[list[Literal["text", "audio"]]] = field(
        default_factory=asyncio.Future
    )


def audio_frame(duration: float) -> rtc.AudioFrame:
    samples = int(SAMPLE_RATE * duration)
    return rtc.AudioFrame(
        data=b"\x00\x01" * samples,
        sample_rate=SAMPLE_RATE,
        num_channels=1,
        samples_per_channel=samples,
    )


def _retrieve(fut: asyncio.Future[Any]) -> None:
    # a provider future that can fail must never log "exception was never retrieved"
    if not fut.cancelled():
        fut.exception()


class ScriptedRealtimeSession(RealtimeSession):
    def __init__(self, model: ScriptedRealtimeModel) -> None:
        super().__init__(model)
        self._model = model
        self._chat_ctx = ChatContext.empty()
        self._tools = ToolContext.empty()
        self.requests: list[ReplyRequest] = []
        self.failures_at: list[float] = []
        """When each scripted failure was delivered to the framework."""
        self.overlapping_requests = 0
        self.cancelled_requests = 0
        self.interrupts = 0
        self.deleted_items: list[str] = []
        self.response_ids: list[str] = []
        self._pending_replies = 0
        self._active: _Response | None = None
        self._n = 0
        self._held: set[asyncio.Task[None]] = set()
        self.closed = False
        self.removals_started = 0
        self.removal_hold: asyncio.Event | None = None
        """When set, an ``update_chat_ctx`` that deletes items waits for it (a slow server)."""

    # --- RealtimeSession -----------------------------------------------------

    @property
    def chat_ctx(self) -> ChatContext:
        return self._chat_ctx.copy()

    @property
    def tools(self) -> ToolContext:
        return self._tools

    async def update_instructions(self, instructions: str) -> None:
        pass

    async def update_chat_ctx(self, chat_ctx: ChatContext) -> None:
        kept = {item.id for item in chat_ctx.items}
        removed = [item.id for item in self._chat_ctx.items if item.id not in kept]
        if removed:
            self.removals_started += 1
            if self.removal_hold is not None:
                await self.removal_hold.wait()
        self.deleted_items.extend(removed)
        self._chat_ctx = chat_ctx.copy()

    async def update_tools(self, tools: list[Tool]) -> None:
        self._tools = ToolContext(tools)

    def update_options(self, *, tool_choice: NotGivenOr[ToolChoice | None] = NOT_GIVEN) -> None:
        pass

    def push_audio(self, frame: rtc.AudioFrame) -> None:
        pass

    def push_video(self, frame: rtc.VideoFrame) -> None:
        pass

    def generate_reply(
        self,
        *,
        instructions: NotGivenOr[str] = NOT_GIVEN,
        tool_choice: NotGivenOr[ToolChoice] = NOT_GIVEN,
        tools: NotGivenOr[list[Tool]] = NOT_GIVEN,
    ) -> asyncio.Future[GenerationCreatedEvent]:
        if self._pending_replies or self._active is not None:
            self.overlapping_requests += 1
        self.requests.append(
            ReplyRequest(
                instructions=instructions, tool_choice=tool_choice, tools=tools, at=time.time()
            )
        )
        fut = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)
        self._pending_replies += 1
        attempt = self._model.next_attempt()

        def _answer() -> None:
            if fut.done():
                return
            self._pending_replies -= 1
            if attempt.reject:
                assert attempt.error is not None
                fut.set_exception(attempt.error)
                self._fail(attempt.error)
                return
            ev = self._start_response(attempt, user_initiated=True)
            fut.set_result(ev)
            # as the engine does for every response it creates
            self.emit("generation_created", ev)

        def _on_done(_: asyncio.Future[GenerationCreatedEvent]) -> None:
            if fut.cancelled():
                # the framework withdrew the request before the response was created
                self.cancelled_requests += 1
                self._pending_replies -= 1

        fut.add_done_callback(_on_done)
        if attempt.hold is not None:
            # the server has not answered yet: the request stays in flight until released
            hold = attempt.hold
            attempt = dataclasses.replace(attempt, hold=None)

            async def _answer_later() -> None:
                await hold.wait()
                if not fut.cancelled():
                    _answer()

            self._held.add(task := asyncio.create_task(_answer_later()))
            task.add_done_callback(self._held.discard)
        else:
            asyncio.get_running_loop().call_soon(_answer)
        return fut

    def commit_audio(self) -> None:
        pass

    def clear_audio(self) -> None:
        pass

    def interrupt(self) -> None:
        self.interrupts += 1
        if (resp := self._active) is not None and resp.task is not None:
            resp.task.cancel()

    def truncate(
        self,
        *,
        message_id: str,
        modalities: list[Literal["text", "audio"]],
        audio_end_ms: int,
        audio_transcript: NotGivenOr[str] = NOT_GIVEN,
    ) -> None:
        pass

    def say(self, text: str | AsyncIterable[str]) -> asyncio.Future[GenerationCreatedEvent]:
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(self._start_response(self._model.next_attempt(), user_initiated=True))
        return fut

    async def aclose(self) -> None:
        self.closed = True
        await utils.aio.cancel_and_wait(*self._held)
        if (resp := self._active) is not None and resp.task is not None:
            await utils.aio.cancel_and_wait(resp.task)

    # --- test helpers --------------------------------------------------------

    def server_response(self) -> GenerationCreatedEvent:
        """A response the server creates on its own (server VAD), from the next attempt."""
        if self._pending_replies or self._active is not None:
            self.overlapping_requests += 1
        ev = self._start_response(self._model.next_attempt(), user_initiated=False)
        self.emit("generation_created", ev)
        return ev

    # --- internals -------------------------------------------------------------

    def _fail(self, error: RealtimeError) -> None:
        """Report a failure on the ``error`` event; ``error`` is chained from the report."""
        self.failures_at.append(time.time())
        if not self._model.reports_errors:
            return
        # a fatal code stops the session; anything else does not
        fatal = error.code in FATAL_CODES
        reported = APIError("response failed", body={"code": error.code}, retryable=not fatal)
        error.__cause__ = reported
        self.emit(
            "error",
            RealtimeModelError(
                timestamp=time.time(),
                label=self._model.label,
                error=reported,
                recoverable=not fatal,
            ),
        )

    def _start_response(self, attempt: Attempt, *, user_initiated: bool) -> GenerationCreatedEvent:
        self._n += 1
        resp = _Response(
            response_id=f"resp_{self._n}",
            message_id=f"item_{self._n}" if attempt.message else None,
            message_ch=utils.aio.Chan(),
            function_ch=utils.aio.Chan(),
            text_ch=utils.aio.Chan() if attempt.message else None,
            audio_ch=utils.aio.Chan() if attempt.message else None,
        )
        self._active = resp
        self.response_ids.append(resp.response_id)
        resp.event = GenerationCreatedEvent(
            message_stream=resp.message_ch,
            function_stream=resp.function_ch,
            user_initiated=user_initiated,
            response_id=resp.response_id,
        )
        if self._model.reports_outcome:
            if hasattr(RealtimeSession, "_track_generation"):
                self._track_generation(resp.event)
            else:
                # the series before review round 2 (review-check builds it): the outcome future
                resp.outcome = asyncio.get_running_loop().create_future()
                resp.outcome.add_done_callback(_retrieve)
                resp.event.outcome = resp.outcome  # type: ignore[attr-defined]
        resp.task = asyncio.create_task(self._run(resp, attempt))
        return resp.event

    async def _run(self, resp: _Response, attempt: Attempt) -> None:
        error: RealtimeError | None = None
        try:
            if resp.message_id is not None:
                assert resp.text_ch is not None and resp.audio_ch is not None
                item = ChatMessage(role="assistant", content=[], id=resp.message_id)
                previous = self._chat_ctx.items[-1].id if self._chat_ctx.items else None
                self._chat_ctx.items.append(item)
                self.emit(
                    "remote_item_added",
                    RemoteItemAddedEvent(previous_item_id=previous, item=item),
                )
                resp.modalities.set_result(["audio", "text"])
                resp.message_ch.send_nowait(
                    MessageGeneration(
                        message_id=resp.message_id,
                        text_stream=resp.text_ch,
                        audio_stream=resp.audio_ch,
                        modalities=resp.modalities,
                    )
                )
                await asyncio.sleep(0)
                if attempt.text:
                    resp.text_ch.send_nowait(attempt.text)
                if attempt.audio:
                    resp.audio_ch.send_nowait(audio_frame(attempt.audio))
            if attempt.function_call is not None:
                resp.function_ch.send_nowait(attempt.function_call)
            if attempt.hold is not None:
                await attempt.hold.wait()
            await asyncio.sleep(0.01)
            error = attempt.error
        except asyncio.CancelledError:
            error = None  # cancelled: the response ends, not failed
        finally:
            for ch in (resp.text_ch, resp.audio_ch, resp.function_ch, resp.message_ch):
                if ch is not None:
                    ch.close()
            if self._active is resp:
                self._active = None
            self._emit_metrics(resp)
            if attempt.outcome_hold is not None:
                await attempt.outcome_hold.wait()
            assert resp.event is not None
            if resp.outcome is not None:
                # that series' rule: the outcome fails before the error is reported
                if error is not None:
                    resp.outcome.set_exception(error)
                    self._fail(error)
                else:
                    resp.outcome.set_result(None)
            else:
                if error is not None:
                    self._fail(error)
                self._end_generation(resp.event, error)

    def _emit_metrics(self, resp: _Response) -> None:
        self.emit(
            "metrics_collected",
            RealtimeModelMetrics(
                request_id=resp.response_id,
                timestamp=time.time(),
                label=self._model.label,
                input_token_details=RealtimeModelMetrics.InputTokenDetails(),
                output_token_details=RealtimeModelMetrics.OutputTokenDetails(),
            ),
        )


class ScriptedRealtimeModel(RealtimeModel):
    """A realtime model that plays ``attempts`` in order; after them, every response completes."""

    def __init__(
        self,
        attempts: list[Attempt] | None = None,
        *,
        reports_outcome: bool = True,
        reports_errors: bool = True,
    ) -> None:
        super().__init__(
            capabilities=RealtimeCapabilities(
                message_truncation=True,
                turn_detection=False,
                user_transcription=False,
                auto_tool_reply_generation=False,
                audio_output=True,
                manual_function_calls=True,
                mutable_chat_context=True,
                mutable_instructions=True,
                mutable_tools=True,
                per_response_tool_choice=True,
                supports_say=True,
            )
        )
        self._label = "scripted.realtime.RealtimeModel"
        self.attempts = list(attempts or [])
        self.reports_outcome = reports_outcome
        """False plays a plugin that does not track its generations (``done()`` is None)."""
        self.reports_errors = reports_errors
        """False plays a plugin that reports failures only through ``done()``."""
        self.sessions: list[ScriptedRealtimeSession] = []

    @property
    def rt(self) -> ScriptedRealtimeSession:
        return self.sessions[-1]

    def next_attempt(self) -> Attempt:
        return self.attempts.pop(0) if self.attempts else Attempt.ok()

    def session(self, *, turn_detection_disabled: bool = False) -> ScriptedRealtimeSession:
        sess = ScriptedRealtimeSession(self)
        self.sessions.append(sess)
        return sess

    async def aclose(self) -> None:
        pass


class PlayoutAudioOutput(AudioOutput):
    """An audio sink that plays each segment out in (scaled) real time."""

    def __init__(self) -> None:
        super().__init__(
            label="PlayoutAudioOutput",
            next_in_chain=None,
            sample_rate=None,
            capabilities=AudioOutputCapabilities(pause=False),
        )
        self.frames: list[rtc.AudioFrame] = []
        self._pushed = 0.0
        self._handle: asyncio.TimerHandle | None = None

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if not self._pushed:
            self.on_playback_started(created_at=time.time())
        self.frames.append(frame)
        self._pushed += frame.duration

    def flush(self) -> None:
        super().flush()
        if not self._pushed:
            return
        pushed = self._pushed

        def _finished() -> None:
            self._handle = None
            self._pushed = 0.0
            self.on_playback_finished(playback_position=pushed, interrupted=False)

        self._handle = asyncio.get_running_loop().call_later(pushed, _finished)

    def clear_buffer(self) -> None:
        if not self._pushed:
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        pushed, self._pushed = self._pushed, 0.0
        self.on_playback_finished(playback_position=pushed, interrupted=True)
