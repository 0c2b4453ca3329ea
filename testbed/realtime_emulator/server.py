"""A websocket server that speaks the OpenAI Realtime GA protocol, driven by a FaultPlan."""

from __future__ import annotations

import array
import asyncio
import base64
import contextlib
import itertools
import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from aiohttp import web

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
    Incomplete,
    Malformed,
    NoAnswer,
    RateLimit,
    RateLimitsBefore,
    RejectCreate,
    RejectUpgrade,
    Reply,
    ResponseFault,
    SlowHandshake,
)

SAMPLE_RATE = 24000
DEFAULT_API_KEY = "sk-emulator-test-key"

# ---------------------------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientEvent:
    """One client event as received (parsed JSON)."""

    conn: int
    """connection number (1-based, the attempt number)"""
    t: float
    """time.monotonic() at reception"""
    type: str
    data: dict[str, Any]


@dataclass
class ConnectionRecord:
    """One connection attempt (one upgrade request)."""

    number: int
    t: float
    """time.monotonic() when the upgrade request arrived"""
    fault: ConnectionFault
    model: str | None
    outcome: Literal["accepted", "rejected", "unauthorized", "hung", "abandoned", "dropped"] = (
        "accepted"
    )
    """hung: never answered (HangHandshake); abandoned: the client left during a SlowHandshake
    delay; dropped: ``drop_connection()`` during a hanging or slow handshake"""
    status: int = 101
    """101 when upgraded, the HTTP status when rejected, 0 when the handshake hung, was
    abandoned or dropped"""
    closed_at: float | None = None
    closed_by: Literal["server", "client"] | None = None
    answered_at: float | None = None
    """time.monotonic() when the upgrade was answered (None: never answered)"""


ResponseStatus = Literal[
    "pending",
    "in_progress",
    "completed",
    "failed",
    "incomplete",
    "cancelled",
    "rejected",
    "unanswered",
    "dropped",
]


@dataclass
class ResponseRecord:
    """One response number: a ``response.create`` received or a server-created response."""

    number: int
    conn: int
    origin: Literal["client", "server"]
    fault: ResponseFault
    """the plan item (a ``RateLimitsBefore`` stays wrapped here; ``effective_fault`` unwraps)"""
    requested_at: float
    create_event_id: str | None = None
    metadata: Any = None
    response_id: str | None = None
    status: ResponseStatus = "pending"
    """final states: completed, failed, incomplete, cancelled, rejected (error event, or
    overlap), unanswered (NoAnswer), dropped (socket closed while active)"""
    overlapped: bool = False
    """the response.create arrived while another response was active on the connection"""
    created_at: float | None = None
    done_at: float | None = None
    item_ids: list[str] = field(default_factory=list)
    audio_deltas: int = 0
    cancel_reason: str | None = None

    @property
    def effective_fault(self) -> ResponseFault:
        """What the response does after an optional ``RateLimitsBefore`` (its ``then``)."""
        return _effective(self.fault, None)


def _effective(fault: ResponseFault, reply: Reply | None) -> ResponseFault:
    if isinstance(fault, RateLimitsBefore):
        inner = fault.then
        return inner if inner is not None else (reply if reply is not None else Reply())
    return fault


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def _pcm_chunk(chunk_ms: int, index: int) -> bytes:
    samples = SAMPLE_RATE * chunk_ms // 1000
    start = index * samples
    buf = array.array(
        "h",
        (
            int(3000 * math.sin(2 * math.pi * 440 * (start + i) / SAMPLE_RATE))
            for i in range(samples)
        ),
    )
    return buf.tobytes()


def _split_text(text: str, parts: int) -> list[str]:
    if parts <= 0:
        return []
    size = math.ceil(len(text) / parts) if text else 0
    return [text[i * size : (i + 1) * size] for i in range(parts)]


def _error_body(type_: str, code: str | None, message: Any, event_id: str | None = None) -> dict:
    return {"type": type_, "code": code, "message": message, "param": None, "event_id": event_id}


_UPGRADE_ERRORS: dict[int, tuple[str, str, str]] = {
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    429: ("rate_limit_error", "rate_limit_exceeded", "Rate limit reached. Try again later."),
}


# ---------------------------------------------------------------------------------------------
# connection
# ---------------------------------------------------------------------------------------------


@dataclass
class _Active:
    record: ResponseRecord
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class _Connection:
    def __init__(self, emu: RealtimeEmulator, record: ConnectionRecord, ws: web.WebSocketResponse):
        self.emu = emu
        self.record = record
        self.ws = ws
        self.number = record.number
        self.items: list[str] = []
        self.active: _Active | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.input_audio_bytes = 0
        self.conversation_id = _new_id("conv")
        self._send_lock = asyncio.Lock()
        self._close_task: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        return self._close_task is not None or self.ws.closed

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def send(self, event: dict[str, Any]) -> None:
        event.setdefault("event_id", _new_id("event"))
        await self.send_raw(json.dumps(event))

    async def send_raw(self, text: str) -> None:
        async with self._send_lock:
            if self.closed:
                return
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError, aiohttp.ClientError):
                pass

    async def close(self) -> None:
        """Close from the server side; safe to call from any task, cancellation-proof."""
        if self._close_task is None:
            if self.record.closed_by is None:
                self.record.closed_by = "server"
            self._close_task = asyncio.ensure_future(self._do_close())
        await asyncio.shield(self._close_task)

    async def _do_close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()

    async def wait_closed(self) -> None:
        if self._close_task is not None:
            with contextlib.suppress(Exception):
                await self._close_task

    def insert_item(self, item_id: str, previous_item_id: str | None) -> str | None:
        """Insert an item in the conversation; returns the previous item id actually used."""
        if previous_item_id == "root":
            self.items.insert(0, item_id)
            return None
        if previous_item_id and previous_item_id in self.items:
            self.items.insert(self.items.index(previous_item_id) + 1, item_id)
            return previous_item_id
        prev = self.items[-1] if self.items else None
        self.items.append(item_id)
        return prev


# ---------------------------------------------------------------------------------------------
# emulator
# ---------------------------------------------------------------------------------------------


async def _commit_user_item(conn: _Connection, item_id: str) -> None:
    """The input buffer committed as a user audio item: ``committed``, then ``item.added``."""
    prev = conn.insert_item(item_id, None)
    await conn.send(
        {"type": "input_audio_buffer.committed", "previous_item_id": prev, "item_id": item_id}
    )
    await conn.send(
        {
            "type": "conversation.item.added",
            "previous_item_id": prev,
            "item": {
                "id": item_id,
                "object": "realtime.item",
                "type": "message",
                "status": "completed",
                "role": "user",
                "content": [{"type": "input_audio", "transcript": None}],
            },
        }
    )


async def _item_done(
    conn: _Connection, response_id: str | None, prev: str | None, done_item: dict[str, Any]
) -> None:
    """An output item finished: ``response.output_item.done`` then ``conversation.item.done``."""
    await conn.send(
        {
            "type": "response.output_item.done",
            "response_id": response_id,
            "output_index": 0,
            "item": done_item,
        }
    )
    await conn.send({"type": "conversation.item.done", "previous_item_id": prev, "item": done_item})


class RealtimeEmulator:
    """An OpenAI Realtime websocket server on 127.0.0.1 (ephemeral port). See the package doc."""

    def __init__(
        self,
        plan: FaultPlan | None = None,
        *,
        api_key: str = DEFAULT_API_KEY,
        voice: str = "marin",
    ) -> None:
        self.plan = plan or FaultPlan()
        self.api_key = api_key
        self.voice = voice

        self.events: list[ClientEvent] = []
        """every client event received, in order"""
        self.connections: list[ConnectionRecord] = []
        """every connection attempt, in order"""
        self.responses: list[ResponseRecord] = []
        """every response number handed out, in order"""
        self.deleted_items: list[str] = []
        """ids of items deleted by ``conversation.item.delete`` (successful deletes)"""
        self.raw_frames: list[tuple[int, float, str]] = []
        """client text frames that were not JSON: (conn, t, text)"""

        self._conns: dict[int, _Connection] = {}
        self._handshakes: dict[int, tuple[web.Request, asyncio.Event]] = {}
        """upgrades not yet answered (HangHandshake, SlowHandshake): request, release event"""
        self._attempts = itertools.count(1)
        self._response_numbers = itertools.count(1)
        self._changed = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> RealtimeEmulator:
        app = web.Application()
        app.router.add_get("/v1/realtime", self._handle_upgrade)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        addresses = self._runner.addresses
        assert addresses, "the emulator is not listening"
        self._port = int(addresses[0][1])
        return self

    async def aclose(self) -> None:
        self._stopping.set()
        for request, release in list(self._handshakes.values()):
            if request.transport is not None:
                request.transport.close()
            release.set()
        for conn in list(self._conns.values()):
            for task in list(conn.tasks):
                task.cancel()
        await asyncio.gather(
            *(c.close() for c in list(self._conns.values())), return_exceptions=True
        )
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=2.0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> RealtimeEmulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def port(self) -> int:
        assert self._port is not None, "emulator not started"
        return self._port

    @property
    def http_url(self) -> str:
        """Base URL for ``RealtimeModel(base_url=...)``: ``http://127.0.0.1:<port>/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime?model=gpt-realtime"

    # -- queries --------------------------------------------------------------------------------

    def client_events(
        self, type: str | None = None, *, conn: int | None = None
    ) -> list[ClientEvent]:
        """Client events, optionally filtered by type and connection number."""
        return [
            e
            for e in self.events
            if (type is None or e.type == type) and (conn is None or e.conn == conn)
        ]

    @property
    def response_creates(self) -> list[ClientEvent]:
        return self.client_events("response.create")

    @property
    def num_response_creates(self) -> int:
        return len(self.response_creates)

    @property
    def overlapping_creates(self) -> list[ResponseRecord]:
        """``response.create`` requests that arrived while a response was active."""
        return [r for r in self.responses if r.overlapped]

    @property
    def num_connections(self) -> int:
        """Number of connection attempts (upgrade requests), whatever their outcome."""
        return len(self.connections)

    @property
    def accepted_connections(self) -> list[ConnectionRecord]:
        return [c for c in self.connections if c.outcome == "accepted"]

    def responses_with(self, status: ResponseStatus) -> list[ResponseRecord]:
        return [r for r in self.responses if r.status == status]

    @property
    def has_active_response(self) -> bool:
        return any(c.active is not None for c in self._conns.values())

    # -- waiting --------------------------------------------------------------------------------

    async def wait_for(
        self, predicate: Callable[[], bool], *, timeout: float = 5.0, what: str = "condition"
    ) -> None:
        """Wait until ``predicate()`` holds; AssertionError naming ``what`` after ``timeout``."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(predicate), timeout)
            except asyncio.TimeoutError:
                raise AssertionError(
                    f"emulator: timed out after {timeout}s waiting for {what}"
                ) from None

    async def wait_for_event(
        self, type: str, *, count: int = 1, timeout: float = 5.0
    ) -> list[ClientEvent]:
        """Wait until ``count`` client events of ``type`` were received; return them."""
        await self.wait_for(
            lambda: len(self.client_events(type)) >= count,
            timeout=timeout,
            what=f"{count} client event(s) {type!r} (got {len(self.client_events(type))})",
        )
        return self.client_events(type)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- driving --------------------------------------------------------------------------------

    def _current(self, conn: int | None) -> _Connection:
        if conn is not None:
            return self._conns[conn]
        open_conns = [c for c in self._conns.values() if not c.closed]
        if not open_conns:
            raise RuntimeError("no open connection")
        return open_conns[-1]

    async def wait_connected(self, *, timeout: float = 5.0) -> int:
        """Wait for an open connection; return its number."""
        await self.wait_for(
            lambda: any(not c.closed for c in self._conns.values()),
            timeout=timeout,
            what="an open connection",
        )
        return self._current(None).number

    async def send_event(self, event: dict[str, Any], *, conn: int | None = None) -> None:
        """Send a server event on a connection (default: the newest open one)."""
        await self._current(conn).send(event)

    async def send_raw(self, text: str, *, conn: int | None = None) -> None:
        """Send a raw text frame on a connection (default: the newest open one)."""
        await self._current(conn).send_raw(text)

    async def drop_connection(self, *, conn: int | None = None) -> None:
        """Close a connection from the server side, at any moment.

        Default: the newest open connection (mid-response too: the active response is recorded
        ``dropped``); when none is open, the newest handshake still waiting for its answer
        (``HangHandshake``, ``SlowHandshake``): its TCP connection is closed without an answer
        and the attempt is recorded ``dropped``. ``conn=N`` picks attempt N either way.
        RuntimeError when there is nothing to drop.
        """
        if conn is None:
            open_conns = [c for c in self._conns.values() if not c.closed]
            if open_conns:
                await open_conns[-1].close()
                return
            if not self._handshakes:
                raise RuntimeError("no open connection and no pending handshake")
            conn = max(self._handshakes)
        if conn in self._conns:
            await self._conns[conn].close()
            return
        if conn not in self._handshakes:
            raise RuntimeError(f"connection {conn} is neither open nor in its handshake")
        request, release = self._handshakes.pop(conn)
        record = self.connections[conn - 1]
        record.outcome, record.status = "dropped", 0
        record.closed_by, record.closed_at = "server", time.monotonic()
        if request.transport is not None:
            request.transport.close()
        release.set()
        await self._notify()

    async def send_rate_limits(
        self, rate_limits: tuple[RateLimit, ...], *, conn: int | None = None
    ) -> None:
        await self._current(conn).send(self._rate_limits_event(rate_limits))

    async def server_vad_turn(
        self, transcript: str = "What's the weather like?", *, conn: int | None = None
    ) -> ResponseRecord:
        """Play a server-VAD user turn and answer it with a server-created response.

        Sends ``input_audio_buffer.speech_started`` (cancelling an active response, as OpenAI's
        ``interrupt_response`` does), ``speech_stopped``, ``committed``, the user item
        ``conversation.item.added``, ``conversation.item.input_audio_transcription.completed``,
        then starts a response with no metadata (its record has ``origin="server"``).
        """
        c = self._current(conn)
        item_id = _new_id("item")
        await c.send(
            {"type": "input_audio_buffer.speech_started", "audio_start_ms": 100, "item_id": item_id}
        )
        if (active := c.active) is not None:
            active.record.cancel_reason = "turn_detected"
            active.cancel.set()
            if active.task is not None:
                await asyncio.wait([active.task], timeout=2.0)
        await asyncio.sleep(0.005)
        await c.send(
            {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 1100, "item_id": item_id}
        )
        await _commit_user_item(c, item_id)
        await c.send(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item_id,
                "content_index": 0,
                "transcript": transcript,
                "usage": {"type": "duration", "seconds": 1.0},
            }
        )
        return await self._start_response(c, origin="server", create_event=None)

    # -- http -----------------------------------------------------------------------------------

    async def _handle_upgrade(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            return await self._handle_upgrade_impl(request)
        finally:
            self._handlers.discard(task)
            await self._notify()

    async def _handle_upgrade_impl(self, request: web.Request) -> web.StreamResponse:
        number = next(self._attempts)
        fault = self.plan.connection_fault(number)
        record = ConnectionRecord(
            number=number,
            t=time.monotonic(),
            fault=fault,
            model=request.query.get("model"),
        )
        self.connections.append(record)
        await self._notify()

        if isinstance(fault, HangHandshake):
            record.outcome, record.status = "hung", 0
            await self._hold_handshake(number, request, None)
            raise web.HTTPServiceUnavailable()

        if isinstance(fault, SlowHandshake):
            if not await self._hold_handshake(number, request, fault.seconds):
                raise web.HTTPServiceUnavailable()  # dropped, or the emulator is stopping
            if request.transport is None or request.transport.is_closing():
                record.outcome, record.status = "abandoned", 0
                record.closed_at, record.closed_by = time.monotonic(), "client"
                raise web.HTTPServiceUnavailable()

        record.answered_at = time.monotonic()
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            record.outcome, record.status = "unauthorized", 401
            return self._http_error(401, None)

        if isinstance(fault, RejectUpgrade):
            record.outcome, record.status = "rejected", fault.status
            return self._http_error(fault.status, fault.code)

        ws = web.WebSocketResponse(timeout=2.0, max_msg_size=0, autoping=True)
        await ws.prepare(request)
        conn = _Connection(self, record, ws)
        self._conns[number] = conn
        await self._notify()
        try:
            await self._serve(conn, fault)
        finally:
            # only the small records outlive a connection (memory benches count per cycle)
            self._conns.pop(number, None)
        return ws

    async def _hold_handshake(
        self, number: int, request: web.Request, seconds: float | None
    ) -> bool:
        """Keep an upgrade unanswered for ``seconds`` (None: until released).

        True when the delay ran out; False when ``drop_connection`` dropped the handshake or
        the emulator is stopping.
        """
        release = asyncio.Event()
        self._handshakes[number] = (request, release)
        stopping = asyncio.ensure_future(self._stopping.wait())
        released = asyncio.ensure_future(release.wait())
        try:
            await asyncio.wait([stopping, released], timeout=seconds, return_when="FIRST_COMPLETED")
            return not (stopping.done() or released.done())
        finally:
            self._handshakes.pop(number, None)
            for waiter in (stopping, released):
                waiter.cancel()

    async def _serve(self, conn: _Connection, fault: ConnectionFault) -> None:
        record = conn.record
        if isinstance(fault, AcceptThenClose) and fault.after <= 0:
            await conn.close()
            record.closed_at = time.monotonic()
            return

        await conn.send(self._session_created_event())

        if isinstance(fault, ErrorThenClose) and fault.after <= 0 and fault.close_after <= 0:
            await self._error_then_close(conn, fault)
            return

        if isinstance(fault, AcceptThenClose):
            conn.spawn(self._close_later(conn, fault.after), name="emulator.close_later")
        elif isinstance(fault, ErrorThenClose):
            conn.spawn(self._error_then_close_later(conn, fault), name="emulator.error_later")

        try:
            async for msg in conn.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                await self._on_client_frame(conn, msg.data)
        finally:
            if record.closed_by is None:
                record.closed_by = "client"
            if conn.active is not None:
                conn.active.record.status = "dropped"
                conn.active.record.done_at = time.monotonic()
                conn.active = None
            current = asyncio.current_task()
            tasks = [t for t in conn.tasks if t is not current]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await conn.wait_closed()
            record.closed_at = time.monotonic()

    async def _error_then_close(self, conn: _Connection, fault: ErrorThenClose) -> None:
        if fault.rate_limits:
            await conn.send(self._rate_limits_event(fault.rate_limits))
        await conn.send(
            {"type": "error", "error": _error_body(fault.type, fault.code, fault.message)}
        )
        if fault.close_after > 0:
            await asyncio.sleep(fault.close_after)
        await conn.close()
        conn.record.closed_at = time.monotonic()

    async def _error_then_close_later(self, conn: _Connection, fault: ErrorThenClose) -> None:
        await asyncio.sleep(fault.after)
        await self._error_then_close(conn, fault)

    async def _close_later(self, conn: _Connection, delay: float) -> None:
        await asyncio.sleep(delay)
        await conn.close()

    def _http_error(self, status: int, code: str | None) -> web.Response:
        type_, default_code, message = _UPGRADE_ERRORS.get(
            status, ("server_error", "server_error", "The server had an error.")
        )
        body = {
            "error": {
                "message": message,
                "type": type_,
                "code": code or default_code,
                "param": None,
            }
        }
        return web.json_response(body, status=status)

    # -- client events --------------------------------------------------------------------------

    async def _on_client_frame(self, conn: _Connection, text: str) -> None:
        now = time.monotonic()
        try:
            event = json.loads(text)
            if not isinstance(event, dict):
                raise ValueError("not an object")
        except ValueError:
            self.raw_frames.append((conn.number, now, text))
            await conn.send(
                {
                    "type": "error",
                    "error": _error_body(
                        "invalid_request_error", "invalid_json", "Invalid JSON in client event."
                    ),
                }
            )
            return

        type_ = str(event.get("type"))
        self.events.append(ClientEvent(conn=conn.number, t=now, type=type_, data=event))
        handler = {
            "session.update": self._on_session_update,
            "conversation.item.create": self._on_conversation_item_create,
            "conversation.item.delete": self._on_conversation_item_delete,
            "conversation.item.truncate": self._on_conversation_item_truncate,
            "conversation.item.retrieve": self._on_conversation_item_retrieve,
            "input_audio_buffer.append": self._on_input_audio_buffer_append,
            "input_audio_buffer.clear": self._on_input_audio_buffer_clear,
            "input_audio_buffer.commit": self._on_input_audio_buffer_commit,
            "response.create": self._on_response_create,
            "response.cancel": self._on_response_cancel,
        }.get(type_)
        if handler is None:
            await conn.send(
                {
                    "type": "error",
                    "error": _error_body(
                        "invalid_request_error",
                        "invalid_value",
                        f"Invalid value: '{type_}'. Unknown client event type.",
                        event.get("event_id"),
                    ),
                }
            )
        else:
            await handler(conn, event)
        await self._notify()

    def _session_created_event(self) -> dict[str, Any]:
        return {
            "type": "session.created",
            "session": {
                "type": "realtime",
                "object": "realtime.session",
                "id": _new_id("sess"),
                "model": "gpt-realtime",
                "output_modalities": ["audio"],
                "audio": {
                    "input": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE}},
                    "output": {
                        "format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
                        "voice": self.voice,
                    },
                },
            },
        }

    async def _on_session_update(self, conn: _Connection, event: dict[str, Any]) -> None:
        session = dict(self._session_created_event()["session"])
        session.update(event.get("session") or {})
        await conn.send({"type": "session.updated", "session": session})

    async def _on_conversation_item_create(self, conn: _Connection, event: dict[str, Any]) -> None:
        item = dict(event.get("item") or {})
        item.setdefault("id", _new_id("item"))
        item.setdefault("object", "realtime.item")
        item.setdefault("status", "completed")
        prev = conn.insert_item(item["id"], event.get("previous_item_id"))
        await conn.send({"type": "conversation.item.added", "previous_item_id": prev, "item": item})
        await conn.send({"type": "conversation.item.done", "previous_item_id": prev, "item": item})

    async def _on_conversation_item_delete(self, conn: _Connection, event: dict[str, Any]) -> None:
        item_id = event.get("item_id")
        if item_id in conn.items:
            conn.items.remove(item_id)
            self.deleted_items.append(item_id)
            await conn.send({"type": "conversation.item.deleted", "item_id": item_id})
        else:
            await conn.send(
                {
                    "type": "error",
                    "error": _error_body(
                        "invalid_request_error",
                        "item_delete_invalid_item_id",
                        f"Error deleting item: the item with id '{item_id}' does not exist.",
                        event.get("event_id"),
                    ),
                }
            )

    async def _on_conversation_item_truncate(
        self, conn: _Connection, event: dict[str, Any]
    ) -> None:
        await conn.send(
            {
                "type": "conversation.item.truncated",
                "item_id": event.get("item_id"),
                "content_index": event.get("content_index", 0),
                "audio_end_ms": event.get("audio_end_ms", 0),
            }
        )

    async def _on_conversation_item_retrieve(
        self, conn: _Connection, event: dict[str, Any]
    ) -> None:
        return None

    async def _on_input_audio_buffer_append(self, conn: _Connection, event: dict[str, Any]) -> None:
        with contextlib.suppress(ValueError, TypeError):
            conn.input_audio_bytes += len(base64.b64decode(event.get("audio") or ""))

    async def _on_input_audio_buffer_clear(self, conn: _Connection, event: dict[str, Any]) -> None:
        conn.input_audio_bytes = 0
        await conn.send({"type": "input_audio_buffer.cleared"})

    async def _on_input_audio_buffer_commit(self, conn: _Connection, event: dict[str, Any]) -> None:
        if conn.input_audio_bytes < SAMPLE_RATE * 2 // 10:
            await conn.send(
                {
                    "type": "error",
                    "error": _error_body(
                        "invalid_request_error",
                        "input_audio_buffer_commit_empty",
                        "Error committing input audio buffer: buffer too small.",
                        event.get("event_id"),
                    ),
                }
            )
            return
        conn.input_audio_bytes = 0
        item_id = _new_id("item")
        await _commit_user_item(conn, item_id)

    async def _on_response_cancel(self, conn: _Connection, event: dict[str, Any]) -> None:
        response_id = event.get("response_id")
        active = conn.active
        if active is None or (response_id and response_id != active.record.response_id):
            await conn.send(
                {
                    "type": "error",
                    "error": _error_body(
                        "invalid_request_error",
                        "response_cancel_not_active",
                        "Cancellation failed: no active response found",
                        event.get("event_id"),
                    ),
                }
            )
            return
        if active.record.cancel_reason is None:
            active.record.cancel_reason = "client_cancelled"
        active.cancel.set()

    async def _on_response_create(self, conn: _Connection, event: dict[str, Any]) -> None:
        await self._start_response(conn, origin="client", create_event=event)

    # -- responses ------------------------------------------------------------------------------

    async def _start_response(
        self,
        conn: _Connection,
        *,
        origin: Literal["client", "server"],
        create_event: dict[str, Any] | None,
    ) -> ResponseRecord:
        number = next(self._response_numbers)
        fault = self.plan.response_fault(number)
        params = (create_event or {}).get("response") or {}
        record = ResponseRecord(
            number=number,
            conn=conn.number,
            origin=origin,
            fault=fault,
            requested_at=time.monotonic(),
            create_event_id=(create_event or {}).get("event_id"),
            metadata=params.get("metadata"),
        )
        self.responses.append(record)
        event_id = record.create_event_id
        if isinstance(fault, RateLimitsBefore):
            await conn.send(self._rate_limits_event(fault.rate_limits))
            fault = _effective(fault, self.plan.reply)

        if conn.active is not None:
            record.overlapped = True
            record.status = "rejected"
            await conn.send(
                {
                    "type": "error",
                    "error": _error_body(
                        "invalid_request_error",
                        "conversation_already_has_active_response",
                        "Conversation already has an active response in progress: "
                        f"{conn.active.record.response_id}. Wait until the response is finished "
                        "before creating a new one.",
                        event_id,
                    ),
                }
            )
            return record

        if isinstance(fault, NoAnswer):
            record.status = "unanswered"
            return record

        if isinstance(fault, RejectCreate):
            record.status = "rejected"
            if fault.rate_limits:
                await conn.send(self._rate_limits_event(fault.rate_limits))
            await conn.send(
                {
                    "type": "error",
                    "error": _error_body(fault.type, fault.code, fault.message, event_id),
                }
            )
            return record

        active = _Active(record=record)
        conn.active = active
        active.task = conn.spawn(
            self._run_response(conn, active), name=f"emulator.response_{number}"
        )
        return record

    def _rate_limits_event(self, rate_limits: tuple[RateLimit, ...]) -> dict[str, Any]:
        return {
            "type": "rate_limits.updated",
            "rate_limits": [
                {
                    "name": r.name,
                    "limit": r.limit,
                    "remaining": r.remaining,
                    "reset_seconds": r.reset_seconds,
                }
                for r in rate_limits
            ],
        }

    def _response_object(
        self,
        conn: _Connection,
        record: ResponseRecord,
        *,
        status: str,
        status_details: Any = None,
        output: list[dict[str, Any]] | None = None,
        usage: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return {
            "object": "realtime.response",
            "id": record.response_id,
            "status": status,
            "status_details": status_details,
            "output": output or [],
            "conversation_id": conn.conversation_id,
            "output_modalities": ["audio"],
            "max_output_tokens": "inf",
            "audio": {
                "output": {
                    "format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
                    "voice": self.voice,
                }
            },
            "usage": usage,
            "metadata": record.metadata,
        }

    @staticmethod
    def _usage(output_tokens: int) -> dict[str, Any]:
        return {
            "total_tokens": 120 + output_tokens,
            "input_tokens": 120,
            "output_tokens": output_tokens,
            "input_token_details": {
                "text_tokens": 100,
                "audio_tokens": 20,
                "image_tokens": 0,
                "cached_tokens": 0,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": output_tokens // 2, "audio_tokens": 0},
        }

    async def _run_response(self, conn: _Connection, active: _Active) -> None:
        record = active.record
        fault = _effective(record.fault, self.plan.reply)
        reply = fault if isinstance(fault, Reply) else self.plan.reply
        record.response_id = _new_id("resp")
        record.status = "in_progress"
        record.created_at = time.monotonic()
        output: list[dict[str, Any]] = []
        try:
            await conn.send(
                {
                    "type": "response.created",
                    "response": self._response_object(conn, record, status="in_progress"),
                }
            )
            await self._notify()
            if isinstance(fault, CloseAfterCreated):
                record.status = "dropped"
                record.done_at = time.monotonic()
                conn.active = None
                await conn.close()
                return

            if self.plan.rate_limits:
                await conn.send(self._rate_limits_event(self.plan.rate_limits))

            if isinstance(fault, Malformed):
                if fault.kind == "status_details_string":
                    await self._finish(
                        conn, active, status="failed", status_details="server_error", output=[]
                    )
                    return
                await self._send_malformed(conn, fault)

            if isinstance(fault, FailResponse) and fault.after_audio_deltas <= 0:
                await self._fail(conn, active, fault, output)
                return

            if isinstance(fault, FunctionCall):
                await self._function_call(conn, active, fault, output)
                return

            await self._message(conn, active, reply, output)
        finally:
            if conn.active is active:
                conn.active = None
            await self._notify()

    async def _fail(
        self, conn: _Connection, active: _Active, fault: FailResponse, output: list[dict[str, Any]]
    ) -> None:
        if fault.rate_limits:
            await conn.send(self._rate_limits_event(fault.rate_limits))
        details = {
            "type": "failed",
            "error": {"type": fault.type, "code": fault.code, "message": fault.message},
        }
        await self._finish(conn, active, status="failed", status_details=details, output=output)
        if fault.close_after:
            await conn.close()

    async def _finish(
        self,
        conn: _Connection,
        active: _Active,
        *,
        status: Literal["completed", "failed", "incomplete", "cancelled"],
        status_details: Any,
        output: list[dict[str, Any]],
        output_tokens: int = 0,
    ) -> None:
        record = active.record
        if conn.active is active:
            conn.active = None
        record.status = status
        record.done_at = time.monotonic()
        await conn.send(
            {
                "type": "response.done",
                "response": self._response_object(
                    conn,
                    record,
                    status=status,
                    status_details=status_details,
                    output=output,
                    usage=self._usage(output_tokens),
                ),
            }
        )

    async def _drop_mid_stream(self, conn: _Connection, active: _Active) -> None:
        """CloseMidStream: the socket closes in the middle of the response's output."""
        record = active.record
        record.status = "dropped"
        record.done_at = time.monotonic()
        if conn.active is active:
            conn.active = None
        await conn.close()

    async def _cancelled(
        self, conn: _Connection, active: _Active, output: list[dict[str, Any]]
    ) -> None:
        details = {"type": "cancelled", "reason": active.record.cancel_reason or "client_cancelled"}
        await self._finish(conn, active, status="cancelled", status_details=details, output=output)

    async def _pause(self, active: _Active, delay: float) -> bool:
        """Sleep ``delay``; True if the response was cancelled meanwhile."""
        if active.cancel.is_set():
            return True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(active.cancel.wait(), delay)
        return active.cancel.is_set()

    async def _send_malformed(self, conn: _Connection, fault: Malformed) -> None:
        if fault.kind == "bad_json":
            await conn.send_raw('{"type": "response.output_audio.delta", "delta": ')
        elif fault.kind == "unknown_type":
            await conn.send({"type": "response.emulator_unknown", "payload": {"x": 1}})
        elif fault.kind == "missing_fields":
            await conn.send({"type": fault.event_type})
        elif fault.kind == "error_message_not_string":
            await conn.send(
                {
                    "type": "error",
                    "error": {
                        "type": "server_error",
                        "code": "server_error",
                        "message": {"detail": "not a string"},
                        "param": None,
                        "event_id": None,
                    },
                }
            )

    async def _message(
        self, conn: _Connection, active: _Active, reply: Reply, output: list[dict[str, Any]]
    ) -> None:
        record = active.record
        fault = _effective(record.fault, self.plan.reply)
        # the response is cut after `cut_after` deltas: failed, incomplete or dropped
        cut_after: int | None = None
        if isinstance(fault, (FailResponse, CloseMidStream)):
            cut_after = fault.after_audio_deltas
        elif isinstance(fault, Incomplete):
            cut_after = fault.after_audio_deltas
            if cut_after is not None and cut_after >= reply.audio_deltas:
                cut_after = None  # the full reply, then the incomplete end
        item_id = _new_id("item")
        record.item_ids.append(item_id)
        item: dict[str, Any] = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        base = {"response_id": record.response_id, "item_id": item_id, "output_index": 0}
        prev = conn.insert_item(item_id, None)
        await conn.send(
            {
                "type": "response.output_item.added",
                "response_id": record.response_id,
                "output_index": 0,
                "item": item,
            }
        )
        await conn.send({"type": "conversation.item.added", "previous_item_id": prev, "item": item})
        await conn.send(
            {
                "type": "response.content_part.added",
                **base,
                "content_index": 0,
                "part": {"type": "audio", "transcript": ""},
            }
        )

        pieces = _split_text(reply.transcript, reply.audio_deltas)
        transcript = ""
        cancelled = False
        if isinstance(fault, CloseMidStream) and fault.after_audio_deltas <= 0:
            await self._drop_mid_stream(conn, active)
            return
        for i in range(reply.audio_deltas):
            if cut_after is not None and isinstance(fault, Incomplete) and i >= cut_after:
                break
            if await self._pause(active, reply.delta_interval):
                cancelled = True
                break
            await conn.send(
                {
                    "type": "response.output_audio_transcript.delta",
                    **base,
                    "content_index": 0,
                    "delta": pieces[i],
                }
            )
            transcript += pieces[i]
            await conn.send(
                {
                    "type": "response.output_audio.delta",
                    **base,
                    "content_index": 0,
                    "delta": base64.b64encode(_pcm_chunk(reply.chunk_ms, i)).decode(),
                }
            )
            record.audio_deltas += 1
            if cut_after is not None and record.audio_deltas >= cut_after:
                if isinstance(fault, FailResponse):
                    item = {**item, "status": "incomplete"}
                    item["content"] = [{"type": "output_audio", "transcript": transcript}]
                    await self._fail(conn, active, fault, [item])
                    return
                if isinstance(fault, CloseMidStream):
                    await self._drop_mid_stream(conn, active)
                    return

        incomplete = isinstance(fault, Incomplete)
        done_item = {
            **item,
            "status": "incomplete" if cancelled or incomplete else "completed",
            "content": [{"type": "output_audio", "transcript": transcript}],
        }
        if not cancelled:
            await conn.send({"type": "response.output_audio.done", **base, "content_index": 0})
            await conn.send(
                {
                    "type": "response.output_audio_transcript.done",
                    **base,
                    "content_index": 0,
                    "transcript": transcript,
                }
            )
            await conn.send(
                {
                    "type": "response.content_part.done",
                    **base,
                    "content_index": 0,
                    "part": {"type": "audio", "transcript": transcript},
                }
            )
        await _item_done(conn, record.response_id, prev, done_item)
        output.append(done_item)
        if cancelled:
            await self._cancelled(conn, active, output)
        elif isinstance(fault, Incomplete):
            details = {"type": "incomplete", "reason": fault.reason}
            await self._finish(
                conn,
                active,
                status="incomplete",
                status_details=details,
                output=output,
                output_tokens=10 * record.audio_deltas,
            )
        else:
            await self._finish(
                conn,
                active,
                status="completed",
                status_details=None,
                output=output,
                output_tokens=10 * record.audio_deltas,
            )

    async def _function_call(
        self, conn: _Connection, active: _Active, fault: FunctionCall, output: list[dict[str, Any]]
    ) -> None:
        record = active.record
        item_id = _new_id("item")
        call_id = fault.call_id or _new_id("call")
        record.item_ids.append(item_id)
        item: dict[str, Any] = {
            "id": item_id,
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "name": fault.name,
            "call_id": call_id,
            "arguments": "",
        }
        prev = conn.insert_item(item_id, None)
        await conn.send(
            {
                "type": "response.output_item.added",
                "response_id": record.response_id,
                "output_index": 0,
                "item": item,
            }
        )
        await conn.send({"type": "conversation.item.added", "previous_item_id": prev, "item": item})
        if await self._pause(active, self.plan.reply.delta_interval):
            await self._cancelled(conn, active, output)
            return
        base = {
            "response_id": record.response_id,
            "item_id": item_id,
            "output_index": 0,
            "call_id": call_id,
        }
        await conn.send(
            {"type": "response.function_call_arguments.delta", **base, "delta": fault.arguments}
        )
        await conn.send(
            {
                "type": "response.function_call_arguments.done",
                **base,
                "name": fault.name,
                "arguments": fault.arguments,
            }
        )
        done_item = {**item, "status": "completed", "arguments": fault.arguments}
        await _item_done(conn, record.response_id, prev, done_item)
        output.append(done_item)
        if fault.then_fail is not None:
            await self._fail(conn, active, fault.then_fail, output)
            return
        await self._finish(
            conn, active, status="completed", status_details=None, output=output, output_tokens=8
        )
