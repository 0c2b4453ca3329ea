"""Self-tests of the OpenAI Realtime emulator: every item of the fault vocabulary, as specified.

Most tests drive the emulator with a raw aiohttp websocket client, so they check the emulator
and not the engine; a few go through the real engine where the vocabulary item exists for it.
They pass on the pristine and on the patched build alike.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from livekit.agents import Agent, function_tool

from .harness import ExceptionGuard, SessionHarness
from .realtime_emulator import (
    DEFAULT_API_KEY,
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
    MalformedKind,
    NoAnswer,
    RateLimit,
    RateLimitsBefore,
    RealtimeEmulator,
    RejectCreate,
    RejectUpgrade,
    Reply,
    SlowHandshake,
    random_faults,
)

pytestmark = pytest.mark.unit

REPLY_SEQUENCE = [
    "response.created",
    "rate_limits.updated",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
]
REPLY_TAIL = [
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
    "response.done",
]


class RawClient:
    """A bare websocket client for the emulator."""

    def __init__(self, http: aiohttp.ClientSession, emu: RealtimeEmulator) -> None:
        self.http = http
        self.emu = emu
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = 0

    async def connect(self, *, api_key: str | None = None, timeout: float = 2.0) -> RawClient:
        self.ws = await asyncio.wait_for(
            self.http.ws_connect(
                self.emu.ws_url,
                headers={"Authorization": f"Bearer {api_key or self.emu.api_key}"},
            ),
            timeout,
        )
        created = await self.recv()
        assert created["type"] == "session.created"
        return self

    async def send(self, type: str, **fields: Any) -> str:
        assert self.ws is not None
        self._ids += 1
        event_id = str(fields.pop("event_id", f"evt_client_{self._ids}"))
        await self.ws.send_str(json.dumps({"type": type, "event_id": event_id, **fields}))
        return event_id

    async def recv(self, timeout: float = 2.0) -> dict[str, Any]:
        """The next server event; ``{"type": "<closed>"}`` on close, ``{"_raw": text}`` if not JSON."""
        assert self.ws is not None
        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.CLOSING,
        ):
            return {"type": "<closed>"}
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        try:
            event: dict[str, Any] = json.loads(msg.data)
        except ValueError:
            return {"type": "<raw>", "_raw": msg.data}
        return event

    async def recv_until(self, *types: str, timeout: float = 2.0) -> list[dict[str, Any]]:
        """Server events up to and including the first one whose type is in ``types``."""
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {types} within {timeout}s; got {[e['type'] for e in events]}"
            event = await self.recv(remaining)
            events.append(event)
            if event["type"] in types or event["type"] == "<closed>":
                return events

    async def create_response(self, **response: Any) -> tuple[str, list[dict[str, Any]]]:
        event_id = await self.send("response.create", response=response)
        return event_id, await self.recv_until("response.done", "error")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def _done(events: list[dict[str, Any]]) -> dict[str, Any]:
    assert events[-1]["type"] == "response.done", _types(events)
    response: dict[str, Any] = events[-1]["response"]
    return response


# ---------------------------------------------------------------------------------------------
# protocol basics
# ---------------------------------------------------------------------------------------------


async def test_healthy_reply_follows_the_ga_event_order(http: aiohttp.ClientSession) -> None:
    async with RealtimeEmulator() as emu:
        c = await RawClient(http, emu).connect()
        await c.send("session.update", session={"type": "realtime", "instructions": "hi"})
        updated = await c.recv()
        assert updated["type"] == "session.updated"
        assert updated["session"]["instructions"] == "hi"

        event_id, events = await c.create_response(metadata={"client_event_id": "abc"})
        reply = emu.plan.reply
        deltas = ["response.output_audio_transcript.delta", "response.output_audio.delta"]
        assert _types(events) == REPLY_SEQUENCE + deltas * reply.audio_deltas + REPLY_TAIL

        created = events[0]["response"]
        assert created["metadata"] == {"client_event_id": "abc"}
        assert created["status"] == "in_progress"
        done = _done(events)
        assert done["id"] == created["id"]
        assert done["status"] == "completed"
        assert done["usage"]["output_tokens"] > 0

        audio = [e for e in events if e["type"] == "response.output_audio.delta"]
        chunk = base64.b64decode(audio[0]["delta"])
        assert len(chunk) == 24000 * reply.chunk_ms // 1000 * 2  # PCM16 mono at 24 kHz
        transcript = "".join(
            e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta"
        )
        assert transcript == reply.transcript
        assert len({e["event_id"] for e in events}) == len(events)

        record = emu.responses[0]
        assert (record.number, record.origin, record.status) == (1, "client", "completed")
        assert record.create_event_id == event_id
        assert record.audio_deltas == reply.audio_deltas
        assert emu.num_response_creates == 1
        assert [e.type for e in emu.events] == ["session.update", "response.create"]
        assert all(e.conn == 1 for e in emu.events)
        assert emu.events[0].t <= emu.events[1].t
        assert emu.connections[0].outcome == "accepted"


async def test_reply_shape_is_configurable(http: aiohttp.ClientSession) -> None:
    plan = FaultPlan(
        responses={2: Reply(transcript="abc", audio_deltas=2, chunk_ms=40)}, rate_limits=None
    )
    async with RealtimeEmulator(plan) as emu:
        c = await RawClient(http, emu).connect()
        _, first = await c.create_response()
        _, second = await c.create_response()
        assert "rate_limits.updated" not in _types(first)
        assert _types(second).count("response.output_audio.delta") == 2
        audio = next(e for e in second if e["type"] == "response.output_audio.delta")
        assert len(base64.b64decode(audio["delta"])) == 24000 * 40 // 1000 * 2
        assert _done(second)["output"][0]["content"][0]["transcript"] == "abc"


async def test_conversation_items_create_and_delete(http: aiohttp.ClientSession) -> None:
    async with RealtimeEmulator() as emu:
        c = await RawClient(http, emu).connect()
        item = {
            "id": "item_user_1",
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "hello"}],
        }
        await c.send("conversation.item.create", item=item, previous_item_id="root")
        added = await c.recv()
        assert added["type"] == "conversation.item.added"
        assert added["item"]["id"] == "item_user_1"
        assert added["previous_item_id"] is None
        assert (await c.recv())["type"] == "conversation.item.done"

        _, events = await c.create_response()
        assistant_id = _done(events)["output"][0]["id"]
        await c.send("conversation.item.delete", item_id=assistant_id)
        deleted = await c.recv()
        assert deleted == {**deleted, "type": "conversation.item.deleted", "item_id": assistant_id}

        missing = await c.send("conversation.item.delete", item_id="item_nope")
        error = await c.recv()
        assert error["type"] == "error"
        assert error["error"]["event_id"] == missing
        assert emu.deleted_items == [assistant_id]


async def test_response_cancel(http: aiohttp.ClientSession) -> None:
    plan = FaultPlan(reply=Reply(audio_deltas=50, delta_interval=0.01))
    async with RealtimeEmulator(plan) as emu:
        c = await RawClient(http, emu).connect()
        await c.send("response.create", response={})
        await c.recv_until("response.output_audio.delta")
        await c.send("response.cancel")
        events = await c.recv_until("response.done")
        done = _done(events)
        assert done["status"] == "cancelled"
        assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
        assert emu.responses[0].status == "cancelled"
        assert emu.responses[0].audio_deltas < 50

        # nothing is active any more: OpenAI answers "Cancellation failed"
        await c.send("response.cancel")
        error = await c.recv()
        assert error["error"]["message"].startswith("Cancellation failed")


async def test_overlapping_response_create_is_rejected_and_recorded(
    http: aiohttp.ClientSession,
) -> None:
    plan = FaultPlan(reply=Reply(audio_deltas=20, delta_interval=0.01))
    async with RealtimeEmulator(plan) as emu:
        c = await RawClient(http, emu).connect()
        await c.send("response.create", response={})
        await c.recv_until("response.created")
        second = await c.send("response.create", response={})
        events = await c.recv_until("error")
        assert events[-1]["error"]["code"] == "conversation_already_has_active_response"
        assert events[-1]["error"]["event_id"] == second
        await c.recv_until("response.done")

        assert [r.number for r in emu.overlapping_creates] == [2]
        assert emu.responses[1].status == "rejected"
        assert emu.num_response_creates == 2


async def test_input_audio_append_and_commit(http: aiohttp.ClientSession) -> None:
    async with RealtimeEmulator() as emu:
        c = await RawClient(http, emu).connect()
        pcm = base64.b64encode(b"\x00\x00" * 4800).decode()  # 200 ms
        await c.send("input_audio_buffer.append", audio=pcm)
        await c.send("input_audio_buffer.commit")
        events = await c.recv_until("conversation.item.added")
        assert _types(events) == ["input_audio_buffer.committed", "conversation.item.added"]
        assert events[1]["item"]["role"] == "user"
        await c.send("input_audio_buffer.commit")
        assert (await c.recv())["error"]["code"] == "input_audio_buffer_commit_empty"
        assert len(emu.client_events("input_audio_buffer.append")) == 1


async def test_server_vad_turn(http: aiohttp.ClientSession) -> None:
    async with RealtimeEmulator() as emu:
        c = await RawClient(http, emu).connect()
        record = await emu.server_vad_turn("is it raining?")
        events = await c.recv_until("response.done")
        assert _types(events)[:6] == [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.input_audio_transcription.completed",
            "response.created",
        ]
        assert events[4]["transcript"] == "is it raining?"
        assert events[3]["item"]["id"] == events[4]["item_id"]
        assert events[5]["response"]["metadata"] is None
        assert (record.number, record.origin) == (1, "server")
        assert _done(events)["status"] == "completed"
        assert emu.num_response_creates == 0


async def test_server_vad_turn_interrupts_the_active_response(http: aiohttp.ClientSession) -> None:
    plan = FaultPlan(reply=Reply(audio_deltas=100, delta_interval=0.01))
    async with RealtimeEmulator(plan) as emu:
        c = await RawClient(http, emu).connect()
        await c.send("response.create", response={})
        await c.recv_until("response.output_audio.delta")
        vad = asyncio.create_task(emu.server_vad_turn())
        events = await c.recv_until("response.done")
        assert "input_audio_buffer.speech_started" in _types(events)
        assert _done(events)["status_details"]["reason"] == "turn_detected"
        await vad
        await c.recv_until("response.done")
        assert [r.status for r in emu.responses] == ["cancelled", "completed"]


async def test_unknown_client_event_and_bad_client_json(http: aiohttp.ClientSession) -> None:
    async with RealtimeEmulator() as emu:
        c = await RawClient(http, emu).connect()
        event_id = await c.send("response.bogus")
        error = await c.recv()
        assert (error["error"]["code"], error["error"]["event_id"]) == ("invalid_value", event_id)
        assert c.ws is not None
        await c.ws.send_str("{nope")
        assert (await c.recv())["error"]["code"] == "invalid_json"
        assert [text for _, _, text in emu.raw_frames] == ["{nope"]


async def test_send_event_raw_and_rate_limits_injection(http: aiohttp.ClientSession) -> None:
    async with RealtimeEmulator() as emu:
        c = await RawClient(http, emu).connect()
        await emu.send_event({"type": "custom.event", "x": 1})
        assert (await c.recv())["type"] == "custom.event"
        await emu.send_raw("not json")
        assert (await c.recv())["_raw"] == "not json"
        await emu.send_rate_limits((RateLimit(name="tokens", remaining=0, reset_seconds=3.5),))
        limits = await c.recv()
        assert limits["type"] == "rate_limits.updated"
        assert limits["rate_limits"][0] == {
            "name": "tokens",
            "limit": 1000,
            "remaining": 0,
            "reset_seconds": 3.5,
        }
        await emu.drop_connection()
        assert (await c.recv())["type"] == "<closed>"
        await emu.wait_for(lambda: emu.connections[0].closed_at is not None, what="the close")
        assert emu.connections[0].closed_by == "server"


# ---------------------------------------------------------------------------------------------
# response faults
# ---------------------------------------------------------------------------------------------


async def test_fail_response_before_output(http: aiohttp.ClientSession) -> None:
    plan = FaultPlan(responses={1: FailResponse(code="server_error", type="server_error")})
    async with RealtimeEmulator(plan) as emu:
        c = await RawClient(http, emu).connect()
        _, events = await c.create_response()
        assert _types(events) == ["response.created", "rate_limits.updated", "response.done"]
        done = _done(events)
        assert done["status"] == "failed"
        assert done["output"] == []
        assert done["status_details"]["error"]["type"] == "server_error"
        assert done["status_details"]["error"]["code"] == "server_error"
        _, again = await c.create_response()
        assert _done(again)["status"] == "completed"
        assert [r.status for r in emu.responses] == ["failed", "completed"]


async def test_fail_response_after_k_audio_deltas(http: aiohttp.ClientSession) -> None:
    plan = FaultPlan(responses={1: FailResponse(code="server_error", after_audio_deltas=2)})
    async with RealtimeEmulator(plan) as emu:
        c = await RawClient(http, emu).connect()
        _, events = await c.create_response()
        assert _types(events).count("response.output_audio.delta") == 2
        done = _done(events)
        assert done["status"] == "failed"
        assert done["output"][0]["status"] == "incomplete"
        assert emu.responses[0].audio_deltas == 2
        assert emu.responses[0].item_ids == [done["output"][0]["id"]]


async def test_fail_response_with_rate_limits_then_close(http: aiohttp.ClientSession) -> None:
    limits = (RateLimit(name="requests", remaining=0, reset_seconds=1.5),)
    fault = FailResponse(
        code="rate_limit_exceeded", type="rate_limit_error", rate_limits=limits, close_after=True
    )
    async with RealtimeEmulator(FaultPlan(responses={1: fault})) as emu:
        c = await RawClient(http, emu).connect()
        await c.send("response.create", response={})
        events = await c.recv_until("<closed>")
        assert _types(events)[-3:] == ["rate_limits.updated", "response.done", "<closed>"]
        assert events[-3]["rate_limits"][0]["reset_seconds"] == 1.5
        assert events[-2]["response"]["status_details"]["error"]["code"] == "rate_limit_exceeded"


async def test_reject_create_with_error_event(http: aiohttp.ClientSession) -> None:
    limits = (RateLimit(name="requests", remaining=0, reset_seconds=2.0),)
    plan = FaultPlan(
        responses={
            1: RejectCreate(code="rate_limit_exceeded"),
            2: RejectCreate(code="inference_rate_limit_exceeded", rate_limits=limits),
        }
    )
    async with RealtimeEmulator(plan) as emu:
        c = await RawClient(http, emu).connect()
        event_id, events = await c.create_response()
        assert _types(events) == ["error"]
        error = events[0]["error"]
        assert (error["type"], error["code"], error["event_id"]) == (
            "invalid_request_error",
            "rate_limit_exceeded",
            event_id,
        )
        assert isinstance(error["message"], str)

        event_id, events = await c.create_response()
        assert _types(events) == ["rate_limits.updated", "error"]
        assert events[0]["rate_limits"][0]["reset_seconds"] == 2.0
        assert events[1]["error"]["event_id"] == event_id
        assert [r.status for r in emu.responses] == ["rejected", "rejected"]


async def test_function_call_response(http: aiohttp.ClientSession) -> None:
    plan = FaultPlan(responses={1: FunctionCall(name="lookup", arguments='{"q": 1}', call_id="c1")})
    async with RealtimeEmulator(plan) as emu:
        c = await RawClient(http, emu).connect()
        _, events = await c.create_response()
        added = next(e for e in events if e["type"] == "response.output_item.added")
        assert added["item"]["type"] == "function_call"
        assert (added["item"]["name"], added["item"]["call_id"]) == ("lookup", "c1")
        args = next(e for e in events if e["type"] == "response.function_call_arguments.done")
        assert args["arguments"] == '{"q": 1}'
        item = _done(events)["output"][0]
        assert (item["type"], item["name"], item["call_id"], item["arguments"]) == (
            "function_call",
            "lookup",
            "c1",
            '{"q": 1}',
        )
        assert "response.output_audio.delta" not in _types(events)


async def test_function_call_response_through_agent_session() -> None:
    calls: list[str] = []

    class WeatherAgent(Agent):
        def __init__(self) -> None:
            super().__init__(instructions="answer about the weather")

        @function_tool
        async def get_weather(self, city: str) -> str:
            """Get the weather of a city.

            Args:
                city: the city name.
            """
            calls.append(city)
            return "sunny"

    plan = FaultPlan(responses={1: FunctionCall(name="get_weather", arguments='{"city": "Paris"}')})
    async with RealtimeEmulator(plan) as emu, SessionHarness(emu, agent=WeatherAgent()) as h:
        handle = h.session.generate_reply(instructions="what's the weather in Paris?")
        await h.wait_for_speech(handle, what="the tool turn")
        await h.wait_for(lambda: bool(h.assistant_messages()), what="the reply after the tool")
        assert calls == ["Paris"]
        outputs = [
            e.data["item"]
            for e in emu.client_events("conversation.item.create")
            if e.data["item"]["type"] == "function_call_output"
        ]
        assert [o["output"] for o in outputs] == ["sunny"]
        assert emu.num_response_creates == 2
        assert h.audio.frames
    h.guard.assert_clean()


async def test_close_after_created(http: aiohttp.ClientSession) -> None:
    plan = FaultPlan(responses={1: CloseAfterCreated()})
    async with RealtimeEmulator(plan) as emu:
        c = await RawClient(http, emu).connect()
        await c.send("response.create", response={"metadata": {"client_event_id": "x"}})
        events = await c.recv_until("<closed>")
        assert _types(events) == ["response.created", "<closed>"]
        await emu.wait_for(lambda: emu.connections[0].closed_at is not None, what="the close")
        assert emu.responses[0].status == "dropped"
        assert emu.connections[0].closed_by == "server"

        # response numbers continue over connections
        c2 = await RawClient(http, emu).connect()
        _, again = await c2.create_response()
        assert _done(again)["status"] == "completed"
        assert [(r.number, r.conn) for r in emu.responses] == [(1, 1), (2, 2)]


async def test_no_answer(http: aiohttp.ClientSession) -> None:
    plan = FaultPlan(responses={1: NoAnswer()})
    async with RealtimeEmulator(plan) as emu:
        c = await RawClient(http, emu).connect()
        await c.send("response.create", response={})
        # events are handled in order: the next answer is to the next event
        await c.send("session.update", session={"type": "realtime"})
        assert (await c.recv())["type"] == "session.updated"
        assert emu.responses[0].status == "unanswered"
        assert not emu.has_active_response
        _, events = await c.create_response()
        assert _done(events)["status"] == "completed"


@pytest.mark.parametrize(
    "kind", ["bad_json", "unknown_type", "missing_fields", "error_message_not_string"]
)
async def test_malformed_event_inside_a_response(
    http: aiohttp.ClientSession, kind: MalformedKind
) -> None:
    plan = FaultPlan(responses={1: Malformed(kind)})
    async with RealtimeEmulator(plan) as emu:
        c = await RawClient(http, emu).connect()
        await c.send("response.create", response={})
        events = await c.recv_until("response.done")
        assert _types(events)[:2] == ["response.created", "rate_limits.updated"]
        bad = events[2]
        if kind == "bad_json":
            assert bad["type"] == "<raw>"
            with pytest.raises(ValueError):
                json.loads(bad["_raw"])
        elif kind == "unknown_type":
            assert bad["type"] == "response.emulator_unknown"
        elif kind == "missing_fields":
            assert set(bad) == {"type", "event_id"}
            assert bad["type"] == "response.output_item.added"
        else:
            assert bad["type"] == "error"
            assert not isinstance(bad["error"]["message"], str)
        assert _done(events)["status"] == "completed"


async def test_malformed_status_details_string(http: aiohttp.ClientSession) -> None:
    plan = FaultPlan(responses={1: Malformed("status_details_string")})
    async with RealtimeEmulator(plan) as emu:
        c = await RawClient(http, emu).connect()
        _, events = await c.create_response()
        done = _done(events)
        assert done["status"] == "failed"
        assert isinstance(done["status_details"], str)
        assert emu.responses[0].status == "failed"


async def test_every_response_fault(http: aiohttp.ClientSession) -> None:
    plan = FaultPlan(every_response=FailResponse(), responses={3: Reply()})
    async with RealtimeEmulator(plan) as emu:
        c = await RawClient(http, emu).connect()
        statuses = [_done((await c.create_response())[1])["status"] for _ in range(4)]
        assert statuses == ["failed", "failed", "completed", "failed"]


@pytest.mark.parametrize("reason", ["max_output_tokens", "content_filter"])
async def test_incomplete_after_the_full_reply(http: aiohttp.ClientSession, reason: str) -> None:
    plan = FaultPlan(responses={1: Incomplete(reason=reason)})  # type: ignore[arg-type]
    async with RealtimeEmulator(plan) as emu:
        c = await RawClient(http, emu).connect()
        _, events = await c.create_response()
        deltas = ["response.output_audio_transcript.delta", "response.output_audio.delta"]
        assert _types(events) == REPLY_SEQUENCE + deltas * emu.plan.reply.audio_deltas + REPLY_TAIL
        done = _done(events)
        assert done["status"] == "incomplete"
        assert done["status_details"] == {"type": "incomplete", "reason": reason}
        assert done["output"][0]["status"] == "incomplete"
        assert done["output"][0]["content"][0]["transcript"] == emu.plan.reply.transcript
        item_done = next(e for e in events if e["type"] == "response.output_item.done")
        assert item_done["item"]["status"] == "incomplete"
        record = emu.responses[0]
        assert (record.status, record.audio_deltas) == ("incomplete", emu.plan.reply.audio_deltas)
        _, again = await c.create_response()
        assert _done(again)["status"] == "completed"


async def test_incomplete_after_k_audio_deltas(http: aiohttp.ClientSession) -> None:
    plan = FaultPlan(
        responses={
            1: Incomplete(reason="content_filter", after_audio_deltas=2),
            2: Incomplete(after_audio_deltas=0),
            3: Incomplete(after_audio_deltas=99),
        }
    )
    async with RealtimeEmulator(plan) as emu:
        c = await RawClient(http, emu).connect()
        _, events = await c.create_response()
        assert _types(events).count("response.output_audio.delta") == 2
        assert _types(events)[-6:] == REPLY_TAIL
        done = _done(events)
        assert (done["status"], done["status_details"]["reason"]) == (
            "incomplete",
            "content_filter",
        )
        assert done["output"][0]["status"] == "incomplete"
        transcript = done["output"][0]["content"][0]["transcript"]
        assert transcript and emu.plan.reply.transcript.startswith(transcript)
        assert transcript != emu.plan.reply.transcript

        _, none = await c.create_response()
        assert "response.output_audio.delta" not in _types(none)
        assert _done(none)["status_details"]["reason"] == "max_output_tokens"
        _, full = await c.create_response()
        assert _types(full).count("response.output_audio.delta") == emu.plan.reply.audio_deltas
        assert _done(full)["status"] == "incomplete"
        assert [(r.status, r.audio_deltas) for r in emu.responses] == [
            ("incomplete", 2),
            ("incomplete", 0),
            ("incomplete", emu.plan.reply.audio_deltas),
        ]


@pytest.mark.parametrize("k", [0, 2])
async def test_close_mid_stream(http: aiohttp.ClientSession, k: int) -> None:
    plan = FaultPlan(responses={1: CloseMidStream(after_audio_deltas=k)})
    async with RealtimeEmulator(plan) as emu:
        c = await RawClient(http, emu).connect()
        await c.send("response.create", response={})
        events = await c.recv_until("<closed>")
        types = _types(events)
        assert types[: len(REPLY_SEQUENCE)] == REPLY_SEQUENCE
        assert types.count("response.output_audio.delta") == k
        assert types[-1] == "<closed>" and "response.done" not in types
        await emu.wait_for(lambda: emu.connections[0].closed_at is not None, what="the close")
        record = emu.responses[0]
        assert (record.status, record.audio_deltas) == ("dropped", k)
        assert len(record.item_ids) == 1
        assert emu.connections[0].closed_by == "server"
        assert not emu.has_active_response


async def test_rate_limits_before_a_response_per_response(http: aiohttp.ClientSession) -> None:
    exhausted = (RateLimit(name="requests", remaining=0, reset_seconds=1.25),)
    plan = FaultPlan(
        responses={
            1: RateLimitsBefore(rate_limits=exhausted),
            2: RateLimitsBefore(rate_limits=exhausted, then=RejectCreate()),
            4: RateLimitsBefore(then=FailResponse(code="server_error")),
            5: RateLimitsBefore(then=Incomplete(after_audio_deltas=1)),
        },
        rate_limits=None,
    )
    async with RealtimeEmulator(plan) as emu:
        c = await RawClient(http, emu).connect()
        _, first = await c.create_response()
        assert _types(first)[:2] == ["rate_limits.updated", "response.created"]
        assert first[0]["rate_limits"][0]["reset_seconds"] == 1.25
        assert _done(first)["status"] == "completed"
        assert _types(first).count("rate_limits.updated") == 1

        event_id, second = await c.create_response()
        assert _types(second) == ["rate_limits.updated", "error"]
        assert second[1]["error"]["event_id"] == event_id

        _, third = await c.create_response()  # not in the plan: no rate limits at all
        assert "rate_limits.updated" not in _types(third)

        _, fourth = await c.create_response()
        assert _types(fourth) == ["rate_limits.updated", "response.created", "response.done"]
        assert _done(fourth)["status"] == "failed"
        _, fifth = await c.create_response()
        assert _types(fifth)[0] == "rate_limits.updated"
        assert _done(fifth)["status"] == "incomplete"

        assert [r.status for r in emu.responses] == [
            "completed",
            "rejected",
            "completed",
            "failed",
            "incomplete",
        ]
        assert isinstance(emu.responses[1].fault, RateLimitsBefore)
        assert isinstance(emu.responses[1].effective_fault, RejectCreate)
        assert isinstance(emu.responses[0].effective_fault, Reply)

    with pytest.raises(TypeError):
        RateLimitsBefore(then=RateLimitsBefore())  # type: ignore[arg-type]


async def test_rate_limits_before_a_server_vad_response(http: aiohttp.ClientSession) -> None:
    plan = FaultPlan(responses={1: RateLimitsBefore()}, rate_limits=None)
    async with RealtimeEmulator(plan) as emu:
        c = await RawClient(http, emu).connect()
        record = await emu.server_vad_turn("hello")
        events = await c.recv_until("response.done")
        types = _types(events)
        assert types.index("rate_limits.updated") + 1 == types.index("response.created")
        assert record.origin == "server" and record.status == "completed"


async def test_drop_connection_mid_response(http: aiohttp.ClientSession) -> None:
    plan = FaultPlan(reply=Reply(audio_deltas=1000, delta_interval=0.005))
    async with RealtimeEmulator(plan) as emu:
        c = await RawClient(http, emu).connect()
        await c.send("response.create", response={})
        await c.recv_until("response.output_audio.delta")
        await emu.drop_connection()
        events = await c.recv_until("<closed>")
        assert "response.done" not in _types(events)
        await emu.wait_for(lambda: emu.responses[0].status == "dropped", what="the drop")
        assert 1 <= emu.responses[0].audio_deltas < 1000
        assert emu.connections[0].closed_by == "server"
        assert not emu.has_active_response


@pytest.mark.parametrize("fault", [HangHandshake(), SlowHandshake(seconds=5.0)])
async def test_drop_connection_mid_handshake(
    http: aiohttp.ClientSession, fault: HangHandshake | SlowHandshake
) -> None:
    async with RealtimeEmulator(FaultPlan(connections={1: fault, 2: fault})) as emu:
        with pytest.raises(RuntimeError, match="no open connection and no pending handshake"):
            await emu.drop_connection()
        # a bare TCP client sees the socket closed with no HTTP answer at all
        reader, writer = await asyncio.open_connection("127.0.0.1", emu.port)
        writer.write(
            b"GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            + f"Authorization: Bearer {emu.api_key}\r\n\r\n".encode()
        )
        await writer.drain()
        await emu.wait_for(lambda: emu.num_connections == 1, what="the pending handshake")
        t0 = time.monotonic()
        await emu.drop_connection()
        assert await asyncio.wait_for(reader.read(), 1.0) == b""
        assert time.monotonic() - t0 < 1.0
        writer.close()
        record = emu.connections[0]
        assert (record.outcome, record.status, record.closed_by) == ("dropped", 0, "server")
        assert record.answered_at is None and record.closed_at is not None

        # aiohttp's client (the engine's) retries a GET dropped before any answer once, by
        # itself: a drop mid-handshake shows as a new attempt, here a healthy one
        attempt = asyncio.create_task(RawClient(http, emu).connect(timeout=4.0))
        await emu.wait_for(lambda: emu.num_connections == 2, what="the second handshake")
        await emu.drop_connection(conn=2)
        await emu.wait_for(lambda: emu.num_connections == 3, what="aiohttp's own retry")
        client = await asyncio.wait_for(attempt, 2.0)
        assert client.ws is not None and not client.ws.closed
        assert [c.outcome for c in emu.connections] == ["dropped", "dropped", "accepted"]


async def test_slow_handshake(http: aiohttp.ClientSession) -> None:
    plan = FaultPlan(connections={1: SlowHandshake(seconds=0.3), 2: SlowHandshake(seconds=0.4)})
    async with RealtimeEmulator(plan) as emu:
        t0 = time.monotonic()
        c = await RawClient(http, emu).connect(timeout=2.0)
        assert time.monotonic() - t0 >= 0.3
        record = emu.connections[0]
        assert record.outcome == "accepted" and record.answered_at is not None
        assert record.answered_at - record.t >= 0.3
        _, events = await c.create_response()
        assert _done(events)["status"] == "completed"

        # a client that gives up before the answer: abandoned, never served
        with pytest.raises(asyncio.TimeoutError):
            await RawClient(http, emu).connect(timeout=0.1)
        await emu.wait_for(
            lambda: emu.connections[1].outcome == "abandoned", timeout=2.0, what="abandoned"
        )
        assert emu.connections[1].closed_by == "client"
        assert [r.conn for r in emu.responses] == [1]


# ---------------------------------------------------------------------------------------------
# connection faults
# ---------------------------------------------------------------------------------------------


async def test_wrong_api_key_is_rejected_with_401(http: aiohttp.ClientSession) -> None:
    async with RealtimeEmulator() as emu:
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await RawClient(http, emu).connect(api_key="sk-wrong")
        assert exc.value.status == 401
        async with http.get(
            emu.ws_url.replace("ws://", "http://"), headers={"Authorization": "Bearer nope"}
        ) as resp:
            body = await resp.json()
        assert body["error"]["code"] == "invalid_api_key"
        assert [c.outcome for c in emu.connections] == ["unauthorized", "unauthorized"]


@pytest.mark.parametrize(
    ("status", "code"),
    [(401, "invalid_api_key"), (429, "rate_limit_exceeded"), (500, "server_error")],
)
async def test_reject_upgrade(http: aiohttp.ClientSession, status: int, code: str) -> None:
    plan = FaultPlan(connections={1: RejectUpgrade(status=status)})
    async with RealtimeEmulator(plan) as emu:
        headers = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
        async with http.get(emu.ws_url.replace("ws://", "http://"), headers=headers) as resp:
            assert resp.status == status
            assert (await resp.json())["error"]["code"] == code
        # the second attempt is healthy
        await RawClient(http, emu).connect()
        assert [(c.outcome, c.status) for c in emu.connections] == [
            ("rejected", status),
            ("accepted", 101),
        ]


async def test_reject_upgrade_custom_code(http: aiohttp.ClientSession) -> None:
    plan = FaultPlan(every_connection=RejectUpgrade(status=429, code="insufficient_quota"))
    async with RealtimeEmulator(plan) as emu:
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await RawClient(http, emu).connect()
        assert exc.value.status == 429
        async with http.get(
            emu.ws_url.replace("ws://", "http://"),
            headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"},
        ) as resp:
            assert (await resp.json())["error"]["code"] == "insufficient_quota"


async def test_hang_handshake(http: aiohttp.ClientSession) -> None:
    plan = FaultPlan(connections={1: HangHandshake()})
    async with RealtimeEmulator(plan) as emu:
        with pytest.raises(asyncio.TimeoutError):
            await RawClient(http, emu).connect(timeout=0.3)
        assert (emu.connections[0].outcome, emu.connections[0].status) == ("hung", 0)
        await RawClient(http, emu).connect()
        assert emu.connections[1].outcome == "accepted"


async def test_accept_then_close_at_once(http: aiohttp.ClientSession) -> None:
    async with RealtimeEmulator(FaultPlan(every_connection=AcceptThenClose())) as emu:
        for _ in range(2):
            ws = await http.ws_connect(
                emu.ws_url, headers={"Authorization": f"Bearer {emu.api_key}"}
            )
            msg = await asyncio.wait_for(ws.receive(), 2.0)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            await ws.close()
        await emu.wait_for(
            lambda: all(c.closed_at is not None for c in emu.connections), what="the closes"
        )
        assert [(c.outcome, c.closed_by) for c in emu.connections] == [("accepted", "server")] * 2


async def test_accept_then_close_after_a_while(http: aiohttp.ClientSession) -> None:
    async with RealtimeEmulator(FaultPlan(connections={1: AcceptThenClose(after=0.2)})) as emu:
        c = await RawClient(http, emu).connect()
        _, events = await c.create_response()
        assert _done(events)["status"] == "completed"
        assert (await c.recv(timeout=2.0))["type"] == "<closed>"
        assert emu.connections[0].closed_by == "server"


async def test_error_then_close(http: aiohttp.ClientSession) -> None:
    plan = FaultPlan(
        connections={1: ErrorThenClose(code="insufficient_quota", type="insufficient_quota")},
        every_connection=Healthy(),
    )
    async with RealtimeEmulator(plan) as emu:
        c = await RawClient(http, emu).connect()
        error = await c.recv()
        assert error["type"] == "error"
        assert (error["error"]["type"], error["error"]["code"]) == (
            "insufficient_quota",
            "insufficient_quota",
        )
        assert (await c.recv())["type"] == "<closed>"
        c2 = await RawClient(http, emu).connect()
        _, events = await c2.create_response()
        assert _done(events)["status"] == "completed"


async def test_error_then_close_with_rate_limits(http: aiohttp.ClientSession) -> None:
    limits = (RateLimit(name="requests", remaining=0, reset_seconds=0.7),)
    fault = ErrorThenClose(code="rate_limit_exceeded", type="rate_limit_error", rate_limits=limits)
    async with RealtimeEmulator(FaultPlan(every_connection=fault)) as emu:
        c = await RawClient(http, emu).connect()
        events = await c.recv_until("<closed>")
        assert _types(events) == ["rate_limits.updated", "error", "<closed>"]
        assert events[0]["rate_limits"][0]["reset_seconds"] == 0.7
        assert events[1]["error"]["code"] == "rate_limit_exceeded"


async def test_error_then_close_later(http: aiohttp.ClientSession) -> None:
    # the error at once, the close close_after seconds later (a close that is a new cause)
    fault = ErrorThenClose(code="server_error", type="server_error", close_after=0.3)
    async with RealtimeEmulator(FaultPlan(every_connection=fault)) as emu:
        c = await RawClient(http, emu).connect()
        assert (await c.recv())["type"] == "error"
        assert emu.connections[0].closed_at is None, "closed with the error"
        assert (await c.recv(timeout=2.0))["type"] == "<closed>"
        assert emu.connections[0].closed_by == "server"


def test_random_faults_are_seeded() -> None:
    first = random_faults(0.3, seed=7, count=1000)
    assert first == random_faults(0.3, seed=7, count=1000)
    assert first != random_faults(0.3, seed=8, count=1000)
    assert 250 < len(first) < 350
    assert all(isinstance(f, FailResponse) for f in first.values())
    plan = FaultPlan(responses=random_faults(1.0, seed=1, count=2, fault=NoAnswer()))
    assert [type(plan.response_fault(n)) for n in (1, 2, 3)] == [NoAnswer, NoAnswer, Reply]


# ---------------------------------------------------------------------------------------------
# through the real engine, and lifecycle
# ---------------------------------------------------------------------------------------------


async def test_engine_connects_with_the_model_and_key(exc_guard: ExceptionGuard) -> None:
    async with RealtimeEmulator() as emu, SessionHarness(emu, guard=exc_guard) as h:
        await emu.wait_connected()
        await emu.wait_for_event("session.update")
        assert emu.connections[0].model == "gpt-realtime"
        assert h.session is not None
    exc_guard.assert_clean()


async def test_engine_against_a_wrong_key_is_unauthorized() -> None:
    async with RealtimeEmulator() as emu, SessionHarness(emu, api_key="sk-wrong", max_retry=0) as h:
        await emu.wait_for(lambda: emu.num_connections >= 1, what="a connection attempt")
        await h.wait_for(lambda: bool(h.errors), what="an error event")
        assert emu.connections[0].outcome == "unauthorized"


async def test_emulator_shuts_down_cleanly(http: aiohttp.ClientSession) -> None:
    plan = FaultPlan(
        connections={2: HangHandshake()}, reply=Reply(audio_deltas=1000, delta_interval=0.01)
    )
    emu = await RealtimeEmulator(plan).start()
    c = await RawClient(http, emu).connect()
    await c.send("response.create", response={})
    await c.recv_until("response.output_audio.delta")
    hung = asyncio.create_task(RawClient(http, emu).connect(timeout=5.0))
    await emu.wait_for(lambda: emu.num_connections == 2, what="the hanging attempt")

    await asyncio.wait_for(emu.aclose(), 5.0)

    assert (await c.recv())["type"] == "<closed>"
    with pytest.raises((aiohttp.ClientError, AssertionError)):
        await hung
    leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith("emulator.")]
    assert not leftovers
    with pytest.raises(aiohttp.ClientConnectionError):
        await RawClient(http, emu).connect()


async def test_exception_guard_sees_never_retrieved(exc_guard: ExceptionGuard) -> None:
    async def boom() -> None:
        raise RuntimeError("boom")

    task = asyncio.ensure_future(boom())
    await asyncio.sleep(0.01)
    assert task.done()
    del task
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    fut.set_exception(ValueError("lost"))
    del fut
    messages = exc_guard.never_retrieved
    assert any(m.startswith("Task exception was never retrieved: RuntimeError") for m in messages)
    assert any(m.startswith("Future exception was never retrieved: ValueError") for m in messages)
    with pytest.raises(AssertionError, match="unhandled asyncio exception"):
        exc_guard.assert_clean()
    exc_guard.contexts.clear()
