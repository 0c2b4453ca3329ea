"""An OpenAI Realtime API emulator for tests: a real aiohttp websocket server on 127.0.0.1.

It speaks the GA protocol the way livekit-agents 1.8.9's OpenAI engine
(``livekit/agents/llm/_realtime/openai.py``) uses it, and misbehaves on purpose as told by a
``FaultPlan``, so a test reads "given this plan, expect that".

Quick start::

    from testbed.harness import SessionHarness
    from testbed.realtime_emulator import FailResponse, FaultPlan, RealtimeEmulator

    plan = FaultPlan(responses={1: FailResponse(code="server_error")})
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, max_retry=3) as h:
        handle = h.session.generate_reply(instructions="greet the user")
        await h.wait_for_speech(handle, what="the greeting")
        assert emu.num_response_creates == 2 and h.audio.frames
        assert not emu.overlapping_creates
    h.guard.assert_clean()   # no unhandled / "never retrieved" exceptions

Protocol (what a healthy emulator does)
---------------------------------------
- ``GET /v1/realtime?model=...`` upgrade; ``Authorization: Bearer <api_key>`` is checked
  (wrong key: HTTP 401 with an OpenAI JSON error body, code ``invalid_api_key``). Every
  accepted connection first gets ``session.created``. Use ``RealtimeModel(base_url=emu.http_url,
  api_key=emu.api_key)``.
- ``session.update`` -> ``session.updated``.
- ``conversation.item.create`` -> ``conversation.item.added`` + ``conversation.item.done`` (the
  item echoed, an id generated if absent); ``conversation.item.delete`` ->
  ``conversation.item.deleted`` (unknown id: ``error`` ``item_delete_invalid_item_id`` with
  the event_id); ``conversation.item.truncate`` -> ``conversation.item.truncated``.
- ``input_audio_buffer.append`` accepted; ``.commit`` -> ``committed`` + user item (or
  ``input_audio_buffer_commit_empty``); ``.clear`` -> ``cleared``.
- ``response.create`` -> ``response.created`` (``response.metadata`` echoed: the engine matches
  ``metadata.client_event_id``), ``rate_limits.updated``, ``response.output_item.added``,
  ``conversation.item.added``, ``response.content_part.added``, N x
  (``response.output_audio_transcript.delta``, ``response.output_audio.delta``: base64 PCM16,
  24 kHz mono, ``chunk_ms`` each), ``response.output_audio.done``,
  ``response.output_audio_transcript.done``, ``response.content_part.done``,
  ``response.output_item.done``, ``conversation.item.done``, ``response.done`` (status
  ``completed``, with usage). Deltas are paced by ``Reply.delta_interval`` (fast).
- A ``response.create`` while a response is active -> ``error``
  ``conversation_already_has_active_response`` (with event_id); recorded as an overlap.
- ``response.cancel`` -> the active response ends: ``response.output_item.done`` (incomplete),
  ``response.done`` status ``cancelled`` reason ``client_cancelled``; with nothing active:
  ``error`` "Cancellation failed: no active response found".
- Unknown client event type -> ``error`` ``invalid_value``; a non-JSON client frame -> ``error``
  ``invalid_json`` (kept in ``emu.raw_frames``).
- ``await emu.server_vad_turn(transcript)`` plays a server-VAD turn: ``speech_started`` (an
  active response is cancelled with reason ``turn_detected``), ``speech_stopped``,
  ``input_audio_buffer.committed``, the user item ``conversation.item.added``,
  ``conversation.item.input_audio_transcription.completed``, then a server-created response
  (no metadata, ``origin="server"``), which takes a response number like any other.

Fault vocabulary
----------------
``FaultPlan(responses={N: <response fault>}, every_response=..., connections={N: <connection
fault>}, every_connection=..., reply=Reply(...), rate_limits=(RateLimit(...), ...))``

Response numbers (1-based) are taken, in arrival order over the emulator's whole life (all
connections), by every ``response.create`` received (rejected and overlapping ones included)
and by every server-created VAD response. Connection numbers (1-based) are upgrade attempts.

=====================================================  ==========================================
Plan item                                              What the emulator does
=====================================================  ==========================================
``Reply(transcript, audio_deltas=5, chunk_ms=20,       normal audio reply (the default, also
delta_interval=0.004)``                                ``FaultPlan.reply``)
``FailResponse(code, type, message)``                  ``response.created`` then ``response.done``
                                                       ``status=failed``, ``status_details.error``
                                                       ``{type, code, message}``, no output
``FailResponse(..., after_audio_deltas=K)``            opens the message item, sends K audio (and
                                                       transcript) deltas, then fails as above
``FailResponse(..., close_after=True)``                ... then closes the socket (fail-then-close)
``FailResponse(..., rate_limits=(RateLimit(...),))``   ``rate_limits.updated`` just before the
                                                       failed ``response.done``
``RejectCreate(code="rate_limit_exceeded",             ``error`` event with ``event_id`` = the
type="invalid_request_error", message)``               create's event_id; no ``response.created``
``RejectCreate(..., rate_limits=(RateLimit(...),))``   ``rate_limits.updated`` (e.g.
                                                       ``reset_seconds``) precedes the error
``FunctionCall(name, arguments="{}", call_id=None)``   output item ``type=function_call`` with
                                                       name/call_id/arguments (+ arguments
                                                       delta/done events), then completed
``FunctionCall(..., then_fail=FailResponse(...))``     ... then ``response.done status=failed``
                                                       (a response that called a tool, then
                                                       failed)
``CloseAfterCreated()``                                socket closed right after this response's
                                                       ``response.created`` (record: ``dropped``)
``NoAnswer()``                                         the ``response.create`` is swallowed: no
                                                       answer at all (generate_reply timeout)
``Malformed("bad_json")``                              a non-JSON text frame after
                                                       ``response.created``; response completes
``Malformed("unknown_type")``                          ``{"type": "response.emulator_unknown"}``
``Malformed("missing_fields", event_type=...)``        ``{"type": event_type, "event_id"}`` only
                                                       (default ``response.output_item.added``)
``Malformed("error_message_not_string")``              ``error`` event whose ``message`` is an
                                                       object
``Malformed("status_details_string")``                 response fails before output with
                                                       ``status_details`` a plain string
``Incomplete(reason="max_output_tokens"|               opens the message item, K audio (and
"content_filter", after_audio_deltas=None)``           transcript) deltas (None: the full reply),
                                                       closes the part, item done ``status=
                                                       incomplete``, ``response.done`` ``status=
                                                       incomplete``, ``status_details={"type":
                                                       "incomplete", "reason": reason}``
``CloseMidStream(after_audio_deltas=K)``               opens the message item, K audio deltas,
                                                       then the server closes the socket (no
                                                       ``response.done``; record: ``dropped``)
``RateLimitsBefore(rate_limits=(RateLimit(...),),      ``rate_limits.updated`` as soon as the
then=<fault>)``                                        create arrives (or before a VAD response),
                                                       then ``then`` (None: the plan's reply)
``every_response=<fault>``                             the fault for every response not in
                                                       ``responses`` (e.g. persistent failure)
``responses=random_faults(p, seed=, count=,            each response number 1..count fails with
fault=FailResponse())``                                probability p (seeded; for benches)
``rate_limits=(RateLimit(name, limit, remaining,       ``rate_limits.updated`` sent after each
reset_seconds), ...)``                                 ``response.created`` (None: not sent)
``Healthy()``                                          normal connection (the default)
``AcceptThenClose()``                                  upgrade accepted, socket closed at once
                                                       (before ``session.created``)
``AcceptThenClose(after=S)``                           normal service for S seconds, then close
                                                       (healthy session with periodic drops)
``ErrorThenClose(code, type, message)``                ``session.created``, one ``error`` event
                                                       ``{type, code}``, then close
``ErrorThenClose(..., rate_limits=(RateLimit(),))``    ``rate_limits.updated`` precedes the error
``ErrorThenClose(..., after=S)``                       normal service for S seconds, then the
                                                       error and the close (fails late)
``HangHandshake()``                                    the upgrade is never answered (until the
                                                       emulator closes or ``drop_connection``)
``SlowHandshake(seconds)``                             the upgrade is answered after ``seconds``,
                                                       then a normal connection (a client that
                                                       left meanwhile: outcome ``abandoned``)
``RejectUpgrade(status=401|403|429|500|..., code)``    HTTP error with an OpenAI JSON body
                                                       (401 ``invalid_api_key``, 429
                                                       ``rate_limit_exceeded``, else
                                                       ``server_error``; ``code`` overrides)
=====================================================  ==========================================

Driving and injecting (on the newest open connection unless ``conn=`` is given)
-------------------------------------------------------------------------------
``await emu.server_vad_turn(transcript)`` -> ResponseRecord; ``await emu.send_event(dict)``;
``await emu.send_raw(text)``; ``await emu.send_rate_limits((RateLimit(...),))``;
``await emu.drop_connection()`` (a close on demand at any moment: mid-response the active
response is recorded ``dropped``; with no open connection it drops the pending hanging or slow
handshake, outcome ``dropped``); ``await emu.wait_connected()`` -> connection number.

Records and queries
-------------------
- ``emu.events``: every client event, ``ClientEvent(conn, t=time.monotonic(), type, data)``;
  ``emu.client_events(type=None, conn=None)``; ``emu.response_creates``;
  ``emu.num_response_creates``.
- ``emu.connections``: every attempt, ``ConnectionRecord(number, t, fault, model, outcome=
  accepted|rejected|unauthorized|hung|abandoned|dropped, status, closed_at, closed_by=
  server|client, answered_at)``;
  ``emu.num_connections``; ``emu.accepted_connections``.
- ``emu.responses``: every response number, ``ResponseRecord(number, conn, origin=client|server,
  fault, requested_at, create_event_id, metadata, response_id, status=pending|in_progress|
  completed|failed|incomplete|cancelled|rejected|unanswered|dropped, overlapped, created_at,
  done_at, item_ids, audio_deltas, cancel_reason)``, ``.effective_fault`` (a
  ``RateLimitsBefore`` unwrapped); ``emu.responses_with(status)``.
- ``emu.overlapping_creates``: records of ``response.create`` received while a response was
  active (should be empty); ``emu.has_active_response``.
- ``emu.deleted_items``: ids deleted by ``conversation.item.delete``.
- ``await emu.wait_for(predicate, timeout=5, what=...)`` and
  ``await emu.wait_for_event(type, count=1, timeout=5)``: bounded waits that raise
  AssertionError("emulator: timed out ... waiting for <what>").

Lifecycle
---------
``async with RealtimeEmulator(plan, api_key=DEFAULT_API_KEY) as emu`` (or ``await
emu.start()`` / ``await emu.aclose()``, or the ``emulator`` / ``emulator_factory`` fixtures of
``testbed/conftest.py``). ``aclose()`` releases hanging handshakes, closes every socket, cancels
the response tasks (all named ``emulator.*``) and stops the server; nothing is left running.
``emu.http_url`` is ``http://127.0.0.1:<port>/v1``; ``emu.ws_url`` the full websocket URL.

Harness (``testbed/harness.py``)
------------------------------
``SessionHarness(emu, max_retry=3, retry_interval=0.05, timeout=1.0,
max_unrecoverable_errors=3, agent=None, model_kwargs=None, session_kwargs=None, guard=None,
api_key=None, playout_speed=None, fallback=None)``, an async context manager: builds ``openai.realtime.RealtimeModel(base_url=
emu.http_url, api_key=..., conn_options=APIConnectOptions(max_retry, retry_interval, timeout))``
and ``AgentSession(llm=model, conn_options=SessionConnectOptions(llm_conn_options=<same>))``,
started with the agent, no room, ``record=False``; with ``fallback=<second emulator>`` the
session's LLM is ``RealtimeModelFallbackAdapter([model, model on the second emulator])``
(``h.fallback_model``). Attributes: ``h.session``, ``h.model``,
``h.realtime_session``, ``h.audio`` (RecordingAudioOutput: ``frames``, ``pushed_duration``,
``segments``, ``interrupted_segments``; plays instantly), ``h.text`` (RecordingTextOutput:
``text``, ``flushed``), ``h.errors`` (session ErrorEvents; ``h.recoverable_errors``,
``h.unrecoverable_errors``, ``h.realtime_errors``, ``h.describe_errors()``), ``h.close_events``,
``h.closed`` (asyncio.Event), ``h.aclose_error`` (what ``session.aclose()`` raised, if
anything), ``h.assistant_messages()``, ``h.user_messages()``, ``h.guard`` (ExceptionGuard:
``collect()``, ``seen()``, ``never_retrieved``, ``assert_clean()``). Waits (AssertionError with
``what`` on timeout): ``h.wait_for(predicate, timeout, what)``,
``h.wait_for_speech(handle, timeout, what)``, ``h.wait_closed(timeout, what)``.
"""

from .plan import (
    AcceptThenClose,
    CloseAfterCreated,
    CloseMidStream,
    ConnectionFault,
    ErrorThenClose,
    FailResponse,
    FaultPlan,
    FunctionCall,
    HangHandshake,
    Healthy,
    Incomplete,
    IncompleteReason,
    Malformed,
    MalformedKind,
    NoAnswer,
    RateLimit,
    RateLimitsBefore,
    RejectCreate,
    RejectUpgrade,
    Reply,
    ResponseFault,
    SlowHandshake,
    random_faults,
)
from .server import (
    DEFAULT_API_KEY,
    ClientEvent,
    ConnectionRecord,
    RealtimeEmulator,
    ResponseRecord,
)

__all__ = [
    "AcceptThenClose",
    "ClientEvent",
    "CloseAfterCreated",
    "CloseMidStream",
    "ConnectionFault",
    "ConnectionRecord",
    "DEFAULT_API_KEY",
    "ErrorThenClose",
    "FailResponse",
    "FaultPlan",
    "FunctionCall",
    "HangHandshake",
    "Healthy",
    "Incomplete",
    "IncompleteReason",
    "Malformed",
    "MalformedKind",
    "NoAnswer",
    "RateLimit",
    "RateLimitsBefore",
    "RealtimeEmulator",
    "RejectCreate",
    "RejectUpgrade",
    "Reply",
    "ResponseFault",
    "ResponseRecord",
    "SlowHandshake",
    "random_faults",
]
