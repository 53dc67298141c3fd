"""Request validation: the real API's 400 messages, in its error shape, over the socket and as a unit."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anthropic
import httpx2
import pytest

from controller.gateway import GatewayThread, ModelGateway, ScriptedUpstream, read_transcript
from controller.gateway.upstreams.base import UpstreamCall
from controller.gateway.validation import check_count_tokens_request, check_messages_request
from controller.gateway.wire import ApiError

if TYPE_CHECKING:
    from controller.gateway.upstreams.base import MessageReply
    from tests.controller.gateway.conftest import (
        BudgetFactory,
        ClientFactory,
        GatewayFactory,
        ScriptFactory,
    )

MODEL = "claude-sonnet-4-6"
TOKEN = "run-token-0123456789abcdefghij"  # noqa: S105 - a test run token, not a secret  # the conftest's default run token


def _body(error: anthropic.APIStatusError) -> dict[str, Any]:
    """The JSON error body the SDK kept."""
    assert isinstance(error.body, dict)
    return error.body


VALID: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 100,
    "system": [{"type": "text", "text": "You edit code.", "cache_control": {"type": "ephemeral"}}],
    "tools": [
        {
            "name": "read_file",
            "description": "Read a file.",
            "input_schema": {"type": "object"},
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        },
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
    ],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Fix it.", "cache_control": {"type": "ephemeral"}}
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Reading."},
                {"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {"path": "a"}},
                {"type": "tool_use", "id": "toolu_2", "name": "read_file", "input": {"path": "b"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "x = 1"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "is_error": True,
                    "content": [
                        {
                            "type": "text",
                            "text": "no such file",
                            "cache_control": {"type": "ephemeral"},
                        }
                    ],
                },
            ],
        },
    ],
    "stream": False,
    "stop_sequences": ["END"],
    "metadata": {"user_id": "run-1"},
}


def _with(path: list[str | int], value: Any) -> dict[str, Any]:
    """VALID with one value replaced (or removed when ``value`` is ``...``)."""
    body = copy.deepcopy(VALID)
    target: Any = body
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return body


def test_a_full_valid_request_passes() -> None:
    """Tools, typed client tools, system blocks, tool pairs and four cache breakpoints are all valid."""
    facts = check_messages_request(copy.deepcopy(VALID))

    assert (facts.model, facts.max_tokens, facts.stream) == (MODEL, 100, False)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_with(["max_tokens"], ...), "max_tokens: Field required"),
        (_with(["max_tokens"], 0), "max_tokens: Input should be greater than or equal to 1"),
        (_with(["max_tokens"], "10"), "max_tokens: Input should be a valid integer"),
        (_with(["model"], ...), "model: Field required"),
        (_with(["temperature"], 1.0), "temperature: Extra inputs are not permitted"),
        (_with(["top_k"], 5), "top_k: Extra inputs are not permitted"),
        (_with(["messages"], []), "messages: at least one message is required"),
        (
            _with(["messages", 0, "role"], "system"),
            "messages.0.role: Input should be 'user' or 'assistant'",
        ),
        (_with(["messages", 0, "name"], "x"), "messages.0.name: Extra inputs are not permitted"),
        (
            _with(["messages", 0, "content"], ""),
            "messages.0: all messages must have non-empty content except for the optional final assistant message",
        ),
        (
            _with(["messages", 0, "content", 0, "text"], ...),
            "messages.0.content.0.text.text: Field required",
        ),
        (_with(["system"], [{"type": "image"}]), "system.0.type: Input should be 'text'"),
        (_with(["system"], 7), "system: Input should be a valid string or a list of text blocks"),
        (
            _with(["tools", 0, "name"], "read file"),
            "tools.0.custom.name: String should match pattern '^[a-zA-Z0-9_-]{1,64}$'",
        ),
        (_with(["tools", 0, "input_schema"], ...), "tools.0.custom.input_schema: Field required"),
        (
            _with(["tools", 0, "input_schema"], {"type": "array"}),
            "tools.0.custom.input_schema.type: Input should be 'object'",
        ),
        (_with(["tools", 1, "name"], "read_file"), "tools: Tool names must be unique."),
        (
            _with(["tool_choice"], {"type": "required"}),
            "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'",
        ),
        (_with(["tool_choice"], {"type": "tool"}), "tool_choice.tool.name: Field required"),
        (
            _with(["tool_choice"], {"type": "none", "disable_parallel_tool_use": True}),
            "tool_choice.none.disable_parallel_tool_use: Extra inputs are not permitted",
        ),
        (
            _with(["tools", 0, "cache_control", "ttl"], "2h"),
            "tools.0.cache_control.ttl: Input should be '5m' or '1h'",
        ),
        (
            _with(["messages", 1, "content", 0, "cache_control"], {"type": "ephemeral"}),
            "A maximum of 4 blocks with cache_control may be provided. Found 5.",
        ),
        (
            _with(["messages", 2, "content", 1], {"type": "text", "text": "forgot"}),
            (
                "messages.1: `tool_use` ids were found without `tool_result` blocks immediately after: "
                "toolu_2. Each `tool_use` block must have a corresponding `tool_result` block in the next message."
            ),
        ),
        (
            _with(
                ["messages"],
                [
                    VALID["messages"][0],
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "toolu_9"}],
                    },
                ],
            ),
            "messages.1.content.0: unexpected `tool_use_id` found in `tool_result` blocks: toolu_9.",
        ),
        (
            _with(["messages", 2, "content", 1, "is_error"], "yes"),
            "messages.2.content.1.tool_result.is_error: Input should be a valid boolean",
        ),
        (
            _with(["messages"], VALID["messages"][:2]),
            "messages.1: `tool_use` ids were found without `tool_result` blocks immediately after: toolu_1, toolu_2.",
        ),
    ],
)
def test_invalid_requests_get_the_api_messages(body: dict[str, Any], message: str) -> None:
    """Each malformed request is refused with 400 invalid_request_error and the API's wording."""
    with pytest.raises(ApiError) as caught:
        check_messages_request(body)

    assert caught.value.status == 400
    assert caught.value.error_type == "invalid_request_error"
    assert caught.value.message.startswith(message)


def test_count_tokens_has_its_own_field_set() -> None:
    """count_tokens needs no max_tokens and refuses fields only create takes."""
    body = _with(["max_tokens"], ...)
    del body["stream"], body["stop_sequences"], body["metadata"]
    assert check_count_tokens_request(body).max_tokens is None

    with pytest.raises(ApiError, match="stream: Extra inputs are not permitted"):
        check_count_tokens_request({**body, "stream": True})


def test_tool_use_without_result_over_the_socket(
    serve: GatewayFactory, sdk_client: ClientFactory, write_script: ScriptFactory, tmp_path: Path
) -> None:
    """The SDK gets BadRequestError whose body is the API's error shape with the gateway's request id."""
    transcript = tmp_path / "transcript.jsonl"
    gateway, sock = serve(
        ScriptedUpstream.from_file(write_script([{"content": [{"type": "text", "text": "x"}]}])),
        transcript=transcript,
    )

    with pytest.raises(anthropic.BadRequestError) as caught:
        sdk_client(sock, max_retries=3).messages.create(
            model=MODEL,
            max_tokens=10,
            messages=[
                {"role": "user", "content": "Go."},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {}}
                    ],
                },
                {"role": "user", "content": "What did you find?"},
            ],
        )

    assert caught.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "messages.1: `tool_use` ids were found without `tool_result` blocks immediately "
            "after: toolu_1. Each `tool_use` block must have a corresponding `tool_result` block in "
            "the next message.",
        },
        "request_id": caught.value.response.headers["request-id"],
    }
    assert gateway.usage.refused_requests == 1
    assert [e.status for e in read_transcript(transcript)] == [400]


def test_sampling_parameters_are_refused_over_the_socket(
    serve: GatewayFactory, sdk_client: ClientFactory, write_script: ScriptFactory
) -> None:
    """temperature, gone from SDK 2.x, is refused as API version 2026-10-21 refuses it."""
    _, sock = serve(
        ScriptedUpstream.from_file(write_script([{"content": [{"type": "text", "text": "x"}]}]))
    )

    with pytest.raises(
        anthropic.BadRequestError, match="temperature: Extra inputs are not permitted"
    ):
        sdk_client(sock).messages.create(
            model=MODEL,
            max_tokens=10,
            messages=[{"role": "user", "content": "Go."}],
            extra_body={"temperature": 0.0},
        )


def test_bad_json_unknown_routes_and_big_bodies_get_api_errors(
    sock_dir: Path, write_script: ScriptFactory, make_budget: BudgetFactory
) -> None:
    """Unparsable JSON (400), unknown routes (404) and oversized bodies (413) answer in the API's shape."""
    upstream = ScriptedUpstream.from_file(
        write_script([{"content": [{"type": "text", "text": "x"}]}])
    )
    gateway = ModelGateway(upstream, make_budget(), TOKEN, max_body_bytes=2000)
    auth = {"authorization": f"Bearer {TOKEN}"}
    with (
        GatewayThread(gateway, sock_dir / "gw.sock") as thread,
        httpx2.Client(
            transport=httpx2.HTTPTransport(uds=str(thread.socket_path)), base_url="http://gw"
        ) as http,
    ):
        bad_json = http.post("/v1/messages", content=b"{not json", headers=auth)
        unknown = http.get("/v1/complete", headers=auth)
        too_big = http.post(
            "/v1/messages",
            json={
                "model": MODEL,
                "max_tokens": 1,
                "messages": [{"role": "user", "content": "x" * 5000}],
            },
            headers=auth,
        )
        not_object = http.post("/v1/messages", json=[1, 2], headers=auth)

    for response, status, error_type in (
        (bad_json, 400, "invalid_request_error"),
        (unknown, 404, "not_found_error"),
        (too_big, 413, "request_too_large"),
        (not_object, 400, "invalid_request_error"),
    ):
        assert response.status_code == status
        body = response.json()
        assert body["type"] == "error"
        assert body["error"]["type"] == error_type
        assert body["request_id"] == response.headers["request-id"]


class _BrokenUpstream:
    """An upstream with a bug: it raises an exception carrying internal details."""

    name = "broken"
    http_requests = 0

    async def create_message(self, call: UpstreamCall) -> MessageReply:
        raise RuntimeError(f"secret detail at /srv/internal for turn {call.turn}")

    async def count_tokens(
        self,
        body: dict[str, Any],  # noqa: ARG002 - the Upstream interface's signature
        *,
        request_sha256: str,  # noqa: ARG002 - the Upstream interface's signature
        anthropic_beta: tuple[str, ...] = (),  # noqa: ARG002 - the Upstream interface's signature
    ) -> int:
        raise RuntimeError("secret detail")

    async def aclose(self) -> None:
        return None


def test_an_internal_failure_is_a_plain_500_without_details(
    serve: GatewayFactory, sdk_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A gateway-side bug answers 500 api_error, not retried, with no trace or detail in the body."""
    gateway, sock = serve(_BrokenUpstream())
    client = sdk_client(sock, max_retries=3)

    with pytest.raises(anthropic.InternalServerError) as caught:
        client.messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "Go."}]
        )
    with pytest.raises(anthropic.InternalServerError):
        client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "Go."}])

    body = caught.value.response.text
    assert _body(caught.value)["error"] == {
        "type": "api_error",
        "message": "internal gateway error",
    }
    assert "secret" not in body
    assert "Traceback" not in body
    # One attempt each (x-should-retry false): a message and a count, both admitted upstream calls.
    assert (gateway.usage.requests, gateway.usage.count_tokens_requests) == (2, 1)
    assert "secret detail" in caplog.text  # the details go to the controller's log
