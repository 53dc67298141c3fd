"""The run's policy at the gateway: token, model allowlist, max_tokens cap and budget, seen through the SDK."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import anthropic
import httpx2
import pytest
from anthropic.types import MessageParam

from controller.gateway import ScriptedUpstream, read_transcript

if TYPE_CHECKING:
    from tests.controller.gateway.conftest import (
        BudgetFactory,
        ClientFactory,
        GatewayFactory,
        ScriptFactory,
    )

MODEL = "claude-sonnet-4-6"
HELLO: list[MessageParam] = [{"role": "user", "content": "Hello."}]


def _body(error: anthropic.APIStatusError) -> dict[str, Any]:
    """The JSON error body the SDK kept."""
    assert isinstance(error.body, dict)
    return error.body


@pytest.fixture
def upstream(write_script: ScriptFactory) -> ScriptedUpstream:
    """Five plain text turns."""
    return ScriptedUpstream.from_file(
        write_script([{"content": [{"type": "text", "text": f"Answer {n}."}]} for n in range(5)])
    )


def test_wrong_token_is_refused_and_not_recorded(
    serve: GatewayFactory, sdk_client: ClientFactory, upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    """A wrong token gets 401 authentication_error in the API's shape; nothing is metered or recorded."""
    transcript = tmp_path / "transcript.jsonl"
    gateway, sock = serve(upstream, transcript=transcript)

    with pytest.raises(anthropic.AuthenticationError) as caught:
        sdk_client(sock, api_key="not-the-run-token-at-all").messages.create(
            model=MODEL, max_tokens=10, messages=HELLO
        )

    error = caught.value
    assert error.status_code == 401
    assert error.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
        "request_id": error.response.headers["request-id"],
    }
    assert gateway.usage.requests == gateway.usage.refused_requests == 0
    assert not transcript.exists()


def test_x_api_key_and_old_api_version_are_accepted(
    serve: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    """The pre-2.x style (x-api-key, anthropic-version 2023-06-01) works too; no credential gets 401."""
    _, sock = serve(upstream)
    body = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "Hi."}]}
    with httpx2.Client(transport=httpx2.HTTPTransport(uds=str(sock)), base_url="http://gw") as http:
        ok = http.post(
            "/v1/messages",
            json=body,
            headers={
                "x-api-key": "run-token-0123456789abcdefghij",
                "anthropic-version": "2023-06-01",
            },
        )
        missing = http.post("/v1/messages", json=body)

    assert ok.status_code == 200
    assert ok.json()["type"] == "message"
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    assert missing.headers["request-id"] == missing.json()["request_id"]


def test_disallowed_model_is_refused(
    serve: GatewayFactory, sdk_client: ClientFactory, upstream: ScriptedUpstream
) -> None:
    """A model outside the allowlist gets 403 permission_error naming it, and is not retried."""
    gateway, sock = serve(upstream)

    with pytest.raises(anthropic.PermissionDeniedError) as caught:
        sdk_client(sock).messages.create(model="claude-opus-4-8", max_tokens=10, messages=HELLO)

    assert _body(caught.value)["error"]["message"].startswith(
        "model: claude-opus-4-8 is not allowed by this run's policy"
    )
    assert gateway.usage.requests == 0
    assert gateway.usage.refused_requests == 1


def test_max_tokens_is_lowered_to_the_cap(
    serve: GatewayFactory,
    sdk_client: ClientFactory,
    upstream: ScriptedUpstream,
    make_budget: BudgetFactory,
    tmp_path: Path,
) -> None:
    """A request above the policy's max_tokens is forwarded with the cap; the transcript keeps both."""
    transcript = tmp_path / "transcript.jsonl"
    _, sock = serve(upstream, budget=make_budget(max_tokens_per_request=256), transcript=transcript)

    sdk_client(sock).messages.create(model=MODEL, max_tokens=16000, messages=HELLO)

    (entry,) = read_transcript(transcript)
    assert entry.request.body is not None
    assert entry.request.body["max_tokens"] == 16000
    assert entry.meta.sent_max_tokens == 256


def test_request_budget_exhausted_is_429_and_not_retried(
    serve: GatewayFactory,
    sdk_client: ClientFactory,
    upstream: ScriptedUpstream,
    make_budget: BudgetFactory,
    tmp_path: Path,
) -> None:
    """Past max_requests the SDK gets RateLimitError with x-should-retry false, after one attempt."""
    transcript = tmp_path / "transcript.jsonl"
    gateway, sock = serve(upstream, budget=make_budget(max_requests=2), transcript=transcript)
    client = sdk_client(sock, max_retries=3)
    client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)

    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)

    assert caught.value.response.headers["x-should-retry"] == "false"
    assert "2 of 2 model requests used" in caught.value.message
    assert gateway.usage.requests == 2
    assert gateway.usage.refused_requests == 1  # the SDK did not retry
    statuses = [(e.turn, e.status) for e in read_transcript(transcript)]
    assert statuses == [(1, 200), (2, 200), (None, 429)]


def test_token_budget_exhausted_is_429(
    serve: GatewayFactory,
    sdk_client: ClientFactory,
    upstream: ScriptedUpstream,
    make_budget: BudgetFactory,
) -> None:
    """Once input plus output tokens reach max_total_tokens, further requests get 429 naming the tokens."""
    gateway, sock = serve(upstream, budget=make_budget(max_total_tokens=5))
    client = sdk_client(sock)
    client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)

    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)

    assert f"{gateway.usage.total_tokens} of 5 tokens used" in caught.value.message
    assert gateway.usage.requests == 1


def test_provider_side_tools_are_refused(
    serve: GatewayFactory, sdk_client: ClientFactory, upstream: ScriptedUpstream
) -> None:
    """A server tool such as web search would reach the network for the sandbox, so it gets 403."""
    _, sock = serve(upstream)

    with pytest.raises(anthropic.PermissionDeniedError) as caught:
        sdk_client(sock).messages.create(
            model=MODEL,
            max_tokens=10,
            messages=HELLO,
            tools=[{"type": "web_search_20250305", "name": "web_search"}],
        )

    assert "'web_search_20250305' runs on the provider's side" in caught.value.message
