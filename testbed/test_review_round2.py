"""Review round 2: the defects a maintainer-style review of the framework half found.

Each ``review(round=2)``-marked test reproduces one defect of the series as it stood before the
round's fixes (21 patches, ``make review-check`` builds it) and fails there for the reason its
message names, through a real ``AgentSession`` on the emulator.
"""

from __future__ import annotations

import pytest

from .harness import SessionHarness
from .realtime_emulator import FaultPlan, NoAnswer, RealtimeEmulator

pytestmark = pytest.mark.unit
review = pytest.mark.review(round=2)


@review
async def test_a_planned_reconnection_carries_the_request_in_flight() -> None:
    # the session recycles its connection (max_session_duration) while a response.create is
    # sent and not yet answered: the request is asked again on the new connection, and
    # nothing reports an error, since the recycle is the library's own doing
    plan = FaultPlan(responses={1: NoAnswer()})
    async with (
        RealtimeEmulator(plan) as emu,
        SessionHarness(emu, timeout=5.0, model_kwargs={"max_session_duration": 0.5}) as h,
    ):
        handle = h.session.generate_reply(instructions="greet the user")
        await h.wait_for_speech(handle, what="the reply after the recycle", timeout=10.0)

        assert not h.errors, (
            "the library's own planned reconnection was reported as an error: "
            + h.describe_errors()
        )
        first, second = emu.responses[0], emu.responses[1]
        assert (first.conn, first.status) == (1, "unanswered")
        assert (second.conn, second.status) == (2, "completed")
        assert second.create_event_id == first.create_event_id, "asked as a new request"
        assert handle.exception() is None
        assert h.audio.frames
    h.guard.assert_clean()
