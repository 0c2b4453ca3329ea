"""The OpenAI Realtime error classifier: one row of its documented table per test case."""

from __future__ import annotations

import inspect

import pytest

from livekit.agents.llm._realtime.openai import _classify_error

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "code",
    [
        "insufficient_quota",
        "invalid_api_key",
        "account_deactivated",
        "billing_hard_limit_reached",
        "credit_balance_exhausted",
    ],
)
def test_fatal_codes(code: str) -> None:
    assert _classify_error(code=code) == "fatal"
    assert _classify_error(code=code, error_type="invalid_request_error") == "fatal"


@pytest.mark.parametrize(
    "code", ["rate_limit_exceeded", "inference_rate_limit_exceeded", "server_error"]
)
def test_retryable_codes(code: str) -> None:
    assert _classify_error(code=code) == "retryable"


@pytest.mark.parametrize(
    "code",
    [
        "invalid_value",
        "unknown_parameter",
        "missing_required_parameter",
        "invalid_type",
        "conversation_already_has_active_response",
    ],
)
def test_rejected_request_codes(code: str) -> None:
    assert _classify_error(code=code, error_type="invalid_request_error") == "rejected_request"


def test_session_expired_takes_a_fresh_connection() -> None:
    assert _classify_error(code="session_expired", error_type="invalid_request_error") == (
        "session_expired"
    )


def test_code_is_looked_at_before_type() -> None:
    # OpenAI sends this rate limit with the type of a rejected request
    assert (
        _classify_error(code="inference_rate_limit_exceeded", error_type="invalid_request_error")
        == "retryable"
    )
    assert _classify_error(code="server_error", error_type="invalid_request_error") == "retryable"


def test_fatal_type_with_unknown_code() -> None:
    # OpenAI has moved a fatal code into the type field before (#7805)
    assert _classify_error(code="some_new_code", error_type="insufficient_quota") == "fatal"
    assert _classify_error(error_type="insufficient_quota") == "fatal"


def test_invalid_request_type_without_code_is_rejected() -> None:
    assert _classify_error(error_type="invalid_request_error") == "rejected_request"
    assert _classify_error(code="", error_type="invalid_request_error") == "rejected_request"


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        ("some_code_openai_adds_later", "invalid_request_error"),
        ("some_code_openai_adds_later", None),
        (None, "server_error"),
        (None, None),
        (None, "some_type_openai_adds_later"),
    ],
)
def test_unknown_is_retryable(code: str | None, error_type: str | None) -> None:
    # OpenAI documents most errors as recoverable; the reconnect/retry bound keeps it finite
    assert _classify_error(code=code, error_type=error_type) == "retryable"


@pytest.mark.parametrize(("code", "error_type"), [(42, None), ({"x": 1}, ["y"]), (None, 3.5)])
def test_malformed_fields_do_not_raise(code: object, error_type: object) -> None:
    assert _classify_error(code=code, error_type=error_type) == "retryable"


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, "fatal"),
        (403, "fatal"),
        (400, "fatal"),
        (404, "fatal"),
        (408, "retryable"),
        (429, "retryable"),
        (500, "retryable"),
        (502, "retryable"),
        (503, "retryable"),
        (504, "retryable"),
    ],
)
def test_rejected_upgrade_http_status(status: int, kind: str) -> None:
    assert _classify_error(http_status=status) == kind


@pytest.mark.review(round=1)
def test_classifier_has_no_constant_inputs() -> None:
    # a connect timeout and an unexpected close are always retryable (an APIConnectionError):
    # the classifier takes only what can change its answer (review round 1)
    assert list(inspect.signature(_classify_error).parameters) == [
        "code",
        "error_type",
        "http_status",
    ]
