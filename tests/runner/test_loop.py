"""The generate-verify loop with the real anthropic SDK against the real gateway (scripted upstream).

Only the verifier is a fake; every request crosses the Unix socket, so the
gateway's validation (tool_use/tool_result pairing, cache_control count)
checks each conversation the loop sends.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import SecretStr
from taskbox_runner.checks import CheckRequest
from taskbox_runner.loop import GenerateVerifyLoop, LoopLimits, LoopOutcome, make_client
from taskbox_runner.prompt import build_prompt
from taskbox_runner.tools import AccessRules, MissingContextLog, WorkspaceEditor

from tests.runner.conftest import (
    MODEL,
    FakeVerifier,
    ScriptedGateway,
    Workspace,
    failing_report,
    verifier_needing,
)

EDITOR = "str_replace_based_edit_tool"
USERS = "app/api/routes/users.py"


def editor_call(**tool_input: Any) -> dict[str, Any]:
    """A scripted tool_use block of the text editor."""
    return {"type": "tool_use", "name": EDITOR, "input": tool_input}


def turn(*blocks: dict[str, Any], stop_reason: str | None = None) -> dict[str, Any]:
    """One scripted assistant turn."""
    line: dict[str, Any] = {"content": list(blocks)}
    if stop_reason is not None:
        line["stop_reason"] = stop_reason
    return line


def text(value: str) -> dict[str, Any]:
    """A text block."""
    return {"type": "text", "text": value}


END = turn(text("Done: the users route is in place."), stop_reason="end_turn")


class Harness:
    """A loop wired to a workspace, a gateway and a verifier, as run.execute wires it."""

    def __init__(
        self,
        ws: Workspace,
        gw: ScriptedGateway,
        verifier: FakeVerifier,
        *,
        token: str | None = None,
        clock: Callable[[], float] | None = None,
        **limits: Any,
    ) -> None:
        overrides: dict[str, Any] = {} if token is None else {"gateway_token": SecretStr(token)}
        config = ws.config(socket=gw.socket, **overrides)
        self.editor = WorkspaceEditor(
            config.workdir, AccessRules.from_plan(config.readable_paths, config.owns_paths)
        )
        self.missing = MissingContextLog()
        self.verifier = verifier
        self.client = make_client(config)

        def verify() -> Any:
            return verifier(
                CheckRequest(
                    workdir=config.workdir,
                    owns_paths=tuple(config.owns_paths),
                    openapi_path=config.openapi_path,
                    coverage_threshold=config.coverage_threshold,
                    base_config_dir=ws.root / "base-config",
                    scratch_dir=ws.root / "scratch",
                    changed_files=tuple(self.editor.written_paths),
                    base_tests={},
                    test_timeout_seconds=60.0,
                )
            )

        self.loop = GenerateVerifyLoop(
            client=self.client,
            model=MODEL,
            prompt=build_prompt(config, self.editor),
            editor=self.editor,
            missing_context=self.missing,
            verify=verify,
            limits=LoopLimits(
                **(
                    {
                        "max_rounds": 3,
                        "max_total_tokens": 1_000_000,
                        "max_tokens_per_request": 4096,
                        "deadline": 1e12,
                    }
                    | limits
                )
            ),
            **({} if clock is None else {"clock": clock}),
        )

    def run(self) -> LoopOutcome:
        """Run the loop and close the client."""
        try:
            return self.loop.run()
        finally:
            self.client.close()


def user_blocks(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The content blocks of a request's last user message."""
    last = next(m for m in reversed(request["messages"]) if m["role"] == "user")
    content = last["content"]
    return content if isinstance(content, list) else [{"type": "text", "text": content}]


def cache_marks(request: dict[str, Any]) -> int:
    """How many blocks of a request carry cache_control."""
    count = sum("cache_control" in block for block in request["system"])
    count += sum("cache_control" in tool for tool in request["tools"])
    for message in request["messages"]:
        if isinstance(message["content"], list):
            count += sum("cache_control" in block for block in message["content"])
    return count


def test_editor_create_then_end_turn_passes(
    make_workspace: Callable[..., Workspace], start_gateway: Callable[..., ScriptedGateway]
) -> None:
    """The model creates a file, runs the checks, ends its turn; the loop passes in one round."""
    ws = make_workspace()
    gw = start_gateway(
        [
            turn(
                text("Writing the route."),
                editor_call(command="create", path=USERS, file_text="ROUTE = 'users'\n"),
            ),
            turn({"type": "tool_use", "name": "run_checks", "input": {}}),
            END,
        ]
    )
    verifier = verifier_needing(ws.workdir, USERS, "users")
    outcome = Harness(ws, gw, verifier).run()

    assert outcome.passed, outcome.reason
    assert outcome.rounds == 1
    assert outcome.model_calls == 3
    assert len(verifier.requests) == 1  # end_turn reused run_checks' report: nothing changed since
    assert verifier.requests[0].changed_files == (USERS,)
    assert (ws.workdir / USERS).read_text() == "ROUTE = 'users'\n"
    requests = gw.requests()
    assert len(requests) == 3
    result = user_blocks(requests[1])[0]
    assert result["type"] == "tool_result"
    assert result["content"].startswith("Created app/api/routes/users.py")
    assert user_blocks(requests[2])[0]["content"] == "All checks pass."
    assert outcome.final_text == "Done: the users route is in place."


def test_failed_checks_go_back_as_one_feedback_message(
    make_workspace: Callable[..., Workspace], start_gateway: Callable[..., ScriptedGateway]
) -> None:
    """A failing round sends the verifier's feedback back; the fix passes in round two."""
    ws = make_workspace()
    gw = start_gateway(
        [
            turn(editor_call(command="create", path=USERS, file_text="ROUTE = 'draft'\n")),
            turn(text("First draft done."), stop_reason="end_turn"),
            turn(editor_call(command="str_replace", path=USERS, old_str="draft", new_str="fixed")),
            END,
        ]
    )
    outcome = Harness(ws, gw, verifier_needing(ws.workdir, USERS, "fixed")).run()

    assert outcome.passed, outcome.reason
    assert outcome.rounds == 2
    feedback_request = gw.requests()[2]
    blocks = user_blocks(feedback_request)
    assert len(blocks) == 1
    assert blocks[0]["text"].startswith(
        "The checks failed (round 1; this is feedback 1 of at most 3)"
    )
    assert f"[FAIL] {USERS} lacks 'fixed'" in blocks[0]["text"]
    assert blocks[0]["cache_control"] == {"type": "ephemeral"}


def test_round_budget_ends_the_loop(
    make_workspace: Callable[..., Workspace], start_gateway: Callable[..., ScriptedGateway]
) -> None:
    """With max_rounds=1 the failures go back once; the second failure ends the loop with a reason."""
    ws = make_workspace()
    gw = start_gateway(
        [
            turn(editor_call(command="create", path=USERS, file_text="x = 1\n")),
            turn(text("Done."), stop_reason="end_turn"),
            turn(text("Still done."), stop_reason="end_turn"),
        ]
    )
    verifier = FakeVerifier(lambda _request: failing_report())
    outcome = Harness(ws, gw, verifier, max_rounds=1).run()

    assert not outcome.passed
    assert outcome.rounds == 2
    assert outcome.reason is not None
    assert "round budget" in outcome.reason
    assert len(gw.requests()) == 3
    assert outcome.report is not None
    assert not outcome.report.passed


def test_cache_breakpoints_sit_on_the_stable_prefix(
    make_workspace: Callable[..., Workspace], start_gateway: Callable[..., ScriptedGateway]
) -> None:
    """System, first message, newest feedback and newest user message carry cache_control; never more than four."""
    ws = make_workspace()
    gw = start_gateway(
        [
            turn(editor_call(command="create", path=USERS, file_text="ROUTE = 'draft'\n")),
            turn(text("Draft."), stop_reason="end_turn"),
            turn(editor_call(command="view", path=USERS)),
            turn(editor_call(command="str_replace", path=USERS, old_str="draft", new_str="fixed")),
            END,
        ]
    )
    outcome = Harness(ws, gw, verifier_needing(ws.workdir, USERS, "fixed")).run()
    assert outcome.passed, outcome.reason

    requests = gw.requests()
    first_text = requests[0]["messages"][0]["content"]
    for request in requests:
        assert cache_marks(request) <= 4
        assert request["system"][-1]["cache_control"] == {"type": "ephemeral"}
        assert request["messages"][0]["content"][-1]["cache_control"] == {"type": "ephemeral"}
        # The first message is byte-identical in every request: the cached prefix never drifts.
        assert request["messages"][0]["content"] == first_text
        assert user_blocks(request)[-1].get("cache_control") == {"type": "ephemeral"}
    last = requests[-1]
    feedback = last["messages"][4]
    assert feedback["content"][-1]["text"].startswith("The checks failed")
    assert feedback["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert cache_marks(last) == 4


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ([turn(stop_reason="refusal")], "refused"),
        ([turn(text("..."), stop_reason="model_context_window_exceeded")], "context window"),
    ],
)
def test_refusal_and_full_context_stop_with_a_reason(
    make_workspace: Callable[..., Workspace],
    start_gateway: Callable[..., ScriptedGateway],
    script: list[dict[str, Any]],
    expected: str,
) -> None:
    """stop_reason refusal or model_context_window_exceeded ends the loop at once with a clear reason."""
    ws = make_workspace()
    verifier = FakeVerifier(lambda _request: failing_report())
    outcome = Harness(ws, start_gateway(script), verifier).run()
    assert not outcome.passed
    assert outcome.reason is not None
    assert expected in outcome.reason
    assert verifier.requests == []  # nothing was written, so nothing to check


def test_truncated_tool_call_is_not_run_and_is_asked_again(
    make_workspace: Callable[..., Workspace], start_gateway: Callable[..., ScriptedGateway]
) -> None:
    """A tool_use cut off by max_tokens is dropped, the model is told to send smaller pieces, and the loop goes on."""
    ws = make_workspace()
    gw = start_gateway(
        [
            turn(
                text("Writing."),
                editor_call(command="create", path=USERS),
                stop_reason="max_tokens",
            ),
            turn(editor_call(command="create", path=USERS, file_text="ROUTE = 'users'\n")),
            END,
        ]
    )
    outcome = Harness(ws, gw, verifier_needing(ws.workdir, USERS, "users")).run()
    assert outcome.passed, outcome.reason

    second = gw.requests()[1]
    assistant = second["messages"][-2]
    assert assistant["role"] == "assistant"
    assert [b["type"] for b in assistant["content"]] == ["text"]
    note = user_blocks(second)[-1]["text"]
    assert "output limit" in note
    assert EDITOR in note


def test_pause_turn_is_sent_back_as_is(
    make_workspace: Callable[..., Workspace], start_gateway: Callable[..., ScriptedGateway]
) -> None:
    """After pause_turn the next request ends with the paused assistant content, to be continued."""
    ws = make_workspace()
    gw = start_gateway(
        [
            turn(editor_call(command="create", path=USERS, file_text="ROUTE = 'users'\n")),
            turn(text("Still working"), stop_reason="pause_turn"),
            END,
        ]
    )
    outcome = Harness(ws, gw, verifier_needing(ws.workdir, USERS, "users")).run()
    assert outcome.passed, outcome.reason
    third = gw.requests()[2]
    assert third["messages"][-1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "Still working"}],
    }


def test_exhausted_gateway_budget_stops_without_retries(
    make_workspace: Callable[..., Workspace], start_gateway: Callable[..., ScriptedGateway]
) -> None:
    """The gateway's 429 with x-should-retry false ends the loop after one attempt, with the reason."""
    ws = make_workspace()
    gw = start_gateway(
        [turn(editor_call(command="create", path=USERS, file_text="ROUTE = 'users'\n")), END],
        max_requests=1,
    )
    verifier = verifier_needing(ws.workdir, USERS, "users")
    outcome = Harness(ws, gw, verifier).run()

    assert outcome.reason is None  # the files pass the final check, so the work stands
    assert outcome.passed
    usage = gw.gateway.usage
    assert usage.requests == 1
    assert usage.refused_requests == 1  # the SDK did not retry the final 429
    assert len(verifier.requests) == 1  # the final check after the loop stopped


def test_authentication_error_stops_with_a_reason(
    make_workspace: Callable[..., Workspace], start_gateway: Callable[..., ScriptedGateway]
) -> None:
    """A wrong run token gives a 401 that ends the loop; the reason names it and not the token."""
    ws = make_workspace()
    gw = start_gateway([END])
    wrong = "not-the-run-token-0123456789abcdef"
    outcome = Harness(ws, gw, FakeVerifier(lambda _request: failing_report()), token=wrong).run()
    assert not outcome.passed
    assert outcome.reason is not None
    assert "401" in outcome.reason
    assert wrong not in outcome.reason
    assert outcome.model_calls == 0


def test_token_budget_stops_and_final_check_runs(
    make_workspace: Callable[..., Workspace], start_gateway: Callable[..., ScriptedGateway]
) -> None:
    """Past max_total_tokens no further call is made; the files written so far are checked once more."""
    ws = make_workspace()
    gw = start_gateway([turn(editor_call(command="create", path=USERS, file_text="x = 1\n")), END])
    verifier = FakeVerifier(lambda _request: failing_report())
    outcome = Harness(ws, gw, verifier, max_total_tokens=10).run()
    assert not outcome.passed
    assert outcome.reason is not None
    assert "token budget" in outcome.reason
    assert len(gw.requests()) == 1
    assert len(verifier.requests) == 1
    assert not outcome.stale_report


def test_wall_clock_deadline_stops_before_the_next_call(
    make_workspace: Callable[..., Workspace], start_gateway: Callable[..., ScriptedGateway]
) -> None:
    """Once the loop's clock passes the deadline, no model call is made and no stale check runs."""
    ws = make_workspace()
    gw = start_gateway([turn(editor_call(command="create", path=USERS, file_text="x = 1\n")), END])
    ticks = itertools.count(start=0, step=10)
    verifier = FakeVerifier(lambda _request: failing_report())
    outcome = Harness(ws, gw, verifier, clock=lambda: float(next(ticks)), deadline=15.0).run()
    assert outcome.reason == "the wall-clock budget is spent"
    assert len(gw.requests()) == 1
    assert outcome.stale_report
    assert verifier.requests == []


def test_calls_per_round_cap_runs_the_checks_with_the_tool_results(
    make_workspace: Callable[..., Workspace], start_gateway: Callable[..., ScriptedGateway]
) -> None:
    """After max_calls_per_round calls the checks run, and their feedback joins the tool results."""
    ws = make_workspace()
    gw = start_gateway(
        [
            turn(editor_call(command="view", path="app/main.py")),
            turn(editor_call(command="create", path=USERS, file_text="x = 1\n")),
            turn(
                editor_call(
                    command="str_replace", path=USERS, old_str="x = 1", new_str="ROUTE = 'users'"
                )
            ),
            END,
        ]
    )
    outcome = Harness(
        ws, gw, verifier_needing(ws.workdir, USERS, "users"), max_calls_per_round=2
    ).run()
    assert outcome.passed, outcome.reason
    assert outcome.rounds == 2
    blocks = user_blocks(gw.requests()[2])
    assert [b["type"] for b in blocks] == ["tool_result", "text"]
    assert blocks[1]["text"].startswith("The checks failed")


def test_refused_tool_calls_come_back_as_errors_and_missing_context_is_kept(
    make_workspace: Callable[..., Workspace], start_gateway: Callable[..., ScriptedGateway]
) -> None:
    """A view outside the plan is an is_error result; report_missing_context records 'path — reason'."""
    ws = make_workspace()
    (ws.workdir / "secret.txt").write_text("s3cret\n")
    gw = start_gateway(
        [
            turn(
                editor_call(command="view", path="secret.txt"),
                {
                    "type": "tool_use",
                    "name": "report_missing_context",
                    "input": {"files": ["app/db/session.py"], "reason": "need the session factory"},
                },
            ),
            turn(editor_call(command="create", path=USERS, file_text="ROUTE = 'users'\n")),
            END,
        ]
    )
    harness = Harness(ws, gw, verifier_needing(ws.workdir, USERS, "users"))
    outcome = harness.run()
    assert outcome.passed, outcome.reason
    results = user_blocks(gw.requests()[1])
    assert results[0]["is_error"] is True
    assert "s3cret" not in results[0]["content"]
    assert "is_error" not in results[1]
    assert harness.missing.entries == ["app/db/session.py — need the session factory"]
