"""The backend's outcome model: how an ending is described and when it is an error."""

from __future__ import annotations

import pytest

from controller.errors import SandboxError, SandboxTimeoutError
from controller.sandbox.backend import SandboxOutcome


def outcome(**fields: object) -> SandboxOutcome:
    base: dict[str, object] = {
        "exit_code": 0,
        "oom_killed": False,
        "timed_out": False,
        "duration_seconds": 1.5,
    }
    return SandboxOutcome.model_validate({**base, **fields})


def test_timeout_is_a_sandbox_error_and_a_timeout_error() -> None:
    """raise_for_timeout raises SandboxTimeoutError, which callers may catch either way."""
    with pytest.raises(SandboxTimeoutError) as caught:
        outcome(timed_out=True, exit_code=137).raise_for_timeout()
    assert isinstance(caught.value, SandboxError)
    assert isinstance(caught.value, TimeoutError)
    outcome().raise_for_timeout()  # a normal end raises nothing


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"exit_code": 3}, "exit status 3"),
        ({"timed_out": True, "exit_code": 137}, "timed out after 1.5 s"),
        (
            {"oom_killed": True, "oom_confirmed": True, "exit_code": 137},
            "out of memory (exit status 137)",
        ),
        ({"oom_killed": True, "exit_code": 137}, "out of memory, or killed from outside"),
    ],
)
def test_describe_says_how_the_command_ended(fields: dict[str, object], text: str) -> None:
    """Each way of ending reads differently, and an unconfirmed OOM says it may be another kill."""
    assert text in outcome(**fields).describe()
