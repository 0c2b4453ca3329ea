"""The fault plan: what the emulator does to each connection and each response.

See the package docstring for the vocabulary table.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# ---------------------------------------------------------------------------------------------
# normal behaviour
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A normal audio reply: one assistant message item, audio deltas and transcript deltas.

    Args:
        transcript: the text of the reply; split over the deltas.
        audio_deltas: number of ``response.output_audio.delta`` events (each ``chunk_ms`` long).
        chunk_ms: duration of one audio delta (PCM16, 24 kHz, mono).
        delta_interval: seconds between two deltas (the emulator is faster than real time).
    """

    transcript: str = "Hello from the emulator."
    audio_deltas: int = 5
    chunk_ms: int = 20
    delta_interval: float = 0.004


@dataclass(frozen=True)
class RateLimit:
    """One entry of a ``rate_limits.updated`` event."""

    name: Literal["requests", "tokens"] = "requests"
    limit: int = 1000
    remaining: int = 999
    reset_seconds: float = 0.06


# ---------------------------------------------------------------------------------------------
# response faults, keyed by response number
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FailResponse:
    """The response ends with ``response.done`` ``status="failed"`` and ``status_details.error``.

    Args:
        code: ``status_details.error.code``.
        type: ``status_details.error.type``.
        message: ``status_details.error.message``.
        after_audio_deltas: 0 = fail before any output item; K > 0 = open the assistant message
            item, send K audio (and transcript) deltas, then fail.
        close_after: close the socket right after the failed ``response.done``.
        rate_limits: if set, a ``rate_limits.updated`` with these entries is sent just before
            the failed ``response.done``.
    """

    code: str = "server_error"
    type: str = "server_error"
    message: str = "The server had an error while processing your request."
    after_audio_deltas: int = 0
    close_after: bool = False
    rate_limits: tuple[RateLimit, ...] | None = None


@dataclass(frozen=True)
class RejectCreate:
    """The ``response.create`` is answered by an ``error`` event carrying its ``event_id``.

    No ``response.created`` is sent.

    Args:
        code: ``error.code``.
        type: ``error.type``.
        message: ``error.message``.
        rate_limits: if set, a ``rate_limits.updated`` with these entries precedes the error
            (how OpenAI announces when an exhausted limit resets).
    """

    code: str = "rate_limit_exceeded"
    type: str = "invalid_request_error"
    message: str = "Rate limit reached for requests. Please try again later."
    rate_limits: tuple[RateLimit, ...] | None = None


@dataclass(frozen=True)
class FunctionCall:
    """The response outputs a ``function_call`` item instead of a message, then completes.

    Args:
        name: function name.
        arguments: JSON arguments string.
        call_id: the call id; generated when None.
        then_fail: if set, the response ends ``status=failed`` as this fault says (after the
            call was emitted) instead of completing.
    """

    name: str
    arguments: str = "{}"
    call_id: str | None = None
    then_fail: FailResponse | None = None


@dataclass(frozen=True)
class CloseAfterCreated:
    """The server closes the socket right after sending this response's ``response.created``."""


@dataclass(frozen=True)
class NoAnswer:
    """The ``response.create`` is swallowed: no ``response.created``, no error, nothing.

    Used for ``generate_reply`` timeouts. The swallowed request does not make a response
    active on the server.
    """


MalformedKind = Literal[
    "bad_json",
    "unknown_type",
    "missing_fields",
    "status_details_string",
    "error_message_not_string",
]


@dataclass(frozen=True)
class Malformed:
    """A malformed server event inside this response.

    Kinds:
        ``bad_json``: a text frame that is not JSON.
        ``unknown_type``: ``{"type": "response.emulator_unknown", ...}``.
        ``missing_fields``: ``{"type": <event_type>, "event_id": ...}`` and nothing else.
        ``error_message_not_string``: an ``error`` event whose ``error.message`` is an object.
        ``status_details_string``: special: the response fails before output and its
            ``response.done`` carries ``status_details`` as a plain string, not an object.

    For every kind but ``status_details_string`` the malformed frame is sent right after
    ``response.created`` and the response then completes normally (``then`` = a Reply).

    Args:
        kind: which malformation.
        event_type: the ``type`` of the ``missing_fields`` event.
    """

    kind: MalformedKind
    event_type: str = "response.output_item.added"


IncompleteReason = Literal["max_output_tokens", "content_filter"]


@dataclass(frozen=True)
class Incomplete:
    """The response streams, then ends with ``response.done`` ``status="incomplete"``.

    The assistant message item is opened, K audio (and transcript) deltas are sent, then the
    part is closed (``output_audio.done``, ``output_audio_transcript.done``,
    ``content_part.done``), the item is done with ``status="incomplete"`` and
    ``response.done`` carries ``status_details={"type": "incomplete", "reason": reason}``.

    Args:
        reason: ``status_details.reason``: ``max_output_tokens`` or ``content_filter``.
        after_audio_deltas: K, the deltas sent before the end; None (or K at least the reply's
            ``audio_deltas``) = the full reply, then the incomplete end.
    """

    reason: IncompleteReason = "max_output_tokens"
    after_audio_deltas: int | None = None


@dataclass(frozen=True)
class CloseMidStream:
    """The server closes the socket in the middle of this response's audio.

    The assistant message item is opened and K audio (and transcript) deltas are sent, then the
    socket is closed: no ``response.done`` (record: ``dropped``).

    Args:
        after_audio_deltas: K; 0 = close right after the message item was opened.
    """

    after_audio_deltas: int = 1


# what a response can do, but for a rate_limits.updated before it (RateLimitsBefore wraps one)
_PlainResponseFault = (
    Reply
    | FailResponse
    | RejectCreate
    | FunctionCall
    | CloseAfterCreated
    | NoAnswer
    | Malformed
    | Incomplete
    | CloseMidStream
)


@dataclass(frozen=True)
class RateLimitsBefore:
    """A ``rate_limits.updated`` event as soon as the ``response.create`` arrives, then ``then``.

    Per response, whatever the response then does (a normal reply, a failure, a rejection, a
    tool call ...): the event precedes the answer to the create (``response.created`` or the
    ``error``). For a server-VAD response it precedes ``response.created``.

    Args:
        rate_limits: the entries of the event (e.g. ``remaining=0, reset_seconds=1.0``).
        then: the response fault that follows (None = the plan's ``reply``); not itself a
            ``RateLimitsBefore``.
    """

    rate_limits: tuple[RateLimit, ...] = (
        RateLimit(name="requests", limit=1000, remaining=0, reset_seconds=0.5),
    )
    then: _PlainResponseFault | None = None

    def __post_init__(self) -> None:
        if isinstance(self.then, RateLimitsBefore):
            raise TypeError("RateLimitsBefore(then=RateLimitsBefore(...)) is not a plan item")


ResponseFault = _PlainResponseFault | RateLimitsBefore

# ---------------------------------------------------------------------------------------------
# connection faults, keyed by connection attempt number
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Healthy:
    """A normal connection (the default)."""


@dataclass(frozen=True)
class AcceptThenClose:
    """Accept the upgrade, then close the socket.

    Args:
        after: seconds of normal service before the close; 0 = close at once, before even
            ``session.created``.
    """

    after: float = 0.0


@dataclass(frozen=True)
class ErrorThenClose:
    """Accept the upgrade, send ``session.created``, one ``error`` event, then close.

    Args:
        code: ``error.code``.
        type: ``error.type``.
        message: ``error.message``.
        rate_limits: if set, a ``rate_limits.updated`` with these entries precedes the error.
        after: seconds of normal service before the error (a server that fails late).
        close_after: seconds between the error and the close (0: at once, as servers do).
    """

    code: str = "server_error"
    type: str = "server_error"
    message: str = "The server had an error while processing your request."
    rate_limits: tuple[RateLimit, ...] | None = None
    after: float = 0.0
    close_after: float = 0.0


@dataclass(frozen=True)
class HangHandshake:
    """Never answer the upgrade request (until the emulator shuts down)."""


@dataclass(frozen=True)
class RejectUpgrade:
    """Answer the upgrade with an HTTP error and an OpenAI-shaped JSON error body.

    Args:
        status: HTTP status, e.g. 401, 403, 429, 500, 503.
        code: ``error.code`` in the body; a default per status when None
            (401 ``invalid_api_key``, 429 ``rate_limit_exceeded``, else ``server_error``).
    """

    status: int = 500
    code: str | None = None


@dataclass(frozen=True)
class SlowHandshake:
    """Answer the upgrade only after ``seconds``, then serve the connection normally.

    ``HangHandshake`` never answers. A client that gave up before the answer is recorded with
    outcome ``abandoned``. ``emu.drop_connection()`` during the delay drops the handshake.

    Args:
        seconds: the delay before the upgrade (or the authorization failure) is answered.
    """

    seconds: float = 0.5


ConnectionFault = (
    Healthy | AcceptThenClose | ErrorThenClose | HangHandshake | RejectUpgrade | SlowHandshake
)


@dataclass(frozen=True)
class FaultPlan:
    """What the emulator does. The empty plan is a healthy server.

    Args:
        responses: fault per response number (1-based). A response number is taken by every
            ``response.create`` received and by every server-created (VAD) response, in
            arrival order, over the whole emulator lifetime (all connections).
        every_response: fault for responses not listed in ``responses`` (default: ``reply``).
        connections: fault per connection attempt number (1-based, every upgrade request).
        every_connection: fault for attempts not listed in ``connections`` (default Healthy).
        reply: what a normal reply looks like.
        rate_limits: the ``rate_limits.updated`` entries sent after each ``response.created``
            (None = do not send that event).
    """

    responses: Mapping[int, ResponseFault] = field(default_factory=dict)
    every_response: ResponseFault | None = None
    connections: Mapping[int, ConnectionFault] = field(default_factory=dict)
    every_connection: ConnectionFault | None = None
    reply: Reply = field(default_factory=Reply)
    rate_limits: tuple[RateLimit, ...] | None = (
        RateLimit(name="requests", limit=1000, remaining=999, reset_seconds=0.06),
        RateLimit(name="tokens", limit=50000, remaining=49000, reset_seconds=0.6),
    )

    def response_fault(self, number: int) -> ResponseFault:
        """The behaviour of response ``number`` (1-based)."""
        fault = self.responses.get(number, self.every_response)
        return fault if fault is not None else self.reply

    def connection_fault(self, number: int) -> ConnectionFault:
        """The behaviour of connection attempt ``number`` (1-based)."""
        fault = self.connections.get(number, self.every_connection)
        return fault if fault is not None else Healthy()


def random_faults(
    p: float, *, seed: int, count: int, fault: ResponseFault | None = None
) -> dict[int, ResponseFault]:
    """Response numbers 1..count that fail with probability ``p`` each (seeded, reproducible).

    For ``FaultPlan(responses=random_faults(0.3, seed=1, count=1000))``; ``fault`` defaults to
    ``FailResponse()`` (a pre-output ``server_error``).
    """
    rng = random.Random(seed)
    chosen = fault if fault is not None else FailResponse()
    return {n: chosen for n in range(1, count + 1) if rng.random() < p}


# ---------------------------------------------------------------------------------------------
# JSON form (for the CLI, ``python -m testbed.realtime_emulator --plan '<json>'``)
# ---------------------------------------------------------------------------------------------


def _plan_types() -> dict[str, type]:
    """Every plan dataclass of this module by name (looked up at call time, so a fault added
    to the vocabulary is in the JSON form at once)."""
    return {
        name: obj
        for name, obj in globals().items()
        if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj is not FaultPlan
    }


# the discriminator of a plan dataclass in JSON ("kind" and "type" are fields of some faults)
_TAG = "fault"


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {_TAG: type(value).__name__}
        for f in dataclasses.fields(value):
            out[f.name] = _to_json(getattr(value, f.name))
        return out
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any, *, default_kind: str | None = None) -> Any:
    if isinstance(value, list):
        return tuple(_from_json(v, default_kind=default_kind) for v in value)
    if not isinstance(value, Mapping):
        return value
    fields = dict(value)
    kind = fields.pop(_TAG, default_kind)
    types = _plan_types()
    cls = types.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown fault kind {kind!r}; one of: {', '.join(sorted(types))}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(fields) - known
    if unknown:
        raise ValueError(f"{kind}: unknown field(s) {', '.join(sorted(unknown))}")
    kwargs = {
        k: _from_json(v, default_kind="RateLimit" if k == "rate_limits" else None)
        for k, v in fields.items()
    }
    return cls(**kwargs)


def fault_to_json(fault: Any) -> dict[str, Any]:
    """``FailResponse(code="x")`` -> ``{"fault": "FailResponse", "code": "x", ...}`` (nested
    faults and ``RateLimit`` entries likewise, tuples as lists)."""
    return _to_json(fault)


def fault_from_json(obj: Mapping[str, Any]) -> Any:
    """The inverse of ``fault_to_json``; unknown kinds and fields raise ValueError.
    ``rate_limits`` entries may leave out ``"fault": "RateLimit"``."""
    return _from_json(obj)


def plan_to_json(plan: FaultPlan) -> dict[str, Any]:
    """A FaultPlan as plain JSON data (response/connection numbers become string keys)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(plan):
        value = getattr(plan, f.name)
        if isinstance(value, Mapping):
            out[f.name] = {str(n): _to_json(v) for n, v in value.items()}
        else:
            out[f.name] = _to_json(value)
    return out


def plan_from_json(obj: Mapping[str, Any]) -> FaultPlan:
    """The inverse of ``plan_to_json``; every key is optional (``{}`` is the healthy plan).

    Example: ``{"every_connection": {"fault": "RejectUpgrade", "status": 401}}``.
    """
    fields = {f.name: f for f in dataclasses.fields(FaultPlan)}
    unknown = set(obj) - set(fields)
    if unknown:
        raise ValueError(f"FaultPlan: unknown field(s) {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for key, value in obj.items():
        if key in ("responses", "connections"):
            kwargs[key] = {int(n): _from_json(v) for n, v in value.items()}
        elif key == "reply":
            kwargs[key] = _from_json(value, default_kind="Reply")
        elif key == "rate_limits":
            kwargs[key] = _from_json(value, default_kind="RateLimit")
        else:
            kwargs[key] = _from_json(value)
    return FaultPlan(**kwargs)
