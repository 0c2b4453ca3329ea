"""The emulator as a small server process, for tests in other languages (the agents-js line).

    python -m testbed.realtime_emulator --plan '{"every_connection": {"fault": "AcceptThenClose"}}'

The plan is the JSON form of a ``FaultPlan`` (``plan_from_json`` in ``plan.py``: every fault
is ``{"fault": "<class name>", <its fields>}``, response and connection numbers are string
keys). Once listening, the process prints ONE line of JSON on stdout and flushes it::

    {"ws_url": "ws://127.0.0.1:<port>/v1/realtime", "http_url": "http://127.0.0.1:<port>/v1",
     "control_url": "http://127.0.0.1:<port2>", "api_key": "...", "pid": <pid>}

The control server (127.0.0.1, its own ephemeral port) exposes the records:

- ``GET /records``: ``{"connections": [...], "events": [...], "responses": [...]}``, the
  ``ConnectionRecord`` / ``ClientEvent`` / ``ResponseRecord`` lists as JSON (times in seconds
  since the emulator started; ``input_audio_buffer.append`` audio payloads are left out);
  ``?events=0`` leaves the client events out (for storms).
- ``POST /drop``: close the newest open connection from the server side.
- ``POST /send_event``: send the JSON body as a server event on the newest connection.
- ``POST /server_vad_turn``: ``{"transcript": "..."}`` plays a server-VAD turn.

The process exits when its stdin closes (the parent went away), on SIGTERM or SIGINT, or after
``--max-seconds`` (default 600): it never outlives its test by much.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from typing import Any

from aiohttp import web

from .plan import fault_to_json, plan_from_json
from .server import DEFAULT_API_KEY, RealtimeEmulator


def _record(obj: Any, t0: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name == "fault":
            value = fault_to_json(value)
        elif f.name in ("t", "closed_at", "requested_at", "created_at", "done_at"):
            value = None if value is None else round(value - t0, 6)
        elif f.name == "data" and isinstance(value, dict) and "audio" in value:
            value = {k: v for k, v in value.items() if k != "audio"}
        out[f.name] = value
    return out


def records(emu: RealtimeEmulator, t0: float, *, with_events: bool = True) -> dict[str, Any]:
    """The emulator's records as JSON data."""
    return {
        "connections": [_record(c, t0) for c in emu.connections],
        "events": [_record(e, t0) for e in emu.events] if with_events else [],
        "responses": [_record(r, t0) for r in emu.responses],
        "num_connections": emu.num_connections,
        "num_events": len(emu.events),
    }


async def _control_app(emu: RealtimeEmulator, t0: float) -> web.AppRunner:
    async def get_records(request: web.Request) -> web.Response:
        with_events = request.query.get("events", "1") != "0"
        return web.json_response(records(emu, t0, with_events=with_events))

    async def drop(_: web.Request) -> web.Response:
        await emu.drop_connection()
        return web.json_response({"ok": True})

    async def send_event(request: web.Request) -> web.Response:
        await emu.send_event(await request.json())
        return web.json_response({"ok": True})

    async def vad_turn(request: web.Request) -> web.Response:
        body = await request.json()
        record = await emu.server_vad_turn(body.get("transcript", "hello"))
        return web.json_response(_record(record, t0))

    app = web.Application()
    app.router.add_get("/records", get_records)
    app.router.add_post("/drop", drop)
    app.router.add_post("/send_event", send_event)
    app.router.add_post("/server_vad_turn", vad_turn)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


async def _stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(1024):
        pass


async def serve(plan_json: str, api_key: str, max_seconds: float) -> None:
    plan = plan_from_json(json.loads(plan_json or "{}"))
    t0 = time.monotonic()
    emu = await RealtimeEmulator(plan, api_key=api_key).start()
    control = await _control_app(emu, t0)
    control_port = int(control.addresses[0][1])
    print(
        json.dumps(
            {
                "ws_url": emu.ws_url,
                "http_url": emu.http_url,
                "control_url": f"http://127.0.0.1:{control_port}",
                "api_key": api_key,
                "pid": os.getpid(),
            }
        ),
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stdin_task = asyncio.create_task(_stdin_closed(), name="emulator.stdin")
    stdin_task.add_done_callback(lambda _: stop.set())
    try:
        await asyncio.wait_for(stop.wait(), timeout=max_seconds)
    except TimeoutError:
        print("emulator: --max-seconds reached, exiting", file=sys.stderr)
    finally:
        stdin_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stdin_task
        await control.cleanup()
        await emu.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.realtime_emulator", description=__doc__
    )
    parser.add_argument("--plan", default="{}", help="the FaultPlan as JSON (plan_from_json)")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args(argv)
    try:
        plan_from_json(json.loads(args.plan))
    except (ValueError, TypeError) as e:
        print(f"emulator: bad --plan: {e}", file=sys.stderr)
        return 2
    asyncio.run(serve(args.plan, args.api_key, args.max_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
