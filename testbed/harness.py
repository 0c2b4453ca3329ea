"""A real AgentSession on the OpenAI realtime model, talking to the emulator, with no room.

Usage::

    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=2) as h:
        handle = h.session.generate_reply(instructions="greet the user")
        await h.wait_for_speech(handle, what="the greeting")
        assert h.audio.frames and h.assistant_messages()
        h.guard.assert_clean()

See ``testbed/realtime_emulator/__init__.py`` for the whole API.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from livekit import rtc
from livekit.agents import Agent, AgentSession, APIConnectOptions, llm
from livekit.agents.voice.agent_session import SessionConnectOptions
from livekit.agents.voice.events import (
    AgentStateChangedEvent,
    CloseEvent,
    ErrorEvent,
    SpeechCreatedEvent,
)
from livekit.agents.voice.io import AudioOutput, AudioOutputCapabilities, TextOutput
from livekit.agents.voice.speech_handle import SpeechHandle
from livekit.plugins import openai

from .realtime_emulator import RealtimeEmulator

NEVER_RETRIEVED = ("Task exception was never retrieved", "Future exception was never retrieved")


class RecordingAudioOutput(AudioOutput):
    """An audio sink that records every frame and plays it out on a virtual clock.

    Args:
        playout_speed: None = each flushed segment finishes playing at once (next loop turn);
            a number = a segment of D seconds takes ``D / playout_speed`` seconds to play
            (1.0 = real time), segments queue one after the other, and ``clear_buffer()``
            interrupts them at the position reached.
    """

    def __init__(self, *, playout_speed: float | None = None) -> None:
        super().__init__(
            label="RecordingAudioOutput", capabilities=AudioOutputCapabilities(pause=False)
        )
        self.playout_speed = playout_speed
        self.frames: list[rtc.AudioFrame] = []
        self.segments: list[tuple[float, bool]] = []
        """(playback position, interrupted) of each finished segment"""
        self._pushed = 0.0
        # flushed segments not yet played out: (start time, duration, finish handle)
        self._pending: list[tuple[float, float, asyncio.TimerHandle]] = []

    @property
    def pushed_duration(self) -> float:
        """Total audio received, in seconds."""
        return sum(f.duration for f in self.frames)

    @property
    def interrupted_segments(self) -> int:
        return sum(1 for _, interrupted in self.segments if interrupted)

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if self._pushed == 0.0:
            self.on_playback_started(created_at=time.time())
        self.frames.append(frame)
        self._pushed += frame.duration

    def flush(self) -> None:
        super().flush()
        if self._pushed == 0.0:
            return
        duration, self._pushed = self._pushed, 0.0
        loop = asyncio.get_running_loop()
        play_time = 0.0 if self.playout_speed is None else duration / self.playout_speed
        start = max([loop.time()] + [s + d for s, d, _ in self._pending])
        handle = loop.call_at(start + play_time, self._finished, duration)
        self._pending.append((start, play_time, handle))

    def _finished(self, duration: float) -> None:
        self._pending.pop(0)
        self._report(duration, interrupted=False)

    def _report(self, position: float, *, interrupted: bool) -> None:
        self.segments.append((position, interrupted))
        self.on_playback_finished(playback_position=position, interrupted=interrupted)

    def clear_buffer(self) -> None:
        now = asyncio.get_running_loop().time()
        pending, self._pending = self._pending, []
        for start, play_time, handle in pending:
            handle.cancel()
            played = min(max(now - start, 0.0), play_time)
            speed = self.playout_speed or 1.0
            self._report(played * speed, interrupted=True)
        if self._pushed:
            # captured but not flushed: the segment ends here, interrupted
            self._pushed = 0.0
            self._report(0.0, interrupted=True)


class RecordingTextOutput(TextOutput):
    """A transcription sink that records the text forwarded to the user."""

    def __init__(self) -> None:
        super().__init__(label="RecordingTextOutput", next_in_chain=None)
        self.text = ""
        self.flushed: list[str] = []
        self._current = ""

    async def capture_text(self, text: str) -> None:
        self.text += text
        self._current += text

    def flush(self) -> None:
        if self._current:
            self.flushed.append(self._current)
        self._current = ""


class ExceptionGuard:
    """Collects unhandled asyncio exceptions and "never retrieved" log records.

    Replaces the loop's exception handler while installed (the previous one is restored by
    ``uninstall()``) and adds a handler on the ``asyncio`` logger. ``collect()`` runs ``gc.collect()`` first, so futures that die with an
    unretrieved exception report it.
    """

    def __init__(self) -> None:
        self.contexts: list[dict[str, Any]] = []
        self.records: list[logging.LogRecord] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Any = None
        self._log_handler = _ListHandler(self.records)

    def install(self) -> ExceptionGuard:
        self._loop = asyncio.get_running_loop()
        self._previous = self._loop.get_exception_handler()
        self._loop.set_exception_handler(self._on_exception)
        logging.getLogger("asyncio").addHandler(self._log_handler)
        return self

    def uninstall(self) -> None:
        if self._loop is not None:
            self._loop.set_exception_handler(self._previous)
            self._loop = None
        logging.getLogger("asyncio").removeHandler(self._log_handler)

    def _on_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.contexts.append(context)

    def collect(self) -> list[str]:
        """gc.collect(), then every unhandled-exception message seen so far."""
        gc.collect()
        gc.collect()
        messages = [_describe(ctx) for ctx in self.contexts]
        messages += [r.getMessage() for r in self.records if _is_never_retrieved(r.getMessage())]
        return messages

    def seen(self) -> list[str]:
        """Unhandled-exception messages seen so far, without a gc pass (cheap, for polling)."""
        messages = [_describe(ctx) for ctx in self.contexts]
        return messages + [
            r.getMessage() for r in self.records if _is_never_retrieved(r.getMessage())
        ]

    @property
    def never_retrieved(self) -> list[str]:
        """'Task/Future exception was never retrieved' messages (after gc.collect())."""
        return [m for m in self.collect() if _is_never_retrieved(m)]

    def assert_clean(self) -> None:
        """AssertionError if any unhandled asyncio exception was seen."""
        messages = self.collect()
        assert not messages, f"unhandled asyncio exception(s): {messages}"


class _ListHandler(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(level=logging.ERROR)
        self._records = records

    def emit(self, record: logging.LogRecord) -> None:
        self._records.append(record)


def _is_never_retrieved(message: str) -> bool:
    return any(m in message for m in NEVER_RETRIEVED)


def _describe(context: dict[str, Any]) -> str:
    message = str(context.get("message", "unhandled exception"))
    if (exc := context.get("exception")) is not None:
        message = f"{message}: {type(exc).__name__}: {exc}"
    return message


class SessionHarness:
    """An ``AgentSession(llm=openai.realtime.RealtimeModel(...))`` against an emulator.

    Args:
        emu: a started RealtimeEmulator.
        max_retry, retry_interval, timeout: the APIConnectOptions given both to the model
            (its reconnect loop) and to the session (``SessionConnectOptions.llm_conn_options``).
        max_unrecoverable_errors: ``SessionConnectOptions.max_unrecoverable_errors``.
        agent: the Agent to start with (default: a plain one).
        model_kwargs: extra ``RealtimeModel`` keyword arguments.
        session_kwargs: extra ``AgentSession`` keyword arguments.
        guard: an installed ExceptionGuard to use (default: the harness installs its own).
        api_key: the key the model sends (default: the emulator's).
        playout_speed: the audio sink's playout speed (None: instant; 1.0: real time).
        fallback: a second started emulator: the session's LLM is then a
            ``RealtimeModelFallbackAdapter([model on emu, model on fallback])`` (``h.model``
            stays the primary, ``h.fallback_model`` is the secondary).
    """

    def __init__(
        self,
        emu: RealtimeEmulator,
        *,
        max_retry: int = 3,
        retry_interval: float = 0.05,
        timeout: float = 1.0,
        max_unrecoverable_errors: int = 3,
        agent: Agent | None = None,
        model_kwargs: dict[str, Any] | None = None,
        session_kwargs: dict[str, Any] | None = None,
        guard: ExceptionGuard | None = None,
        api_key: str | None = None,
        playout_speed: float | None = None,
        fallback: RealtimeEmulator | None = None,
    ) -> None:
        self.emu = emu
        self.fallback = fallback
        self.conn_options = APIConnectOptions(
            max_retry=max_retry, retry_interval=retry_interval, timeout=timeout
        )
        self._max_unrecoverable_errors = max_unrecoverable_errors
        self._agent = agent or Agent(instructions="You are a helpful test assistant.")
        self._model_kwargs = model_kwargs or {}
        self._session_kwargs = session_kwargs or {}
        self._api_key = api_key or emu.api_key
        self._own_guard = guard is None
        self.guard = guard or ExceptionGuard()

        self.errors: list[ErrorEvent] = []
        self.speeches: list[SpeechCreatedEvent] = []
        self.timeline: list[ErrorEvent | AgentStateChangedEvent] = []
        """errors and agent state changes, in the order the session emitted them"""
        self.close_events: list[CloseEvent] = []
        self.closed = asyncio.Event()
        self.aclose_error: BaseException | None = None
        self.audio = RecordingAudioOutput(playout_speed=playout_speed)
        self.text = RecordingTextOutput()
        self._http: aiohttp.ClientSession | None = None
        self._model: openai.realtime.RealtimeModel | None = None
        self.fallback_model: openai.realtime.RealtimeModel | None = None
        self._session: AgentSession | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> SessionHarness:
        if self._own_guard:
            self.guard.install()
        self._http = aiohttp.ClientSession()
        self._model = openai.realtime.RealtimeModel(
            base_url=self.emu.http_url,
            api_key=self._api_key,
            conn_options=self.conn_options,
            http_session=self._http,
            **self._model_kwargs,
        )
        session_llm: llm.RealtimeModel = self._model
        if self.fallback is not None:
            self.fallback_model = openai.realtime.RealtimeModel(
                base_url=self.fallback.http_url,
                api_key=self._api_key,
                conn_options=self.conn_options,
                http_session=self._http,
                **self._model_kwargs,
            )
            session_llm = llm.RealtimeModelFallbackAdapter([self._model, self.fallback_model])
        self._session = AgentSession(
            llm=session_llm,
            conn_options=SessionConnectOptions(
                llm_conn_options=self.conn_options,
                max_unrecoverable_errors=self._max_unrecoverable_errors,
            ),
            **self._session_kwargs,
        )
        self._session.output.audio = self.audio
        self._session.output.transcription = self.text
        self._session.on("error", self.errors.append)
        self._session.on("error", self.timeline.append)
        self._session.on("agent_state_changed", self.timeline.append)
        self._session.on("speech_created", self.speeches.append)
        self._session.on("close", self._on_close)
        await asyncio.wait_for(self._session.start(self._agent, record=False), 10.0)
        return self

    def _on_close(self, ev: CloseEvent) -> None:
        self.close_events.append(ev)
        self.closed.set()

    async def aclose(self) -> None:
        """Close the session (errors raised by it are kept in ``aclose_error``), then the rest.

        The guard is collected (gc) but stays readable; an own guard is uninstalled.
        """
        if self._session is not None:
            try:
                await asyncio.wait_for(self._session.aclose(), 10.0)
            except Exception as e:  # recorded for the test to assert on
                self.aclose_error = e
        if self._http is not None:
            await self._http.close()
        # let cancelled tasks finish and dead futures report before the guard is read
        await asyncio.sleep(0)
        self.guard.collect()
        if self._own_guard:
            self.guard.uninstall()

    async def __aenter__(self) -> SessionHarness:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- accessors ------------------------------------------------------------------------------

    @property
    def session(self) -> AgentSession:
        assert self._session is not None, "harness not started"
        return self._session

    @property
    def model(self) -> openai.realtime.RealtimeModel:
        assert self._model is not None, "harness not started"
        return self._model

    @property
    def realtime_session(self) -> llm.RealtimeSession | None:
        """The engine's RealtimeSession of the current activity (None before start/after close)."""
        activity = self.session._activity
        return activity.realtime_llm_session if activity is not None else None

    @property
    def realtime_errors(self) -> list[llm.RealtimeModelError]:
        return [e.error for e in self.errors if isinstance(e.error, llm.RealtimeModelError)]

    @property
    def recoverable_errors(self) -> list[ErrorEvent]:
        return [e for e in self.errors if getattr(e.error, "recoverable", None) is True]

    @property
    def unrecoverable_errors(self) -> list[ErrorEvent]:
        return [e for e in self.errors if getattr(e.error, "recoverable", None) is False]

    def describe_errors(self) -> str:
        return ", ".join(
            f"{type(getattr(e.error, 'error', e.error)).__name__}"
            f"(recoverable={getattr(e.error, 'recoverable', None)})"
            for e in self.errors
        )

    def assistant_messages(self) -> list[llm.ChatMessage]:
        return [m for m in self.session.history.messages() if m.role == "assistant"]

    def user_messages(self) -> list[llm.ChatMessage]:
        return [m for m in self.session.history.messages() if m.role == "user"]

    # -- waiting --------------------------------------------------------------------------------

    async def wait_for(
        self, predicate: Callable[[], bool], *, timeout: float = 5.0, what: str = "condition"
    ) -> None:
        """Poll ``predicate`` (every 10 ms); AssertionError naming ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(0.01)

    async def wait_for_speech(
        self, handle: SpeechHandle, *, timeout: float = 5.0, what: str = "the speech"
    ) -> None:
        """Wait until ``handle`` is done (played out, failed or interrupted)."""
        try:
            await asyncio.wait_for(asyncio.shield(handle.wait_for_playout()), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what} to finish"
            ) from None

    async def wait_closed(
        self, *, timeout: float = 5.0, what: str = "the session close event"
    ) -> None:
        try:
            await asyncio.wait_for(self.closed.wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


__all__ = [
    "ExceptionGuard",
    "NEVER_RETRIEVED",
    "RecordingAudioOutput",
    "RecordingTextOutput",
    "SessionHarness",
]
