"""The connection rules of docs/connection-rules.md, proved on the Python engine.

``testbed/conformance/cases.json`` holds one fault plan per rule and the result both SDKs must
give; ``testbed/js/conformance.test.ts`` runs the same file against agents-js. Each case runs a
bare OpenAI realtime session (no AgentSession) against the emulator and compares the number
of connection attempts and the session's error events, in order, as
``<kind>:<recoverable|fatal>``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from livekit.agents import APIConnectionError, APIConnectOptions, APIError, APIStatusError, llm
from livekit.plugins import openai

from .realtime_emulator import RealtimeEmulator
from .realtime_emulator.plan import plan_from_json

pytestmark = pytest.mark.unit

_CASES: dict[str, Any] = json.loads(
    (Path(__file__).parent / "conformance" / "cases.json").read_text()
)


def error_kind(error: BaseException) -> str:
    """An error event's error as the conformance vocabulary names it."""
    if isinstance(error, APIStatusError):
        return "status"
    if isinstance(error, APIConnectionError):
        return "connection"
    if isinstance(error, APIError):
        return "server"
    return f"other:{type(error).__name__}"


def describe(ev: llm.RealtimeModelError) -> str:
    return f"{error_kind(ev.error)}:{'recoverable' if ev.recoverable else 'fatal'}"


@pytest.mark.parametrize("case", _CASES["cases"], ids=[c["name"] for c in _CASES["cases"]])
async def test_conformance(case: dict[str, Any]) -> None:
    options = _CASES["options"]
    async with RealtimeEmulator(plan_from_json(case["plan"])) as emu:
        model = openai.realtime.RealtimeModel(
            base_url=emu.http_url,
            api_key=emu.api_key,
            conn_options=APIConnectOptions(
                max_retry=options["max_retry"],
                retry_interval=options["retry_interval_ms"] / 1000,
                timeout=options["timeout_ms"] / 1000,
            ),
        )
        session = model.session()
        errors: list[llm.RealtimeModelError] = []
        session.on("error", errors.append)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + case["settle_ms"] / 1000
            while loop.time() < deadline and all(e.recoverable for e in errors):
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)  # anything that would still follow a terminal error
            connections = emu.num_connections
        finally:
            await session.aclose()
            await model.aclose()

    got = {"connections": connections, "errors": [describe(e) for e in errors]}
    assert got == case["expect"], f"{case['name']} ({case['rule']}): got {got}"
