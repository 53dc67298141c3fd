"""The scripted upstream driven by the real anthropic SDK over the gateway's Unix socket."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anthropic
import pytest
from anthropic.types import MessageParam, TextBlock, ToolParam, ToolUseBlock

from controller.errors import GatewayError
from controller.gateway import ScriptedUpstream, make_upstream, read_transcript
from controller.settings import Settings

if TYPE_CHECKING:
    from tests.controller.gateway.conftest import ClientFactory, GatewayFactory, ScriptFactory

MODEL = "claude-sonnet-4-6"

TWO_TURNS: list[dict[str, Any]] = [
    {
        "content": [
            {"type": "text", "text": "Let me read the module first."},
            {"type": "tool_use", "name": "read_file", "input": {"path": "app/main.py"}},
        ]
    },
    {"content": [{"type": "text", "text": "The module is fine."}], "stop_reason": "end_turn"},
]


def _answer(message: anthropic.types.Message, content: str) -> list[MessageParam]:
    """The assistant turn as the runner sends it back, plus the tool result for its call."""
    call = next(block for block in message.content if isinstance(block, ToolUseBlock))
    return [
        cast(
            "MessageParam",
            {
                "role": "assistant",
                "content": [block.model_dump(exclude_none=True) for block in message.content],
            },
        ),
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": content}],
        },
    ]


def test_tool_use_then_end_turn_round_trip(
    serve: GatewayFactory,
    sdk_client: ClientFactory,
    write_script: ScriptFactory,
    tools: list[ToolParam],
    tmp_path: Path,
) -> None:
    """Turn 1 calls a tool with gateway-made ids, turn 2 ends, and usage and transcript count both."""
    transcript = tmp_path / "record" / "transcript.jsonl"
    gateway, sock = serve(
        ScriptedUpstream.from_file(write_script(TWO_TURNS)), transcript=transcript
    )
    client = sdk_client(sock)
    messages: list[MessageParam] = [{"role": "user", "content": "Check app/main.py."}]

    first = client.messages.create(model=MODEL, max_tokens=1024, messages=messages, tools=tools)

    assert first.id.startswith("msg_")
    assert first._request_id is not None
    assert first._request_id.startswith("req_")
    assert first.stop_reason == "tool_use"
    assert first.model == MODEL
    text, call = first.content
    assert isinstance(text, TextBlock)
    assert text.text == "Let me read the module first."
    assert isinstance(call, ToolUseBlock)
    assert call.id.startswith("toolu_")
    assert (call.name, call.input) == ("read_file", {"path": "app/main.py"})

    messages += _answer(first, "app = FastAPI()")
    second = client.messages.create(model=MODEL, max_tokens=1024, messages=messages, tools=tools)

    assert second.stop_reason == "end_turn"
    assert [b.text for b in second.content if isinstance(b, TextBlock)] == ["The module is fine."]
    usage = gateway.usage
    assert usage.requests == 2
    assert usage.input_tokens == first.usage.input_tokens + second.usage.input_tokens
    assert usage.output_tokens == first.usage.output_tokens + second.usage.output_tokens
    assert second.usage.input_tokens > first.usage.input_tokens  # the conversation grew
    entries = read_transcript(transcript)
    assert [(e.turn, e.status) for e in entries] == [(1, 200), (2, 200)]
    assert entries[0].response is not None
    assert entries[0].response["id"] == first.id


def test_streaming_gives_api_event_order_and_final_message(
    serve: GatewayFactory,
    sdk_client: ClientFactory,
    write_script: ScriptFactory,
    tools: list[ToolParam],
    tmp_path: Path,
) -> None:
    """A streamed turn arrives in the API's event order and assembles into the scripted message."""
    long_text = "A long explanation. " * 10
    script = write_script(
        [
            {
                "content": [
                    {"type": "text", "text": long_text},
                    {"type": "tool_use", "name": "read_file", "input": {"path": "x" * 80}},
                ]
            }
        ]
    )
    transcript = tmp_path / "transcript.jsonl"
    gateway, sock = serve(ScriptedUpstream.from_file(script), transcript=transcript)
    client = sdk_client(sock)

    with client.messages.stream(
        model=MODEL,
        max_tokens=1024,
        messages=[{"role": "user", "content": "Go."}],
        tools=tools,
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()

    assert final.stop_reason == "tool_use"
    text, call = final.content
    assert isinstance(text, TextBlock)
    assert text.text == long_text
    assert isinstance(call, ToolUseBlock)
    assert call.input == {"path": "x" * 80}
    assert final.usage.output_tokens > 1
    assert gateway.usage.output_tokens == final.usage.output_tokens
    frames = read_transcript(transcript)[0].frames
    assert frames is not None
    raw = [frame.event for frame in frames]
    assert raw[:3] == ["message_start", "ping", "content_block_start"]
    assert raw[-2:] == ["message_delta", "message_stop"]
    assert raw.count("content_block_start") == raw.count("content_block_stop") == 2
    assert raw.count("content_block_delta") > 2  # text and JSON both arrive in several pieces
    assert "message_start" in kinds
    assert "message_stop" in kinds


def test_same_script_gives_same_ids(
    serve: GatewayFactory,
    sdk_client: ClientFactory,
    write_script: ScriptFactory,
    tools: list[ToolParam],
) -> None:
    """Ids are derived from the script and the turn, so two runs of one script answer identically."""
    script = write_script(TWO_TURNS)
    answers = []
    for _ in range(2):
        _, sock = serve(ScriptedUpstream.from_file(script))
        message = sdk_client(sock).messages.create(
            model=MODEL,
            max_tokens=100,
            messages=[{"role": "user", "content": "Hi."}],
            tools=tools,
        )
        answers.append(message.model_dump())
    assert answers[0] == answers[1]


def test_script_exhausted_is_a_clear_final_error(
    serve: GatewayFactory, sdk_client: ClientFactory, write_script: ScriptFactory, tmp_path: Path
) -> None:
    """A run that asks for more turns than the script has gets a 400 saying so, and the SDK does not retry."""
    script = write_script([{"content": [{"type": "text", "text": "Only turn."}]}])
    transcript = tmp_path / "transcript.jsonl"
    _, sock = serve(ScriptedUpstream.from_file(script), transcript=transcript)
    client = sdk_client(sock, max_retries=3)
    messages: list[MessageParam] = [{"role": "user", "content": "Hi."}]
    client.messages.create(model=MODEL, max_tokens=100, messages=messages)

    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=MODEL, max_tokens=100, messages=messages)

    assert "has only 1 turns; this run asked for turn 2" in caught.value.message
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert len(read_transcript(transcript)) == 2  # one attempt only


def test_scripted_error_turn_is_answered_and_retried_by_the_sdk(
    serve: GatewayFactory, sdk_client: ClientFactory, write_script: ScriptFactory
) -> None:
    """An error line answers that API error; the SDK retries a 529 and gets the next line."""
    script = write_script(
        [
            {"error": {"status": 529, "message": "Overloaded"}},
            {"content": [{"type": "text", "text": "Back."}]},
        ]
    )
    gateway, sock = serve(ScriptedUpstream.from_file(script))

    message = sdk_client(sock).messages.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "Hi."}]
    )

    assert [b.text for b in message.content if isinstance(b, TextBlock)] == ["Back."]
    assert gateway.usage.requests == 2


def test_count_tokens_and_models(
    serve: GatewayFactory, sdk_client: ClientFactory, write_script: ScriptFactory
) -> None:
    """count_tokens answers a deterministic estimate and models.list lists exactly the allowlist."""
    _, sock = serve(ScriptedUpstream.from_file(write_script(TWO_TURNS)))
    client = sdk_client(sock)
    messages: list[MessageParam] = [{"role": "user", "content": "x" * 400}]

    count = client.messages.count_tokens(model=MODEL, messages=messages)
    again = client.messages.count_tokens(model=MODEL, messages=messages)

    assert count.input_tokens == again.input_tokens > 100
    assert [m.id for m in client.models.list()] == [MODEL, "claude-haiku-5-5"]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("claude-opus-4-8")


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ('{"content": [{"type": "text", "text": "ok"}]}\n{"content": [', ":2: not valid JSON"),
        ('{"content": [{"type": "image"}]}', ":1: not a script turn: content.0"),
        (
            '{"content": [{"type": "text", "text": "ok"}], "stop_reason": "tool_use"}',
            ":1: not a script turn: Value error, stop_reason tool_use needs a tool_use block",
        ),
        (
            '\n\n{"content": [{"type": "text", "text": "ok"}], "extra": 1}',
            ":3: not a script turn: extra",
        ),
        (
            '{"content": [{"type": "tool_use", "name": "bad name"}]}',
            ":1: not a script turn: content.0.tool_use.name",
        ),
        ("\n", "the script has no turns"),
    ],
)
def test_malformed_script_is_refused_with_its_line_number(
    tmp_path: Path, lines: str, expected: str
) -> None:
    """A script is validated when the upstream is made, and a bad line is named by its number."""
    path = tmp_path / "bad.jsonl"
    path.write_text(lines, encoding="utf-8")

    with pytest.raises(GatewayError) as caught:
        make_upstream(f"scripted:{path}")

    assert expected in str(caught.value)


def test_make_upstream_refuses_unknown_specs_and_missing_keys(tmp_path: Path) -> None:
    """A spec that names no upstream, or the anthropic upstream without a key, is refused up front."""
    with pytest.raises(GatewayError, match="unknown model upstream"):
        make_upstream("openai")
    with pytest.raises(GatewayError, match="TASKBOX_ANTHROPIC_API_KEY"):
        make_upstream("anthropic", Settings(_env_file=None, anthropic_api_key=None))  # type: ignore[call-arg]
    with pytest.raises(GatewayError, match="cannot read"):
        make_upstream(f"scripted:{tmp_path / 'missing.jsonl'}")
