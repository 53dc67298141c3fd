"""Every failure is a JSON error with a stable code and a request id; no stack trace reaches a client."""

from __future__ import annotations

import logging

import pytest

from controller.api.errors import CODE_BY_STATUS, ERROR_CODES, STATUS_BY_ERROR
from tests.controller.api.conftest import ServedApi, task_body
from tests.controller.api.fake_executor import LEAKED_TEXT, FakeExecutor, wait_for


def test_unexpected_error_is_500_with_only_a_request_id(
    api: ServedApi, fake: FakeExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash inside a route answers 500 internal_error; the traceback goes to the log, not the body."""
    created = api.client().post(
        "/v1/tasks", json=task_body("HOLD-1"), headers={"Idempotency-Key": "k"}
    )
    task_id = created.json()["id"]
    wait_for(lambda: len(fake.calls()) == 1, what="the run to start")
    (fake.control / "audit-crashes").touch()
    with caplog.at_level(logging.ERROR, logger="controller.api.errors"):
        response = api.client().get(
            f"/v1/tasks/{task_id}/audit", headers={"X-Request-ID": "req-42"}
        )
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "internal_error"
    assert error["requestId"] == "req-42"
    assert response.headers["X-Request-ID"] == "req-42"
    assert "req-42" in error["message"]
    assert LEAKED_TEXT not in response.text
    assert "Traceback" not in response.text
    logged = [r for r in caplog.records if r.getMessage() == "unhandled error"]
    assert logged
    assert logged[0].exc_info is not None
    assert getattr(logged[0], "request_id", None) == "req-42"
    fake.release()


def test_unknown_route_and_method_are_json(api: ServedApi) -> None:
    """Routing failures use the same JSON shape: 404 not_found, 405 method_not_allowed."""
    client = api.client()
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = client.delete("/v1/tasks")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"


def test_every_answer_has_a_request_id(api: ServedApi) -> None:
    """Each response carries X-Request-ID; a made-up incoming one that is not tame is replaced."""
    client = api.client(None)
    ok = client.get("/healthz")
    assert len(ok.headers["X-Request-ID"]) == 32
    odd = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert odd.headers["X-Request-ID"] != "bad id with spaces"
    unauthenticated = client.get("/v1/tasks")
    assert unauthenticated.json()["error"]["requestId"] == unauthenticated.headers["X-Request-ID"]


def test_every_code_is_documented() -> None:
    """Each code the API can answer with appears in ERROR_CODES (and so in the OpenAPI description)."""
    documented = {(status, code) for status, code, _ in ERROR_CODES}
    for cls, status in STATUS_BY_ERROR:
        assert (status, cls.code) in documented, cls
    for status, code in CODE_BY_STATUS.items():
        assert (status, code) in documented, code
    assert (500, "internal_error") in documented
