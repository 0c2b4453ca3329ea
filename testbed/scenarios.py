"""Every fault mode the emulator can express, as a named, bounded scenario with one outcome shape.

The fault matrix of the bench (``bench/worker.py``: ``await scenarios.run(name)`` for each name in
``SCENARIOS``) and ``testbed/test_fault_matrix.py`` both run these, so the report is generated from
the same scenarios the tests run. A scenario is a ``FaultPlan`` + harness options + an async
driver, with a hard time cap. It runs on any build, pristine 1.8.9 or patched: what a build
does is observed and counted, never assumed, and nothing here asserts a behaviour.

Usage, from a plain ``asyncio.run`` (no pytest needed)::

    from testbed import scenarios

    outcome = await scenarios.run("failed_before_output")

Drivers
-------
- ``reply``: ``session.generate_reply(...)``, wait for its ``SpeechHandle`` (bounded by the
  cap), then settle (below).
- ``vad``: a server-VAD user turn (``emu.server_vad_turn``), then settle.
- ``window``: no action; watch for ``window`` seconds, or until the session emits ``close``
  (connection faults: the pristine build never gives up, so its count is per window).
- ``drops``: the server closes every connection ``AcceptThenClose.after`` seconds after
  accepting it; one ``generate_reply`` on each of the first ``replies`` connections (each
  waits until a connection with that number or a later one is open; stops if the session
  closes).

Settle: after the driver's own condition, wait until nothing has changed (client events,
responses, connections, session errors, audio frames, close) for ``QUIET`` seconds and no
emulator response is still pending or in progress, so a retry, a tool reply or a terminal close
that follows is counted. Always within the scenario's cap.

Outcome (``Outcome``, the dict ``run`` returns; every key always present)
------------------------------------------------------------------------------
- ``reply_delivered`` (bool): at least one audio frame reached the harness audio sink and no
  ``SpeechHandle`` of the scenario ended with an exception (``handle.exception()``; the
  ``vad`` driver has no handle, so there it is audio alone). So a reply that fails after some
  audio was played counts as delivered when the build leaves the handle without an exception,
  and as not delivered when it ends the handle with one.
- ``attempts`` (int): ``response_creates`` for response scenarios, ``connections`` for
  connection scenarios (``Scenario.counts``).
- ``response_creates`` (int): ``response.create`` events the client sent (emulator record).
- ``connections`` (int): websocket upgrade attempts the client made (emulator record).
- ``errors_recoverable`` / ``errors_fatal`` (int): the session's ``error`` events with
  ``recoverable`` True / False, counted up to the end of the settle, before the harness closes
  the session.
- ``close_emitted`` (bool): ``AgentSession`` emitted ``close`` by itself, before the harness
  closed it.
- ``unhandled`` (int): from the ``ExceptionGuard`` after the session, its HTTP session and the
  emulator are closed and ``gc.collect()`` ran (after the session closed and again after the
  emulator closed): unhandled asyncio exceptions passed to the
  loop's exception handler plus "Task/Future exception was never retrieved" log records.
- ``overlapping_creates`` (int): ``response.create`` events the emulator received while a
  response was active on the connection (``emu.overlapping_creates``).
- ``orphan_items`` (int): assistant messages in ``session.history`` at the end of the settle
  that the user did not get as the history says. A message counts once, when either:
  (a) *unheard*: its text is not part of the text the transcription sink received, i.e. the
  history holds words that were never played; or
  (b) *failed*: its id is an item created by a response the emulator did not complete (final
  status ``failed``, ``cancelled`` or ``dropped``) and the message is not marked
  ``interrupted``. A heard part of a failed or cancelled reply, committed as an interrupted
  message, is legitimate (the pipeline does the same) and is not an orphan.
- ``duplicate_tool_calls`` (int): executions of the scenario's function tool beyond the first,
  summed over ``call_id`` s (the tool records the ``call_id`` of every execution): 0 when every
  call ran at most once.

All times: ``Scenario.cap`` bounds the driver and the settle; set-up and tear-down have their
own caps (``SETUP_CAP``, ``TEARDOWN_CAP``), so ``Scenario.hard_cap`` bounds a whole run.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, TypedDict

from livekit.agents import Agent, RunContext, function_tool
from livekit.agents.voice.speech_handle import SpeechHandle

from .harness import ExceptionGuard, SessionHarness
from .realtime_emulator import (
    AcceptThenClose,
    CloseAfterCreated,
    ErrorThenClose,
    FailResponse,
    FaultPlan,
    FunctionCall,
    HangHandshake,
    Malformed,
    NoAnswer,
    RateLimit,
    RealtimeEmulator,
    RejectCreate,
    RejectUpgrade,
)

QUIET = 0.3
"""seconds without any change that end a settle (3x the first retry backoff, 0.1 s)"""
SETUP_CAP = 5.0
"""seconds allowed to start the emulator and the session"""
TEARDOWN_CAP = 5.0
"""seconds allowed to close the session, then again to close the emulator"""

TOOL_NAME = "lookup_weather"
FAILED_STATUSES = ("failed", "cancelled", "dropped")
"""emulator response statuses whose items must not stay in history unless interrupted"""


class Outcome(TypedDict):
    """What a scenario run observed; see the module docstring for each key."""

    reply_delivered: bool
    attempts: int
    response_creates: int
    connections: int
    errors_recoverable: int
    errors_fatal: int
    close_emitted: bool
    unhandled: int
    overlapping_creates: int
    orphan_items: int
    duplicate_tool_calls: int


OUTCOME_KEYS: dict[str, type] = {
    "reply_delivered": bool,
    "attempts": int,
    "response_creates": int,
    "connections": int,
    "errors_recoverable": int,
    "errors_fatal": int,
    "close_emitted": bool,
    "unhandled": int,
    "overlapping_creates": int,
    "orphan_items": int,
    "duplicate_tool_calls": int,
}
"""every Outcome key and its type, in report order"""


@dataclass
class Run:
    """The state of one scenario run, shared by its driver and the outcome collector.

    Attributes:
        scenario: the scenario.
        emu: the started emulator.
        h: the started harness.
        deadline: ``time.monotonic()`` at which the driver and settle must stop.
        handles: every ``SpeechHandle`` the driver created.
        tool_calls: executions of the function tool per ``call_id``.
        driver_timed_out: the driver's own condition was not reached within the cap.
    """

    scenario: Scenario
    emu: RealtimeEmulator
    h: SessionHarness
    deadline: float
    handles: list[SpeechHandle] = field(default_factory=list)
    tool_calls: Counter[str] = field(default_factory=Counter)
    driver_timed_out: bool = False

    @property
    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)


Driver = Callable[[Run], Awaitable[None]]


@dataclass(frozen=True)
class Scenario:
    """One fault mode.

    Attributes:
        name: the key in ``SCENARIOS``.
        description: one line for the report.
        plan: what the emulator does.
        drive: the driver (see the module docstring).
        counts: what ``attempts`` counts: ``response.create`` events or connection attempts.
        cap: seconds for the driver and the settle together (hard: the driver is cancelled).
        max_retry, retry_interval, timeout: the harness ``APIConnectOptions``.
        window: for the ``window`` driver, seconds to watch.
        replies: for the ``drops`` driver, the number of connections that each get a reply.
        tool: start the session with an agent that has the ``lookup_weather`` function tool.
    """

    name: str
    description: str
    plan: FaultPlan
    drive: Literal["reply", "vad", "window", "drops"] = "reply"
    counts: Literal["responses", "connections"] = "responses"
    cap: float = 3.0
    max_retry: int = 3
    retry_interval: float = 0.05
    timeout: float = 1.0
    window: float = 1.5
    replies: int = 3
    tool: bool = False

    @property
    def hard_cap(self) -> float:
        """The most a whole ``run`` of this scenario may take, set-up and tear-down included."""
        return SETUP_CAP + self.cap + 2 * TEARDOWN_CAP


# ---------------------------------------------------------------------------------------------
# drivers
# ---------------------------------------------------------------------------------------------


def _signature(run: Run) -> tuple[int, ...]:
    emu, h = run.emu, run.h
    return (
        len(emu.events),
        len(emu.responses),
        sum(1 for r in emu.responses if r.status in ("pending", "in_progress")),
        emu.num_connections,
        len(h.errors),
        len(h.audio.frames),
        len(h.audio.segments),
        int(h.closed.is_set()),
    )


async def _settle(run: Run) -> None:
    """Wait until nothing changed for QUIET seconds and no response is active (within cap)."""
    last, since = _signature(run), time.monotonic()
    while run.remaining > 0:
        await asyncio.sleep(min(0.02, run.remaining))
        now, current = time.monotonic(), _signature(run)
        if current != last:
            last, since = current, now
        elif not run.emu.has_active_response and now - since >= QUIET:
            return


async def _wait_handle(run: Run, handle: SpeechHandle) -> bool:
    """Wait for the handle to be done, within the cap; False when the cap ran out first."""
    try:
        await asyncio.wait_for(asyncio.shield(handle.wait_for_playout()), run.remaining)
    except asyncio.TimeoutError:
        return False
    return True


async def drive_reply(run: Run) -> None:
    handle = run.h.session.generate_reply(instructions="greet the user")
    run.handles.append(handle)
    if not await _wait_handle(run, handle):
        run.driver_timed_out = True
        return
    await _settle(run)


async def drive_vad(run: Run) -> None:
    await run.emu.wait_connected(timeout=run.remaining)
    await run.emu.server_vad_turn("what's the weather like?")
    await _settle(run)


async def drive_window(run: Run) -> None:
    window_end = time.monotonic() + min(run.scenario.window, run.remaining)
    while time.monotonic() < window_end and not run.h.closed.is_set():
        await asyncio.sleep(0.01)
    if run.h.closed.is_set():
        await _settle(run)


async def drive_drops(run: Run) -> None:
    emu = run.emu
    for n in range(1, run.scenario.replies + 1):

        def open_from(n: int = n) -> bool:
            return any(
                c.number >= n and c.outcome == "accepted" and c.closed_at is None
                for c in emu.connections
            )

        try:
            await emu.wait_for(open_from, timeout=run.remaining, what=f"connection {n}")
        except AssertionError:
            run.driver_timed_out = True
            return
        if run.h.closed.is_set():  # the session gave up: nothing to reply on
            break
        handle = run.h.session.generate_reply(instructions="greet the user")
        run.handles.append(handle)
        if not await _wait_handle(run, handle):
            run.driver_timed_out = True
            return
    await _settle(run)


DRIVERS: dict[str, Driver] = {
    "reply": drive_reply,
    "vad": drive_vad,
    "window": drive_window,
    "drops": drive_drops,
}


# ---------------------------------------------------------------------------------------------
# the agent with a function tool (counts executions per call_id)
# ---------------------------------------------------------------------------------------------


class _ToolAgent(Agent):
    def __init__(self, calls: Counter[str]) -> None:
        super().__init__(instructions="You are a helpful test assistant. Use your tools.")
        self._calls = calls

    @function_tool
    async def lookup_weather(self, context: RunContext, city: str = "Paris") -> str:
        """Look up the current weather in a city.

        Args:
            city: the city name.
        """
        self._calls[context.function_call.call_id] += 1
        return f"It is sunny in {city}."


# ---------------------------------------------------------------------------------------------
# the scenarios
# ---------------------------------------------------------------------------------------------

_TOOL_CALL = FunctionCall(name=TOOL_NAME, arguments='{"city": "Paris"}', call_id="call_matrix_1")
_EXHAUSTED = (RateLimit(name="requests", limit=1000, remaining=0, reset_seconds=0.3),)

_ALL: tuple[Scenario, ...] = (
    # -- responses ----------------------------------------------------------------------------
    Scenario("healthy_reply", "healthy generate_reply", FaultPlan()),
    Scenario("healthy_vad_turn", "healthy server-VAD turn", FaultPlan(), drive="vad"),
    Scenario(
        "failed_before_output",
        "response.done failed (server_error) before any output, once",
        FaultPlan(responses={1: FailResponse(code="server_error", type="server_error")}),
    ),
    Scenario(
        "failed_before_output_max_retry_0",
        "response.done failed (server_error) before output, once, max_retry=0",
        FaultPlan(responses={1: FailResponse(code="server_error", type="server_error")}),
        max_retry=0,
    ),
    Scenario(
        "failed_every_response",
        "every response.done failed (server_error) before output, max_retry=2",
        FaultPlan(every_response=FailResponse(code="server_error", type="server_error")),
        max_retry=2,
    ),
    Scenario(
        "failed_after_audio",
        "response.done failed (server_error) after 2 audio deltas",
        FaultPlan(responses={1: FailResponse(code="server_error", after_audio_deltas=2)}),
    ),
    Scenario(
        "failed_fatal_quota",
        "response.done failed with a fatal code (insufficient_quota)",
        FaultPlan(
            responses={1: FailResponse(code="insufficient_quota", type="insufficient_quota")}
        ),
    ),
    Scenario(
        "failed_inference_rate_limit",
        "response.done failed: inference_rate_limit_exceeded (type invalid_request_error)",
        FaultPlan(
            responses={
                1: FailResponse(code="inference_rate_limit_exceeded", type="invalid_request_error")
            }
        ),
    ),
    Scenario(
        "failed_then_close",
        "response.done failed (server_error), then the server closes the socket",
        FaultPlan(responses={1: FailResponse(code="server_error", close_after=True)}),
    ),
    Scenario(
        "rejected_rate_limit",
        "response.create rejected by an error event (rate_limit_exceeded)",
        FaultPlan(responses={1: RejectCreate(code="rate_limit_exceeded")}),
    ),
    Scenario(
        "rejected_rate_limit_reset_hint",
        "response.create rejected (rate_limit_exceeded), requests limit resets in 0.3 s",
        FaultPlan(responses={1: RejectCreate(code="rate_limit_exceeded", rate_limits=_EXHAUSTED)}),
    ),
    Scenario(
        "rejected_validation",
        "response.create rejected with a validation error (invalid_value)",
        FaultPlan(responses={1: RejectCreate(code="invalid_value", type="invalid_request_error")}),
    ),
    Scenario(
        "function_call",
        "function-call response: the tool runs, then the reply after the tool",
        FaultPlan(responses={1: _TOOL_CALL}),
        tool=True,
    ),
    Scenario(
        "function_call_reply_failed",
        "function-call response, then the reply after the tool fails before output",
        FaultPlan(responses={1: _TOOL_CALL, 2: FailResponse(code="server_error")}),
        tool=True,
    ),
    Scenario(
        "close_after_created",
        "the socket closes right after response.created",
        FaultPlan(responses={1: CloseAfterCreated()}),
    ),
    Scenario(
        "no_answer_timeout",
        "response.create never answered (generate_reply timeout; conn timeout 0.5 s)",
        FaultPlan(responses={1: NoAnswer()}),
        timeout=0.5,
        cap=2.5,
    ),
    Scenario(
        "vad_turn_failed",
        "server-VAD turn whose server-created response fails (server_error)",
        FaultPlan(responses={1: FailResponse(code="server_error", type="server_error")}),
        drive="vad",
    ),
    # -- malformed server events ---------------------------------------------------------------
    Scenario(
        "malformed_bad_json",
        "a non-JSON frame inside the response",
        FaultPlan(responses={1: Malformed("bad_json")}),
    ),
    Scenario(
        "malformed_unknown_type",
        "an event of unknown type inside the response",
        FaultPlan(responses={1: Malformed("unknown_type")}),
    ),
    Scenario(
        "malformed_missing_fields",
        "response.output_item.added with no fields",
        FaultPlan(responses={1: Malformed("missing_fields")}),
    ),
    Scenario(
        "malformed_status_details_string",
        "failed response.done whose status_details is a plain string",
        FaultPlan(responses={1: Malformed("status_details_string")}),
    ),
    Scenario(
        "malformed_error_message_not_string",
        "an error event whose message is an object",
        FaultPlan(responses={1: Malformed("error_message_not_string")}),
    ),
    # -- connections ---------------------------------------------------------------------------
    Scenario(
        "accept_then_close",
        "every connection accepted, then closed at once (1.5 s window, max_retry=2)",
        FaultPlan(every_connection=AcceptThenClose()),
        drive="window",
        counts="connections",
        max_retry=2,
    ),
    Scenario(
        "error_then_close",
        "every connection: an error event (server_error), then close (1.5 s window)",
        FaultPlan(every_connection=ErrorThenClose(code="server_error", type="server_error")),
        drive="window",
        counts="connections",
        max_retry=2,
    ),
    Scenario(
        "error_then_close_fatal",
        "every connection: an error event (insufficient_quota), then close (1.5 s window)",
        FaultPlan(
            every_connection=ErrorThenClose(code="insufficient_quota", type="insufficient_quota")
        ),
        drive="window",
        counts="connections",
        max_retry=2,
    ),
    Scenario(
        "handshake_hangs",
        "the upgrade is never answered (conn timeout 0.5 s, 2.5 s window, max_retry=2)",
        FaultPlan(every_connection=HangHandshake()),
        drive="window",
        counts="connections",
        max_retry=2,
        timeout=0.5,
        window=2.5,
    ),
    Scenario(
        "upgrade_401",
        "the upgrade is rejected with HTTP 401 invalid_api_key (1.5 s window)",
        FaultPlan(every_connection=RejectUpgrade(status=401)),
        drive="window",
        counts="connections",
        max_retry=2,
    ),
    Scenario(
        "upgrade_429",
        "the upgrade is rejected with HTTP 429 rate_limit_exceeded (1.5 s window)",
        FaultPlan(every_connection=RejectUpgrade(status=429)),
        drive="window",
        counts="connections",
        max_retry=2,
    ),
    Scenario(
        "upgrade_500",
        "the upgrade is rejected with HTTP 500 server_error (1.5 s window)",
        FaultPlan(every_connection=RejectUpgrade(status=500)),
        drive="window",
        counts="connections",
        max_retry=2,
    ),
    Scenario(
        "periodic_drops_then_reply",
        "every connection dropped after 0.6 s; a reply on each of 3 connections, max_retry=2",
        FaultPlan(every_connection=AcceptThenClose(after=0.6)),
        drive="drops",
        counts="connections",
        max_retry=2,
        cap=4.0,
    ),
)

SCENARIOS: dict[str, Scenario] = {s.name: s for s in _ALL}
"""every scenario by name, in report order"""


# ---------------------------------------------------------------------------------------------
# running one
# ---------------------------------------------------------------------------------------------


@dataclass
class Result:
    """A run: the outcome and how it went.

    Attributes:
        outcome: the Outcome dict.
        elapsed: seconds the whole run took (set-up and tear-down included).
        driver_timed_out: the driver's own condition was not reached within the cap.
        setup_failed: what went wrong starting the session, if anything (outcome still filled).
        driver_error: an unexpected exception the driver raised, if any (outcome still filled).
        teardown_timed_out: closing the session or the emulator hit ``TEARDOWN_CAP``.
        tool_executions: executions of the function tool, all call_ids together.
    """

    outcome: Outcome
    elapsed: float
    driver_timed_out: bool = False
    setup_failed: str | None = None
    driver_error: str | None = None
    teardown_timed_out: bool = False
    tool_executions: int = 0


def _orphan_items(run: Run) -> int:
    failed_items = {
        item_id for r in run.emu.responses if r.status in FAILED_STATUSES for item_id in r.item_ids
    }
    heard = run.h.text.text
    orphans = 0
    for msg in run.h.assistant_messages():
        text = msg.text_content or ""
        unheard = bool(text) and text not in heard
        failed = msg.id in failed_items and not msg.interrupted
        orphans += unheard or failed
    return orphans


def _delivered(run: Run) -> bool:
    if not run.h.audio.frames:
        return False
    return all(h.done() and h.exception() is None for h in run.handles)


async def run_scenario(name: str) -> Result:
    """Run the scenario ``name`` on the installed build; never raises for a build's behaviour."""
    scenario = SCENARIOS[name]
    t0 = time.monotonic()
    guard = ExceptionGuard().install()
    emu = RealtimeEmulator(scenario.plan)
    tool_calls: Counter[str] = Counter()
    h = SessionHarness(
        emu,
        max_retry=scenario.max_retry,
        retry_interval=scenario.retry_interval,
        timeout=scenario.timeout,
        agent=_ToolAgent(tool_calls) if scenario.tool else None,
        guard=guard,
    )
    run = Run(scenario=scenario, emu=emu, h=h, deadline=0.0, tool_calls=tool_calls)
    setup_failed: str | None = None
    driver_error: str | None = None
    teardown_timed_out = False
    try:
        try:
            await asyncio.wait_for(emu.start(), SETUP_CAP)
            await asyncio.wait_for(h.start(), SETUP_CAP)
        except Exception as e:  # reported, not raised: a build may fail to start
            setup_failed = f"{type(e).__name__}: {e}"
        else:
            run.deadline = time.monotonic() + scenario.cap
            try:
                await asyncio.wait_for(DRIVERS[scenario.drive](run), scenario.cap)
            except (asyncio.TimeoutError, AssertionError):
                run.driver_timed_out = True
            except Exception as e:  # reported, not raised: e.g. no connection to drive a turn on
                driver_error = f"{type(e).__name__}: {e}"

        # the scenario's observations, before the harness closes the session
        errors_recoverable = len(h.recoverable_errors)
        errors_fatal = len(h.unrecoverable_errors)
        close_emitted = h.closed.is_set()
        delivered = _delivered(run)
        orphans = _orphan_items(run) if setup_failed is None else 0
    finally:
        try:
            await asyncio.wait_for(h.aclose(), TEARDOWN_CAP)
        except asyncio.TimeoutError:
            teardown_timed_out = True
        try:
            await asyncio.wait_for(emu.aclose(), TEARDOWN_CAP)
        except asyncio.TimeoutError:
            teardown_timed_out = True
        await asyncio.sleep(0)
        # h.aclose() already ran the guard's gc passes after the session closed; one more for
        # what closing the emulator released
        gc.collect()
        unhandled = len(guard.seen())
        guard.uninstall()

    response_creates = emu.num_response_creates
    connections = emu.num_connections
    outcome: Outcome = {
        "reply_delivered": delivered,
        "attempts": response_creates if scenario.counts == "responses" else connections,
        "response_creates": response_creates,
        "connections": connections,
        "errors_recoverable": errors_recoverable,
        "errors_fatal": errors_fatal,
        "close_emitted": close_emitted,
        "unhandled": unhandled,
        "overlapping_creates": len(emu.overlapping_creates),
        "orphan_items": orphans,
        "duplicate_tool_calls": sum(n - 1 for n in tool_calls.values() if n > 1),
    }
    return Result(
        outcome=outcome,
        elapsed=time.monotonic() - t0,
        driver_timed_out=run.driver_timed_out,
        setup_failed=setup_failed,
        driver_error=driver_error,
        teardown_timed_out=teardown_timed_out,
        tool_executions=sum(tool_calls.values()),
    )


async def run(name: str) -> Outcome:
    """Run the scenario ``name`` and return its Outcome (see the module docstring)."""
    return (await run_scenario(name)).outcome


def format_table(outcomes: dict[str, Outcome]) -> str:
    """A plain-text table of outcomes, one row per scenario, one column per Outcome key."""
    short = {
        "reply_delivered": "reply",
        "attempts": "att",
        "response_creates": "creates",
        "connections": "conns",
        "errors_recoverable": "err_rec",
        "errors_fatal": "err_fatal",
        "close_emitted": "close",
        "unhandled": "unhandled",
        "overlapping_creates": "overlap",
        "orphan_items": "orphans",
        "duplicate_tool_calls": "dup_tools",
    }
    width = max(len(n) for n in outcomes) if outcomes else 8
    header = f"{'scenario':<{width}}  " + "  ".join(f"{short[k]:>9}" for k in OUTCOME_KEYS)
    rows = [header]
    for name, o in outcomes.items():
        cells = []
        for key in OUTCOME_KEYS:
            value = o[key]  # type: ignore[literal-required]
            cells.append(f"{('yes' if value else 'no') if isinstance(value, bool) else value:>9}")
        rows.append(f"{name:<{width}}  " + "  ".join(cells))
    return "\n".join(rows)


async def run_all(names: list[str] | None = None) -> dict[str, Result]:
    """Run the scenarios (default: all, in order) one after the other."""
    return {name: await run_scenario(name) for name in names or list(SCENARIOS)}


__all__ = [
    "DRIVERS",
    "OUTCOME_KEYS",
    "Outcome",
    "Result",
    "Run",
    "SCENARIOS",
    "Scenario",
    "format_table",
    "run",
    "run_all",
    "run_scenario",
]
