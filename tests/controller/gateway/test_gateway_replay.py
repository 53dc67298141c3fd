"""Record then replay: a run's transcript answers a second run with identical responses."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anthropic
import pytest
from anthropic.types import MessageParam, ToolParam, ToolUseBlock

from controller.errors import GatewayError
from controller.gateway import ScriptedUpstream, make_upstream, read_transcript

if TYPE_CHECKING:
    from tests.controller.gateway.conftest import ClientFactory, GatewayFactory, ScriptFactory

MODEL = "claude-sonnet-4-6"
SCRIPT: list[dict[str, Any]] = [
    {
        "content": [
            {"type": "text", "text": "Reading it."},
            {"type": "tool_use", "name": "read_file", "input": {"path": "app/main.py"}},
        ]
    },
    {"content": [{"type": "text", "text": "All good, nothing to change."}]},
]


def _conversation(
    client: anthropic.Anthropic, tools: list[ToolParam], first_prompt: str = "Check main."
) -> tuple[list[dict[str, Any]], list[str]]:
    """The runner's two turns: a plain call, then a streamed one; returns answers and stream events."""
    messages: list[MessageParam] = [{"role": "user", "content": first_prompt}]
    first = client.messages.create(model=MODEL, max_tokens=512, messages=messages, tools=tools)
    call = next(b for b in first.content if isinstance(b, ToolUseBlock))
    messages += [
        cast(
            "MessageParam",
            {
                "role": "assistant",
                "content": [b.model_dump(exclude_none=True) for b in first.content],
            },
        ),
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "app = 1"}],
        },
    ]
    with client.messages.stream(
        model=MODEL, max_tokens=512, messages=messages, tools=tools
    ) as stream:
        events = [event.model_dump_json() for event in stream]
        second = stream.get_final_message()
    return [first.model_dump(), second.model_dump()], events


@pytest.fixture
def recorded_run(
    serve: GatewayFactory,
    sdk_client: ClientFactory,
    write_script: ScriptFactory,
    tools: list[ToolParam],
    tmp_path: Path,
) -> tuple[Path, list[dict[str, Any]], list[str]]:
    """A first run against the script, recorded in RUN_DIR/record/transcript.jsonl."""
    run_dir = tmp_path / "run-1"
    _, sock = serve(
        ScriptedUpstream.from_file(write_script(SCRIPT)),
        transcript=run_dir / "record" / "transcript.jsonl",
    )
    answers, events = _conversation(sdk_client(sock), tools)
    return run_dir, answers, events


def test_replay_answers_identically(
    recorded_run: tuple[Path, list[dict[str, Any]], list[str]],
    serve: GatewayFactory,
    sdk_client: ClientFactory,
    tools: list[ToolParam],
    tmp_path: Path,
) -> None:
    """The same conversation replayed gets the same messages, ids, events and usage as recorded."""
    run_dir, answers, events = recorded_run
    replay_transcript = tmp_path / "run-2" / "record" / "transcript.jsonl"
    gateway, sock = serve(make_upstream(f"replay:{run_dir}"), transcript=replay_transcript)

    replayed, replayed_events = _conversation(sdk_client(sock), tools)

    assert replayed == answers
    assert replayed_events == events
    original = read_transcript(run_dir / "record" / "transcript.jsonl")
    again = read_transcript(replay_transcript)
    assert [e.request_sha256 for e in again] == [e.request_sha256 for e in original]
    assert [e.frames for e in again] == [e.frames for e in original]
    assert again[0].meta.upstream == f"replay:{run_dir}"
    assert gateway.usage.output_tokens == sum(a["usage"]["output_tokens"] for a in answers)


def test_replay_refuses_a_diverging_request(
    recorded_run: tuple[Path, list[dict[str, Any]], list[str]],
    serve: GatewayFactory,
    sdk_client: ClientFactory,
    tools: list[ToolParam],
) -> None:
    """Strict replay answers a non-retryable 400 naming the turn whose request differs."""
    run_dir, _, _ = recorded_run
    _, sock = serve(make_upstream(f"replay:{run_dir}"))

    with pytest.raises(anthropic.BadRequestError) as caught:
        _conversation(sdk_client(sock, max_retries=3), tools, first_prompt="Check something else.")

    assert "replay: the request of turn 1 differs from the recording" in caught.value.message
    assert caught.value.response.headers["x-should-retry"] == "false"


def test_lenient_replay_answers_a_diverging_request(
    recorded_run: tuple[Path, list[dict[str, Any]], list[str]],
    serve: GatewayFactory,
    sdk_client: ClientFactory,
    tools: list[ToolParam],
) -> None:
    """replay-lenient gives the recorded answer even when the request differs."""
    run_dir, answers, _ = recorded_run
    _, sock = serve(make_upstream(f"replay-lenient:{run_dir}"))

    replayed, _ = _conversation(sdk_client(sock), tools, first_prompt="Check something else.")

    assert replayed[0]["id"] == answers[0]["id"]


def test_replay_past_the_recording_is_a_clear_error(
    recorded_run: tuple[Path, list[dict[str, Any]], list[str]],
    serve: GatewayFactory,
    sdk_client: ClientFactory,
    tools: list[ToolParam],
) -> None:
    """A third turn, which the recording does not have, gets a 400 saying how many turns it has."""
    run_dir, _, _ = recorded_run
    _, sock = serve(make_upstream(f"replay-lenient:{run_dir}"))
    client = sdk_client(sock)
    _conversation(client, tools)

    with pytest.raises(
        anthropic.BadRequestError, match="has only 2 turns; this run asked for turn 3"
    ):
        client.messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "More?"}]
        )


def test_replay_of_recorded_errors_and_bad_recordings(
    serve: GatewayFactory, sdk_client: ClientFactory, write_script: ScriptFactory, tmp_path: Path
) -> None:
    """A recorded error turn replays as the same error; a missing or malformed recording is refused."""
    transcript = tmp_path / "run" / "record" / "transcript.jsonl"
    script = write_script(
        [
            {"error": {"status": 400, "message": "scripted refusal"}},
            {"content": [{"type": "text", "text": "x"}]},
        ]
    )
    _, sock = serve(ScriptedUpstream.from_file(script), transcript=transcript)
    hello: list[MessageParam] = [{"role": "user", "content": "Hi."}]
    with pytest.raises(anthropic.BadRequestError, match="scripted refusal"):
        sdk_client(sock).messages.create(model=MODEL, max_tokens=10, messages=hello)

    _, replay_sock = serve(make_upstream(f"replay:{tmp_path / 'run'}"))
    with pytest.raises(anthropic.BadRequestError, match="scripted refusal"):
        sdk_client(replay_sock).messages.create(model=MODEL, max_tokens=10, messages=hello)

    with pytest.raises(GatewayError, match="cannot read transcript"):
        make_upstream(f"replay:{tmp_path / 'nowhere'}")
    transcript.write_text(transcript.read_text() + "{}\n", encoding="utf-8")
    with pytest.raises(GatewayError, match=r"transcript.jsonl:2: not a transcript entry"):
        make_upstream(f"replay:{transcript}")
