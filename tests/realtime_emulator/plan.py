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
    """

    name: str
    arguments: str = "{}"
    call_id: str | None = None


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


ResponseFault = (
    Reply | FailResponse | RejectCreate | FunctionCall | CloseAfterCreated | NoAnswer | Malformed
)

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
    """

    code: str = "server_error"
    type: str = "server_error"
    message: str = "The server had an error while processing your request."
    rate_limits: tuple[RateLimit, ...] | None = None


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


ConnectionFault = Healthy | AcceptThenClose | ErrorThenClose | HangHandshake | RejectUpgrade


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
# JSON form (for the CLI, ``python -m tests.realtime_emulator --plan '<json>'``)
# ---------------------------------------------------------------------------------------------

_FAULT_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        Reply,
        FailResponse,
        RejectCreate,
        FunctionCall,
        CloseAfterCreated,
        NoAnswer,
        Malformed,
        Healthy,
        AcceptThenClose,
        ErrorThenClose,
        HangHandshake,
        RejectUpgrade,
    )
}


def _rate_limits_to_json(limits: tuple[RateLimit, ...] | None) -> list[dict[str, Any]] | None:
    return None if limits is None else [dataclasses.asdict(r) for r in limits]


def _rate_limits_from_json(value: Any) -> tuple[RateLimit, ...] | None:
    return None if value is None else tuple(RateLimit(**r) for r in value)


def fault_to_json(fault: ResponseFault | ConnectionFault) -> dict[str, Any]:
    """``FailResponse(code="x")`` -> ``{"kind": "FailResponse", "code": "x", ...}``."""
    out: dict[str, Any] = {"kind": type(fault).__name__}
    for f in dataclasses.fields(fault):
        value = getattr(fault, f.name)
        out[f.name] = _rate_limits_to_json(value) if f.name == "rate_limits" else value
    return out


def fault_from_json(obj: Mapping[str, Any]) -> ResponseFault | ConnectionFault:
    """The inverse of ``fault_to_json``; unknown kinds and fields raise ValueError."""
    fields = dict(obj)
    kind = fields.pop("kind", None)
    cls = _FAULT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown fault kind {kind!r}; one of: {', '.join(_FAULT_TYPES)}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(fields) - known
    if unknown:
        raise ValueError(f"{kind}: unknown field(s) {', '.join(sorted(unknown))}")
    if "rate_limits" in fields:
        fields["rate_limits"] = _rate_limits_from_json(fields["rate_limits"])
    return cls(**fields)


def plan_to_json(plan: FaultPlan) -> dict[str, Any]:
    """A FaultPlan as plain JSON data (response/connection numbers become string keys)."""
    return {
        "responses": {str(n): fault_to_json(f) for n, f in plan.responses.items()},
        "every_response": None
        if plan.every_response is None
        else fault_to_json(plan.every_response),
        "connections": {str(n): fault_to_json(f) for n, f in plan.connections.items()},
        "every_connection": (
            None if plan.every_connection is None else fault_to_json(plan.every_connection)
        ),
        "reply": fault_to_json(plan.reply),
        "rate_limits": _rate_limits_to_json(plan.rate_limits),
    }


def plan_from_json(obj: Mapping[str, Any]) -> FaultPlan:
    """The inverse of ``plan_to_json``; every key is optional (``{}`` is the healthy plan).

    Example: ``{"every_connection": {"kind": "RejectUpgrade", "status": 401}}``.
    """
    unknown = set(obj) - {f.name for f in dataclasses.fields(FaultPlan)}
    if unknown:
        raise ValueError(f"FaultPlan: unknown field(s) {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for key in ("responses", "connections"):
        if key in obj:
            kwargs[key] = {int(n): fault_from_json(f) for n, f in obj[key].items()}
    for key in ("every_response", "every_connection"):
        if obj.get(key) is not None:
            kwargs[key] = fault_from_json(obj[key])
    if "reply" in obj:
        reply = fault_from_json(
            {"kind": "Reply", **obj["reply"]} if "kind" not in obj["reply"] else obj["reply"]
        )
        if not isinstance(reply, Reply):
            raise ValueError("FaultPlan.reply must be a Reply")
        kwargs["reply"] = reply
    if "rate_limits" in obj:
        kwargs["rate_limits"] = _rate_limits_from_json(obj["rate_limits"])
    return FaultPlan(**kwargs)
