"""Property-based fault exploration: random scenario plans on a real AgentSession, invariants.

An ``Example`` is a session variant (``max_retry`` 0/1/3, with or without
``RealtimeModelFallbackAdapter`` over two emulators), a fault plan per emulator (any item of the
emulator's vocabulary per response and per connection) and a few user-side steps
(``generate_reply`` with or without instructions / tool choice, a server-VAD user turn,
``say()`` with pre-recorded audio, ``session.interrupt()``, ``Agent.update_chat_ctx``, a close
on demand, a draining or non-draining ``shutdown``), each followed by a gap (a pause, or "wait
for its speech") so that an interrupt, a drop or a shutdown lands at a chosen moment.

``run_example(ex)`` runs it on the installed build, bounded in time, and returns an
``Observation``; ``check(ex, obs)`` returns the ``Violation`` s of the invariants below.
``testbed/test_exploration.py`` drives it with Hypothesis strategies (``examples(...)``) in CI;
``bench/chaos.py`` (``make chaos``) runs a long randomized exploration and writes a report.

Invariants (``INVARIANTS``; names as reported)
----------------------------------------------
- ``single_create_in_flight``: no ``response.create`` reached an emulator while a response
  was active on that connection (``emu.overlapping_creates`` empty).
- ``tool_runs_once``: the agent's function tool ran at most once per ``call_id``.
- ``history_agrees_with_server``: in ``session.history`` no two items share an id, no assistant
  message is empty (no text, not interrupted), none is an orphan (text the transcription sink
  never received, or the item of a response the server failed / cancelled / dropped kept as
  if complete, i.e. not ``interrupted``), and none is an item the client deleted on the server.
- ``speech_ends_with_reply_or_exception``: every ``SpeechHandle`` the session created (all of
  them, from ``speech_created``) is done within ``FINAL_WAIT``; a done handle that was not
  interrupted has a chat item (a reply or a function call) or an ``exception()``: never a
  silent end.
- ``no_unhandled_exception``: the ``ExceptionGuard`` saw no unhandled asyncio exception and no
  "Task/Future exception was never retrieved" (after teardown and gc).
- ``one_error_per_cause``: the session's ``error`` events, besides each failed turn's one report
  that it gave up (error contract 2 in docs/error-contract.md), are no more than the failure
  causes seen on the wire (plus the one error with which an engine gives up, when the session
  closes or a fallback adapter takes over, once per engine; error contract 3 and 6) (a
  failed / rejected / dropped / unanswered response; a connection attempt rejected, hung,
  abandoned or dropped in its handshake; a server close that no dropped or failed response
  explains), and with no cause at all there is no error event and no handle
  ends with an exception (an ``incomplete`` response is a normal end, not a cause), unless a
  response called a function its request forbade (``tool_choice="none"``): no session reports
  that, but its turn ends with its own error.
- ``recoverable_flag_per_contract``: after an error with ``recoverable=True`` something asks
  again (a ``response.create`` or a connection attempt), unless the user cancelled (interrupt,
  VAD turn, shutdown, drop), the session closed, a turn gave up on it with its own
  ``recoverable=False`` report (its attempts spent, ``max_retry=0`` included), a speech ended
  with its reply after it (a transient ``error`` event during a response that completed), or
  the server refused the request (a rejected-request code: the turn ends with it,
  docs/error-contract.md contract 2); an error with ``recoverable=False`` is followed by a
  handle ending with an exception, a fallback swap or the session's close; and a handle that
  ends with an exception (no shutdown involved) had a ``recoverable=False`` error (its own
  report that it gave up, or the session's fatal one), unless it ended with a failure asking
  again could not help (a refused request).
- ``attempts_bounded``: ``response.create`` s are at most ``(max_retry + 1)`` per turn trigger
  (``generate_reply``, VAD turn, tool reply, fallback swap); per emulator, consecutive
  connection attempts without a healthy one between them (a connection that completed a
  response) are at most ``max_retry + 1`` (an attempt dropped in its handshake and aiohttp's
  own immediate retry count as one).
- ``close_per_contract``: the session emits ``close`` by itself only after a
  ``recoverable=False`` error or a requested shutdown, never while a healthy fallback model
  remains; without a fallback it does close after an engine-fatal fault (upgrade 401, a fatal
  error code) or after ``max_retry + 1`` failed connection attempts in a row with no further
  attempt.
- ``no_api_key_leak``: the emulator's API key appears in no repr/str of what the session
  recorded (its recorded events, error events, errors and their ``__cause__`` /
  ``__context__`` chains and attributes, e.g. ``request_info.headers``), nor in any log record
  (message, arguments, extras, formatted traceback).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from livekit import rtc
from livekit.agents import llm
from livekit.agents.llm._realtime import openai as engine
from livekit.agents.voice.events import ErrorEvent, SpeechCreatedEvent
from livekit.agents.voice.speech_handle import SpeechHandle

from .harness import ExceptionGuard, SessionHarness
from .realtime_emulator import (
    AcceptThenClose,
    CloseAfterCreated,
    CloseMidStream,
    ErrorThenClose,
    FailResponse,
    FaultPlan,
    FunctionCall,
    HangHandshake,
    Healthy,
    Incomplete,
    Malformed,
    NoAnswer,
    RateLimitsBefore,
    RealtimeEmulator,
    RejectCreate,
    RejectUpgrade,
    Reply,
    SlowHandshake,
)
from .scenarios import _ToolAgent

INVARIANTS = (
    "single_create_in_flight",
    "tool_runs_once",
    "history_agrees_with_server",
    "speech_ends_with_reply_or_exception",
    "no_unhandled_exception",
    "one_error_per_cause",
    "recoverable_flag_per_contract",
    "attempts_bounded",
    "close_per_contract",
    "no_api_key_leak",
)
"""every invariant checked after every example, in report order"""

TOOL_NAME = "lookup_weather"
CONN_TIMEOUT = 0.5
"""APIConnectOptions.timeout of the examples (handshakes, generate_reply)"""
RETRY_INTERVAL = 0.05
STEP_WAIT = 5.0
"""bound of a "wait for its speech" gap"""
FINAL_WAIT = 10.0
"""bound for every speech handle to be done after the last step"""
QUIET = 0.3
"""seconds without change that end the final settle"""
SETUP_CAP = 5.0
TEARDOWN_CAP = 5.0
FATAL_CODES = ("insufficient_quota", "invalid_api_key")


# ---------------------------------------------------------------------------------------------
# the plan of an example
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerateReply:
    """``session.generate_reply(instructions=..., tool_choice=...)`` (None: not given)."""

    instructions: str | None = None
    tool_choice: Literal["auto", "none", "required"] | None = None


@dataclass(frozen=True)
class VadTurn:
    """A server-VAD user turn on the emulator that serves the session (skipped if none)."""


@dataclass(frozen=True)
class Say:
    """``session.say(text, audio=<pre-recorded frames>)`` (the realtime model has no TTS)."""


@dataclass(frozen=True)
class Interrupt:
    """``session.interrupt()`` (awaited, bounded)."""


@dataclass(frozen=True)
class UpdateChatCtx:
    """``agent.update_chat_ctx(<chat_ctx + one user message>)`` (bounded)."""


@dataclass(frozen=True)
class DropConnection:
    """``emu.drop_connection()`` on the emulator that serves the session: a close on demand."""


@dataclass(frozen=True)
class Shutdown:
    """``session.shutdown(drain=...)``, then wait for ``close`` (always the last step)."""

    drain: bool = True


Action = GenerateReply | VadTurn | Say | Interrupt | UpdateChatCtx | DropConnection | Shutdown


@dataclass(frozen=True)
class Step:
    """An action, then a gap: seconds to pause, or None = wait for its speech (bounded)."""

    action: Action
    gap: float | None = None


@dataclass(frozen=True)
class Example:
    """One exploration example: session variant, fault plans, steps."""

    max_retry: int
    plan: FaultPlan
    steps: tuple[Step, ...]
    fallback: FaultPlan | None = None
    """None: a plain RealtimeModel; a plan: RealtimeModelFallbackAdapter over two emulators,
    the second one serving this plan"""

    @property
    def size(self) -> int:
        """How big the example is (steps + plan items): the smaller, the simpler."""
        items = len(self.plan.responses) + len(self.plan.connections)
        if self.fallback is not None:
            items += 1 + len(self.fallback.responses) + len(self.fallback.connections)
        return len(self.steps) + items + self.max_retry

    def describe(self) -> str:
        """A short, readable, reproducible description (Python expressions of the plan items)."""
        lines = [f"max_retry={self.max_retry}"]
        lines.append(f"primary: {_describe_plan(self.plan)}")
        if self.fallback is not None:
            lines.append(f"fallback adapter, secondary: {_describe_plan(self.fallback)}")
        for i, step in enumerate(self.steps, 1):
            gap = "wait for its speech" if step.gap is None else f"pause {step.gap:g}s"
            lines.append(f"step {i}: {step.action!r}, then {gap}")
        return "\n".join(lines)


def _describe_plan(plan: FaultPlan) -> str:
    parts = []
    if plan.responses:
        parts.append(
            "responses={"
            + ", ".join(f"{n}: {f!r}" for n, f in sorted(plan.responses.items()))
            + "}"
        )
    if plan.connections:
        parts.append(
            "connections={"
            + ", ".join(f"{n}: {f!r}" for n, f in sorted(plan.connections.items()))
            + "}"
        )
    return "FaultPlan(" + ", ".join(parts) + ")" if parts else "FaultPlan() (healthy)"


# ---------------------------------------------------------------------------------------------
# observation
# ---------------------------------------------------------------------------------------------


@dataclass
class HandleRecord:
    """What became of one SpeechHandle."""

    source: str
    done: bool
    interrupted: bool
    exception: str | None
    chat_items: int
    ended_at: float | None
    give_up_reports: int = 0
    """error events whose error is the exception the speech ended with: the turn's own report
    that it gave up (error contract 2, docs/error-contract.md)"""
    not_retryable: bool = False
    """it ended with a failure asking again could not help (a refused request, a closed
    session): the session's report stands for it, the turn adds none"""
    gave_up_on: frozenset[int] = frozenset()
    """``id()`` of each error the exception it ended with is chained from (``__cause__``): the
    failures its turn gave up on"""


@dataclass
class Observation:
    """What one example did (records only: the session and emulators are closed)."""

    emus: list[RealtimeEmulator]
    errors: list[tuple[float, ErrorEvent]]
    handles: list[HandleRecord]
    history: list[llm.ChatItem]
    heard_text: str
    tool_calls: Counter[str]
    closed_at: float | None
    close_reason: str | None
    recorded_events: list[Any]
    log_records: list[logging.LogRecord]
    unhandled: list[str]
    api_key: str
    user_cancels: list[tuple[float, str]] = field(default_factory=list)
    """(time, action) of interrupt / VAD turn / drop / shutdown steps"""
    triggers: Counter[str] = field(default_factory=Counter)
    """turn triggers executed: generate_reply, vad_turn"""
    shutdown_at: float | None = None
    shutdown_drain: bool | None = None
    action_errors: list[str] = field(default_factory=list)
    setup_failed: str | None = None
    close_error: str | None = None
    elapsed: float = 0.0


@dataclass(frozen=True)
class Violation:
    invariant: str
    detail: str

    def __str__(self) -> str:
        return f"{self.invariant}: {self.detail}"


# ---------------------------------------------------------------------------------------------
# running an example
# ---------------------------------------------------------------------------------------------


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def _say_audio() -> AsyncIterator[rtc.AudioFrame]:
    for _ in range(3):
        yield rtc.AudioFrame(
            data=b"\x00\x00" * 480, sample_rate=24000, num_channels=1, samples_per_channel=480
        )


def _serving(emus: list[RealtimeEmulator]) -> RealtimeEmulator | None:
    """The emulator whose connection is open (the newest such), if any."""
    for emu in reversed(emus):
        with contextlib.suppress(RuntimeError):
            emu._current(None)
            return emu
    return None


async def _wait_handle(handle: SpeechHandle, timeout: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(handle.wait_for_playout()), timeout)


def _signature(emus: list[RealtimeEmulator], h: SessionHarness, handles: list[SpeechHandle]) -> Any:
    return (
        tuple(len(e.events) for e in emus),
        tuple(len(e.responses) for e in emus),
        tuple(e.num_connections for e in emus),
        len(h.errors),
        len(h.audio.frames),
        sum(1 for x in handles if x.done()),
        h.closed.is_set(),
    )


async def _settle(emus: list[RealtimeEmulator], h: SessionHarness, handles: list[SpeechHandle],
                  deadline: float) -> None:  # fmt: skip
    last, since = _signature(emus, h, handles), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        now, current = time.monotonic(), _signature(emus, h, handles)
        busy = (
            any(e.has_active_response for e in emus)
            or not all(x.done() for x in handles)
            # a hung handshake changes nothing until the client's connect timeout fires
            or any(
                c.outcome == "hung" and now - c.t < CONN_TIMEOUT + QUIET
                for e in emus
                for c in e.connections
            )
        )
        if current != last:
            last, since = current, now
        elif not busy and now - since >= QUIET:
            return


async def run_example(ex: Example) -> Observation:
    """Run ``ex`` on the installed build; bounded; never raises for a build's behaviour."""
    t0 = time.monotonic()
    api_key = f"sk-chaos-{secrets.token_hex(12)}"
    guard = ExceptionGuard().install()
    capture = _Capture()
    root = logging.getLogger()
    lk_logger = logging.getLogger("livekit")
    old_level = lk_logger.level
    root.addHandler(capture)
    lk_logger.setLevel(logging.DEBUG)

    emus = [RealtimeEmulator(ex.plan, api_key=api_key)]
    if ex.fallback is not None:
        emus.append(RealtimeEmulator(ex.fallback, api_key=api_key))
    tool_calls: Counter[str] = Counter()
    h = SessionHarness(
        emus[0],
        max_retry=ex.max_retry,
        retry_interval=RETRY_INTERVAL,
        timeout=CONN_TIMEOUT,
        agent=_ToolAgent(tool_calls),
        guard=guard,
        fallback=emus[1] if len(emus) > 1 else None,
        # no AEC warm-up: it disables interruptions for the first 3 s, longer than an example
        session_kwargs={"aec_warmup_duration": None},
    )
    errors: list[tuple[float, ErrorEvent]] = []
    handles: list[tuple[SpeechHandle, str]] = []
    ended: dict[int, float] = {}
    obs = Observation(
        emus=emus,
        errors=errors,
        handles=[],
        history=[],
        heard_text="",
        tool_calls=tool_calls,
        closed_at=None,
        close_reason=None,
        recorded_events=[],
        log_records=capture.records,
        unhandled=[],
        api_key=api_key,
    )

    def on_speech(ev: SpeechCreatedEvent) -> None:
        handle = ev.speech_handle
        handles.append((handle, ev.source))
        handle.add_done_callback(lambda hd: ended.setdefault(id(hd), time.monotonic()))

    observing = True

    def on_close(_: Any) -> None:
        # the close the example caused; the harness' own teardown close is not observed
        if observing and obs.closed_at is None:
            obs.closed_at = time.monotonic()

    try:
        try:
            for emu in emus:
                await asyncio.wait_for(emu.start(), SETUP_CAP)
            await asyncio.wait_for(h.start(), SETUP_CAP)
            h.session.on("error", lambda ev: errors.append((time.monotonic(), ev)))
            h.session.on("speech_created", on_speech)
            h.session.on("close", on_close)
        except Exception as e:  # reported: a build may fail to start
            obs.setup_failed = f"{type(e).__name__}: {e}"
        else:
            await _run_steps(ex, obs, h, emus, [x for x, _ in handles])
            deadline = time.monotonic() + FINAL_WAIT
            await _settle(emus, h, [x for x, _ in handles], deadline)
        # observations before teardown
        obs.handles = [
            HandleRecord(
                source=src,
                done=x.done(),
                interrupted=x.interrupted,
                exception=(repr(x.exception()) if x.done() and x.exception() else None),
                chat_items=len(x.chat_items),
                ended_at=ended.get(id(x)),
                give_up_reports=sum(
                    1
                    for _, ev in errors
                    if x.done() and x.exception() is not None and ev.error.error is x.exception()
                ),
                not_retryable=bool(
                    x.done()
                    and isinstance(exc := x.exception(), llm.RealtimeError)
                    # pristine's RealtimeError has no classification: never retryable
                    and not getattr(exc, "retryable", False)
                ),
                gave_up_on=frozenset(_cause_ids(x.exception() if x.done() else None)),
            )
            for x, src in handles
        ]
        if obs.setup_failed is None:
            obs.history = list(h.session.history.items)
            obs.recorded_events = list(h.session._recorded_events)
            if obs.closed_at is not None and h.close_events:
                obs.close_reason = str(h.close_events[0].reason)
                obs.close_error = repr(h.close_events[0].error)
        obs.heard_text = h.text.text
    finally:
        observing = False
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(h.aclose(), TEARDOWN_CAP)
        for emu in emus:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(emu.aclose(), TEARDOWN_CAP)
        await asyncio.sleep(0)
        gc.collect()
        obs.unhandled = guard.seen()
        guard.uninstall()
        root.removeHandler(capture)
        lk_logger.setLevel(old_level)
    obs.elapsed = time.monotonic() - t0
    return obs


async def _run_steps(
    ex: Example,
    obs: Observation,
    h: SessionHarness,
    emus: list[RealtimeEmulator],
    handles: list[SpeechHandle],
) -> None:
    session = h.session
    for step in ex.steps:
        if h.closed.is_set() and not isinstance(step.action, Shutdown):
            obs.action_errors.append(f"{step.action!r}: skipped, the session closed")
            continue
        action = step.action
        handle: SpeechHandle | None = None
        try:
            if isinstance(action, GenerateReply):
                kwargs: dict[str, Any] = {}
                if action.instructions is not None:
                    kwargs["instructions"] = action.instructions
                if action.tool_choice is not None:
                    kwargs["tool_choice"] = action.tool_choice
                obs.triggers["generate_reply"] += 1
                handle = session.generate_reply(**kwargs)
            elif isinstance(action, VadTurn):
                emu = _serving(emus)
                if emu is None:
                    obs.action_errors.append("VadTurn: skipped, no open connection")
                else:
                    obs.user_cancels.append((time.monotonic(), "vad_turn"))
                    obs.triggers["vad_turn"] += 1
                    await asyncio.wait_for(emu.server_vad_turn("what's the weather?"), 3.0)
            elif isinstance(action, Say):
                handle = session.say("Here is a pre-recorded answer.", audio=_say_audio())
            elif isinstance(action, Interrupt):
                obs.user_cancels.append((time.monotonic(), "interrupt"))
                await asyncio.wait_for(asyncio.shield(session.interrupt()), 3.0)
            elif isinstance(action, UpdateChatCtx):
                agent = session.current_agent
                chat_ctx = agent.chat_ctx.copy()
                chat_ctx.add_message(role="user", content="Remember: my favourite colour is blue.")
                await asyncio.wait_for(agent.update_chat_ctx(chat_ctx), 3.0)
            elif isinstance(action, DropConnection):
                emu = _serving(emus) or emus[-1]
                obs.user_cancels.append((time.monotonic(), "drop"))
                await emu.drop_connection()
            elif isinstance(action, Shutdown):
                obs.user_cancels.append((time.monotonic(), "shutdown"))
                obs.shutdown_at, obs.shutdown_drain = time.monotonic(), action.drain
                session.shutdown(drain=action.drain)
                with contextlib.suppress(AssertionError):
                    await h.wait_closed(timeout=FINAL_WAIT)
                return
        except Exception as e:  # an action may legitimately fail (no connection, closing ...)
            obs.action_errors.append(f"{action!r}: {type(e).__name__}: {e}")
        if step.gap is None:
            if handle is not None:
                await _wait_handle(handle, STEP_WAIT)
            else:
                await asyncio.sleep(0.05)
        elif step.gap > 0:
            await asyncio.sleep(step.gap)


# ---------------------------------------------------------------------------------------------
# invariants
# ---------------------------------------------------------------------------------------------

_FAILED_RESPONSE = ("failed", "cancelled", "dropped")
_CAUSE_RESPONSE = ("failed", "rejected", "dropped", "unanswered")
_FAILED_HANDSHAKE = ("rejected", "unauthorized", "hung", "abandoned", "dropped")


def _refused(error: object) -> bool:
    """A provider error whose code the engine classifies as a refused (rejected) request."""
    body = getattr(error, "body", None)
    classify = getattr(engine, "_classify_error", None)
    if body is None or classify is None:
        return False  # pristine classifies nothing: no request counts as refused
    return bool(
        classify(
            code=engine._error_field(body, "code"), error_type=engine._error_field(body, "type")
        )
        == "rejected_request"
    )


def _cause_ids(exc: BaseException | None) -> list[int]:
    """``id()`` of each error ``exc`` is chained from, through ``__cause__``."""
    ids: list[int] = []
    while exc is not None and exc.__cause__ is not None and len(ids) < 10:
        exc = exc.__cause__
        ids.append(id(exc))
    return ids


def forbidden_calls(emus: list[RealtimeEmulator]) -> list[str]:
    """Responses that called a function their ``response.create`` forbade: no failure on the
    wire (no session reports one), but a reason for the turn to end with its own error."""
    return [
        f"emu{e_idx + 1} response {r.number}"
        for e_idx, emu in enumerate(emus)
        for r in emu.responses
        if isinstance(r.effective_fault, FunctionCall) and _requested_tool_choice(emu, r) == "none"
    ]


def _requested_tool_choice(emu: RealtimeEmulator, r: Any) -> object:
    """The ``tool_choice`` of the ``response.create`` that asked for response ``r``, if any."""
    for e in emu.events:
        if e.type == "response.create" and e.data.get("event_id") == r.create_event_id:
            return (e.data.get("response") or {}).get("tool_choice")
    return None


def failure_causes(emus: list[RealtimeEmulator]) -> tuple[int, list[str]]:
    """Failure causes seen on the wire (see ``one_error_per_cause``): count and descriptions."""
    causes: list[str] = []
    for e_idx, emu in enumerate(emus):
        for r in emu.responses:
            if r.status in _CAUSE_RESPONSE:
                causes.append(f"emu{e_idx + 1} response {r.number} {r.status}")
            fault = r.effective_fault
            if isinstance(fault, Malformed) and fault.kind in ("error_message_not_string",):
                causes.append(f"emu{e_idx + 1} response {r.number} malformed error event")
        for c in emu.connections:
            if c.outcome in _FAILED_HANDSHAKE:
                causes.append(f"emu{e_idx + 1} connection {c.number} {c.outcome}")
            elif c.closed_by == "server":
                on_conn = [r for r in emu.responses if r.conn == c.number]
                explained = on_conn and on_conn[-1].status in ("dropped", "failed")
                if not explained:
                    causes.append(f"emu{e_idx + 1} connection {c.number} closed by the server")
    return len(causes), causes


def _episodes(emu: RealtimeEmulator) -> list[int]:
    """Lengths of the runs of consecutive connection attempts with no healthy one between."""
    healthy = {r.conn for r in emu.responses if r.status in ("completed", "incomplete")}
    runs: list[int] = []
    run = 0
    previous_dropped = False
    for c in emu.connections:
        if c.number in healthy:
            if run:
                runs.append(run)
            run = 0
            previous_dropped = False
            continue
        if previous_dropped:  # aiohttp's own retry of a handshake dropped before any answer
            previous_dropped = c.outcome == "dropped"
            continue
        run += 1
        previous_dropped = c.outcome == "dropped"
    if run:
        runs.append(run)
    return runs


def _is_failed_connection(c: Any) -> bool:
    return c.outcome != "accepted" or c.closed_by == "server"


def _engine_fatal(emus: list[RealtimeEmulator]) -> str | None:
    emu = emus[0]
    for c in emu.connections:
        if c.outcome == "rejected" and c.status in (401, 403):
            return f"connection {c.number} upgrade {c.status}"
        if c.outcome == "accepted" and isinstance(c.fault, ErrorThenClose):
            if c.fault.code in FATAL_CODES:
                return f"connection {c.number} error {c.fault.code}"
    for r in emu.responses:
        fault = r.effective_fault
        if r.status == "failed" and isinstance(fault, FailResponse) and fault.code in FATAL_CODES:
            return f"response {r.number} failed {fault.code}"
    return None


_LIVE_OBJECTS: tuple[type, ...] = (llm.RealtimeModel, llm.LLM, llm.RealtimeSession)


def _walk(obj: Any, key: str, path: str, seen: set[int], depth: int, out: list[str]) -> None:
    if depth > 7 or id(obj) in seen or len(out) >= 3:
        return
    seen.add(id(obj))
    if isinstance(obj, (str, bytes)):
        text = obj if isinstance(obj, str) else obj.decode("latin-1")
        if key in text:
            out.append(path)
        return
    if isinstance(obj, (int, float, bool)) or obj is None:
        return
    try:
        if key in repr(obj) or key in str(obj):
            out.append(f"{path} ({type(obj).__name__})")
            return
    except Exception:  # a repr that fails is not a leak
        pass
    children: list[tuple[str, Any]] = []
    if isinstance(obj, BaseException):
        children += [(".__cause__", obj.__cause__), (".__context__", obj.__context__)]
        children += [(f"args[{i}]", a) for i, a in enumerate(obj.args)]
    if isinstance(obj, dict):
        children += [(f"[{k!r}]", v) for k, v in list(obj.items())[:200]]
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children += [(f"[{i}]", v) for i, v in enumerate(list(obj)[:500])]
    if isinstance(obj, _LIVE_OBJECTS):
        return  # a live model or client holds its key by design; only its repr is checked
    for name in ("request_info", "headers", "error", "body", "history"):
        if hasattr(type(obj), name) or name in getattr(obj, "__dict__", {}):
            with contextlib.suppress(Exception):
                children.append((f".{name}", getattr(obj, name)))
    with contextlib.suppress(Exception):
        children += [(f".{k}", v) for k, v in vars(obj).items()]
    for suffix, child in children:
        _walk(child, key, f"{path}{suffix}", seen, depth + 1, out)


def api_key_leaks(obs: Observation) -> list[str]:
    """Where the API key appears in what the session recorded or logged."""
    out: list[str] = []
    seen: set[int] = set()
    _walk([ev for _, ev in obs.errors], obs.api_key, "error_events", seen, 0, out)
    _walk(obs.recorded_events, obs.api_key, "session._recorded_events", seen, 0, out)
    for i, rec in enumerate(obs.log_records):
        texts = [rec.getMessage()]
        if rec.exc_info and rec.exc_info[1] is not None:
            texts.append("".join(traceback.format_exception(rec.exc_info[1])))
            _walk(rec.exc_info[1], obs.api_key, f"log[{i}].exc_info", seen, 0, out)
        texts.append(repr(vars(rec)))
        if any(obs.api_key in t for t in texts):
            out.append(f"log record {rec.name}:{rec.levelname} {rec.msg!r}"[:200])
    return out


def _deleted_for_good(emus: list[RealtimeEmulator]) -> set[str]:
    """Item ids whose last client operation was a ``conversation.item.delete`` that the server
    carried out (an id deleted, then created again, e.g. on a new connection, is not)."""
    last: dict[str, str] = {}
    for emu in emus:
        deleted = set(emu.deleted_items)
        for e in emu.events:
            if e.type == "conversation.item.create":
                item_id = (e.data.get("item") or {}).get("id")
                if item_id:
                    last[item_id] = "create"
            elif e.type == "conversation.item.delete":
                item_id = e.data.get("item_id")
                if item_id in deleted:
                    last[item_id] = "delete"
    return {i for i, op in last.items() if op == "delete"}


def _has_step(ex: Example, kind: type) -> bool:
    return any(isinstance(s.action, kind) for s in ex.steps)


def check(ex: Example, obs: Observation) -> list[Violation]:
    """Every invariant violated by the example (empty: all hold)."""
    v: list[Violation] = []

    def fail(name: str, detail: str) -> None:
        v.append(Violation(name, detail))

    if obs.setup_failed is not None:
        fail(
            "speech_ends_with_reply_or_exception", f"the session did not start: {obs.setup_failed}"
        )
        return v
    emus = obs.emus
    shutdown = obs.shutdown_at is not None
    close_time = obs.closed_at

    # single_create_in_flight
    for i, emu in enumerate(emus, 1):
        if emu.overlapping_creates:
            nums = [r.number for r in emu.overlapping_creates]
            fail("single_create_in_flight", f"emu{i}: response.create while active: {nums}")

    # tool_runs_once
    twice = {c: n for c, n in obs.tool_calls.items() if n > 1}
    if twice:
        fail("tool_runs_once", f"executions per call_id: {twice}")

    # history_agrees_with_server
    ids = [item.id for item in obs.history]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        fail("history_agrees_with_server", f"duplicate item ids in history: {dup}")
    failed_items = {
        item_id: r.status
        for emu in emus
        for r in emu.responses
        if r.status in _FAILED_RESPONSE
        for item_id in r.item_ids
    }
    deleted = _deleted_for_good(emus)
    for item in obs.history:
        if not isinstance(item, llm.ChatMessage) or item.role != "assistant":
            continue
        text = item.text_content or ""
        if not text.strip() and not item.interrupted:
            fail("history_agrees_with_server", f"empty assistant message {item.id}")
        elif text and text not in obs.heard_text:
            fail("history_agrees_with_server", f"unheard assistant text {text!r} ({item.id})")
        if item.id in failed_items and not item.interrupted:
            fail(
                "history_agrees_with_server",
                f"assistant item {item.id} of a {failed_items[item.id]} response kept as complete",
            )
        if item.id in deleted:
            fail("history_agrees_with_server", f"item {item.id} deleted on the server kept")

    # speech_ends_with_reply_or_exception
    for i, hr in enumerate(obs.handles, 1):
        if not hr.done:
            fail(
                "speech_ends_with_reply_or_exception",
                f"speech {i} ({hr.source}) not done {FINAL_WAIT:g}s after the last step",
            )
        elif not hr.interrupted and hr.exception is None and hr.chat_items == 0:
            fail(
                "speech_ends_with_reply_or_exception",
                f"speech {i} ({hr.source}) ended silently: no reply, no exception",
            )

    # no_unhandled_exception
    if obs.unhandled:
        fail("no_unhandled_exception", "; ".join(obs.unhandled)[:500])

    # one_error_per_cause: a turn that gave up adds one report of its own (error contract 2)
    n_causes, causes = failure_causes(emus)
    n_errors = len(obs.errors) - sum(hr.give_up_reports for hr in obs.handles)
    for i, hr in enumerate(obs.handles, 1):
        if hr.give_up_reports > 1:
            fail(
                "one_error_per_cause",
                f"speech {i} ({hr.source}) reported that it gave up {hr.give_up_reports} times",
            )
    # error contract 3 (docs/error-contract.md): once an engine gives up on its connection it
    # reports that itself, after the per-connection errors (the error event of the last one came
    # at once), once per engine: the primary's when the adapter took over, the last one's when
    # the session closed. This allows one error too many when the adapter took over for a turn
    # (0026) rather than for its engine, or when the close followed a fatal code
    swapped = ex.fallback is not None and emus[1].num_connections > 0
    closed_on_error = close_time is not None and any(
        getattr(ev.error, "recoverable", None) is False for _, ev in obs.errors
    )
    gave_up = int(swapped) + int(closed_on_error)
    if n_errors > n_causes + gave_up:
        kinds = [_describe_error(ev) for _, ev in obs.errors]
        fail(
            "one_error_per_cause",
            f"{n_errors} error events for {n_causes} causes on the wire: errors {kinds}; "
            f"causes {causes}",
        )
    if (
        n_causes == 0
        and not forbidden_calls(emus)
        and not (shutdown and obs.shutdown_drain is False)
    ):
        failed = [hr.exception for hr in obs.handles if hr.exception]
        if failed:
            fail("one_error_per_cause", f"no failure on the wire, yet speeches failed: {failed}")

    # recoverable_flag_per_contract
    asks = sorted(
        [e.t for emu in emus for e in emu.client_events("response.create")]
        + [c.t for emu in emus for c in emu.connections]
    )
    cancels = [t for t, _ in obs.user_cancels]
    for t, ev in obs.errors:
        recoverable = getattr(ev.error, "recoverable", None)
        after_cancel = any(c >= t - 0.05 for c in cancels)
        closed_after = close_time is not None and close_time >= t
        if recoverable is True:
            if _refused(ev.error.error):
                continue
            # error contract 2: the session's report stays recoverable when a turn gives up on
            # it (max_retry spent), and the turn reports that with its own recoverable=False
            # error, chained from this very failure
            turn_gave_up = any(
                hr.give_up_reports and id(ev.error.error) in hr.gave_up_on for hr in obs.handles
            )
            # the error cost no reply: a speech ended with its reply after it (a transient
            # `error` event during a response that then completed)
            replied_after = any(
                hr.chat_items
                and hr.exception is None
                and hr.ended_at is not None
                and hr.ended_at >= t
                for hr in obs.handles
            )
            if not any(a > t for a in asks) and not (
                after_cancel or closed_after or turn_gave_up or replied_after
            ):
                fail(
                    "recoverable_flag_per_contract",
                    f"{_describe_error(ev)} recoverable=True, but nothing asked again",
                )
        elif recoverable is False:
            handle_failed = any(
                hr.exception and hr.ended_at is not None and hr.ended_at >= t - 0.05
                for hr in obs.handles
            )
            swapped = ex.fallback is not None and emus[1].num_connections > 0
            if not (handle_failed or closed_after or swapped):
                fail(
                    "recoverable_flag_per_contract",
                    f"{_describe_error(ev)} recoverable=False, yet no turn failed and no close",
                )
    terminal = [t for t, ev in obs.errors if getattr(ev.error, "recoverable", None) is False]
    for i, hr in enumerate(obs.handles, 1):
        if hr.exception is None or hr.ended_at is None:
            continue
        if shutdown and obs.shutdown_at is not None and hr.ended_at >= obs.shutdown_at - 0.05:
            continue
        if hr.not_retryable:
            continue
        if ex.fallback is not None and emus[1].num_connections > 0:
            # error contract 6 (docs/error-contract.md): the adapter took over, so the turn's
            # error was recoverable
            continue
        if not any(t <= hr.ended_at + 0.05 for t in terminal):
            fail(
                "recoverable_flag_per_contract",
                f"speech {i} ({hr.source}) failed with {hr.exception} but no recoverable=False",
            )

    # attempts_bounded
    per = ex.max_retry + 1
    triggers = (
        obs.triggers["generate_reply"]
        + obs.triggers["vad_turn"]
        + sum(obs.tool_calls.values())
        + (len(emus[1].accepted_connections) if ex.fallback is not None else 0)
    )
    creates = sum(emu.num_response_creates for emu in emus)
    if creates > per * triggers:
        fail(
            "attempts_bounded",
            f"{creates} response.create for {triggers} turn triggers (max {per} each)",
        )
    for i, emu in enumerate(emus, 1):
        long_runs = [n for n in _episodes(emu) if n > per]
        if long_runs:
            fail(
                "attempts_bounded",
                f"emu{i}: {max(long_runs)} connection attempts in a row without a healthy one "
                f"(max {per}); outcomes {[c.outcome for c in emu.connections]}",
            )

    # close_per_contract
    if close_time is not None:
        terminal_before = [t for t in terminal if t <= close_time + 0.05]
        if not shutdown and not terminal_before:
            fail("close_per_contract", "the session closed with no recoverable=False error")
        if (
            not shutdown
            and ex.fallback is not None
            and not ex.fallback.connections
            and not ex.fallback.responses
            # a drop on demand (DropConnection) can fail the fallback too
            and not any(_is_failed_connection(c) for c in emus[1].connections)
        ):
            fail("close_per_contract", "the session closed while a healthy fallback model remained")
    elif ex.fallback is None and not shutdown:
        fatal = _engine_fatal(emus)
        runs = _episodes(emus[0])
        conns = emus[0].connections
        exhausted = (
            bool(runs)
            and runs[-1] >= per
            and bool(conns)
            and all(_is_failed_connection(c) for c in conns[-per:])
        )
        if fatal is not None:
            fail("close_per_contract", f"engine-fatal fault ({fatal}), yet the session stayed open")
        elif exhausted:
            fail(
                "close_per_contract",
                f"{per} failed connection attempts in a row, yet the session stayed open",
            )

    # no_api_key_leak
    leaks = api_key_leaks(obs)
    if leaks:
        fail("no_api_key_leak", f"the API key appears in: {leaks}")
    return v


def _describe_error(ev: ErrorEvent) -> str:
    err = ev.error
    inner = getattr(err, "error", err)
    return f"{type(inner).__name__}(recoverable={getattr(err, 'recoverable', None)})"


# ---------------------------------------------------------------------------------------------
# Hypothesis strategies
# ---------------------------------------------------------------------------------------------


def strategies() -> Any:
    """The Hypothesis strategies module (imported lazily: only the exploration needs it)."""
    from hypothesis import strategies as st

    return st


def response_faults() -> Any:
    """Every response fault of the vocabulary (healthy replies weighted up)."""
    st = strategies()
    base = st.one_of(
        st.just(Reply()),
        st.builds(
            FailResponse,
            code=st.sampled_from(["server_error", "rate_limit_exceeded", "insufficient_quota"]),
            type=st.just("server_error"),
            after_audio_deltas=st.sampled_from([0, 2]),
            close_after=st.booleans(),
        ),
        st.builds(RejectCreate, code=st.sampled_from(["rate_limit_exceeded", "invalid_value"])),
        st.just(FunctionCall(name=TOOL_NAME, arguments='{"city": "Paris"}')),
        st.just(CloseAfterCreated()),
        st.just(NoAnswer()),
        st.builds(
            Malformed,
            kind=st.sampled_from(
                [
                    "bad_json",
                    "unknown_type",
                    "missing_fields",
                    "status_details_string",
                    "error_message_not_string",
                ]
            ),
        ),
        st.builds(
            Incomplete,
            reason=st.sampled_from(["max_output_tokens", "content_filter"]),
            after_audio_deltas=st.sampled_from([None, 2]),
        ),
        st.builds(CloseMidStream, after_audio_deltas=st.sampled_from([0, 2])),
    )
    return st.one_of(
        st.just(Reply()),
        base,
        st.builds(RateLimitsBefore, then=base),
    )


def connection_faults() -> Any:
    """Every connection fault of the vocabulary."""
    st = strategies()
    return st.one_of(
        st.just(Healthy()),
        st.just(AcceptThenClose()),
        st.just(AcceptThenClose(after=0.3)),
        st.builds(
            ErrorThenClose,
            code=st.sampled_from(["server_error", "rate_limit_exceeded", "insufficient_quota"]),
        ),
        st.builds(SlowHandshake, seconds=st.sampled_from([0.2, 0.8])),
        st.just(HangHandshake()),
        st.builds(RejectUpgrade, status=st.sampled_from([401, 429, 500])),
    )


def _plans(responses: bool, connections: bool) -> Any:
    st = strategies()
    resp = (
        st.dictionaries(st.integers(1, 6), response_faults(), max_size=4)
        if responses
        else st.just({})
    )
    conn = (
        st.dictionaries(st.integers(1, 4), connection_faults(), max_size=3)
        if connections
        else st.just({})
    )
    return st.builds(lambda r, c: FaultPlan(responses=dict(r), connections=dict(c)), resp, conn)


def _actions(drops: bool) -> Any:
    st = strategies()
    choices = [
        st.builds(
            GenerateReply,
            instructions=st.sampled_from([None, "greet the user"]),
            tool_choice=st.sampled_from([None, "auto", "none", "required"]),
        ),
        st.builds(
            GenerateReply,
            instructions=st.sampled_from([None, "greet the user"]),
        ),
        st.just(VadTurn()),
        st.just(Say()),
        st.just(Interrupt()),
        st.just(UpdateChatCtx()),
    ]
    if drops:
        choices.append(st.just(DropConnection()))
    return st.one_of(*choices)


def _steps(drops: bool, shutdown: Literal["never", "maybe", "always"]) -> Any:
    st = strategies()
    gap = st.sampled_from([None, None, 0.0, 0.03, 0.15])
    body = st.lists(st.builds(Step, action=_actions(drops), gap=gap), min_size=1, max_size=4)
    if shutdown == "never":
        return body.map(tuple)
    last = st.builds(Step, action=st.builds(Shutdown, drain=st.booleans()), gap=st.just(None))
    tail = st.lists(last, min_size=1 if shutdown == "always" else 0, max_size=1)
    return st.builds(lambda b, t: tuple(b + t), body, tail)


Family = Literal["turns", "connections", "shutdown", "fallback", "all"]
FAMILIES: tuple[Family, ...] = ("turns", "connections", "shutdown", "fallback")


def examples(family: Family = "all") -> Any:
    """Strategy of Examples for one family of the exploration (``all``: everything at once).

    - ``turns``: response faults, every action but drops, no connection faults, no shutdown;
    - ``connections``: connection faults and closes on demand, with a few response faults;
    - ``shutdown``: any fault, the last step a draining or non-draining shutdown;
    - ``fallback``: RealtimeModelFallbackAdapter over two emulators (the second healthy).
    """
    st = strategies()
    max_retry = st.sampled_from([0, 1, 3])
    if family == "turns":
        return st.builds(
            Example, max_retry=max_retry, plan=_plans(True, False), steps=_steps(False, "never")
        )
    if family == "connections":
        return st.builds(
            Example, max_retry=max_retry, plan=_plans(True, True), steps=_steps(True, "never")
        )
    if family == "shutdown":
        return st.builds(
            Example, max_retry=max_retry, plan=_plans(True, True), steps=_steps(True, "always")
        )
    if family == "fallback":
        return st.builds(
            Example,
            max_retry=max_retry,
            plan=_plans(True, True),
            steps=_steps(True, "maybe"),
            fallback=st.just(FaultPlan()),
        )
    return st.builds(
        Example,
        max_retry=max_retry,
        plan=_plans(True, True),
        steps=_steps(True, "maybe"),
        fallback=st.one_of(st.none(), st.none(), st.just(FaultPlan()), _plans(True, True)),
    )


def run_and_check(ex: Example) -> tuple[Observation, list[Violation]]:
    """Run one example in a fresh event loop and check it (for Hypothesis' sync tests)."""
    obs = asyncio.run(run_example(ex))
    return obs, check(ex, obs)


__all__ = [
    "Example",
    "FAMILIES",
    "INVARIANTS",
    "Observation",
    "Step",
    "Violation",
    "check",
    "examples",
    "run_and_check",
    "run_example",
]
