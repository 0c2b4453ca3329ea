"""The emulator's JSON plans and its CLI (``python -m testbed.realtime_emulator``), which the
agents-js tests (testbed/js/) drive."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .realtime_emulator import (
    AcceptThenClose,
    ErrorThenClose,
    FailResponse,
    FaultPlan,
    FunctionCall,
    HangHandshake,
    Malformed,
    RateLimit,
    RejectCreate,
    RejectUpgrade,
    Reply,
)
from .realtime_emulator.plan import plan_from_json, plan_to_json

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


def test_plan_json_round_trip() -> None:
    plan = FaultPlan(
        responses={
            1: FailResponse(code="server_error", rate_limits=(RateLimit(remaining=0),)),
            2: RejectCreate(),
            3: FunctionCall(name="lookup", arguments='{"q": 1}'),
            4: Malformed("bad_json"),
        },
        every_response=Reply(transcript="hi"),
        connections={1: RejectUpgrade(status=401), 2: HangHandshake()},
        every_connection=AcceptThenClose(after=0.5),
        rate_limits=None,
    )
    data = json.loads(json.dumps(plan_to_json(plan)))
    assert plan_from_json(data) == plan
    assert plan_from_json({}) == FaultPlan()
    assert plan_from_json({"every_connection": {"fault": "ErrorThenClose"}}) == FaultPlan(
        every_connection=ErrorThenClose()
    )


@pytest.mark.parametrize(
    "bad",
    [{"every_connection": {"fault": "Nope"}}, {"every_connection": {"fault": "Healthy", "x": 1}}],
)
def test_plan_json_rejects_unknown_faults_and_fields(bad: dict) -> None:
    with pytest.raises(ValueError):
        plan_from_json(bad)


def test_cli_serves_the_plan_and_exposes_records() -> None:
    plan = json.dumps({"every_connection": {"fault": "RejectUpgrade", "status": 503}})
    proc = subprocess.Popen(
        [sys.executable, "-m", "testbed.realtime_emulator", "--plan", plan, "--max-seconds", "30"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["http_url"].startswith("http://127.0.0.1:")
        req = urllib.request.Request(info["http_url"] + "/realtime?model=x")
        req.add_header("Authorization", f"Bearer {info['api_key']}")
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=5)
        assert exc.value.code == 503
        with urllib.request.urlopen(info["control_url"] + "/records", timeout=5) as res:
            records = json.load(res)
        assert records["num_connections"] == 1
        conn = records["connections"][0]
        assert conn["outcome"] == "rejected" and conn["status"] == 503
        assert conn["fault"] == {"fault": "RejectUpgrade", "status": 503, "code": None}
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # the emulator exits when its stdin closes
        assert proc.wait(timeout=10) == 0
