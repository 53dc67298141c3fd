"""The anthropic upstream against a fake Messages API that this test serves with uvicorn on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anthropic
import pytest
import uvicorn
from anthropic.types import MessageParam, TextBlock
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from controller.gateway import PINNED_API_VERSION, AnthropicUpstream, make_upstream, read_transcript
from controller.gateway.sse import message_to_events
from controller.settings import Settings

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

    from tests.controller.gateway.conftest import BudgetFactory, ClientFactory, GatewayFactory

MODEL = "claude-sonnet-4-6"
API_KEY = "sk-ant-api03-real-key-that-must-stay-in-the-controller"
RUN_TOKEN = "run-token-0123456789abcdefghij"  # noqa: S105 - the conftest's default test token
HELLO: list[MessageParam] = [{"role": "user", "content": "Hello."}]
UpstreamFactory = Callable[..., AnthropicUpstream]


def _body(error: anthropic.APIStatusError) -> dict[str, Any]:
    """The JSON error body the SDK kept."""
    assert isinstance(error.body, dict)
    return error.body


def api_message(text: str, *, input_tokens: int = 12, output_tokens: int = 7) -> dict[str, Any]:
    """A message as the real API answers one."""
    return {
        "id": "msg_01UpstreamMadeThisId000",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 3,
            "cache_read_input_tokens": 40,
        },
    }


def api_error(status: int, error_type: str, message: str) -> dict[str, Any]:
    """An error body as the real API answers one."""
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": "req_upstream",
    }


@dataclass
class Answer:
    """One canned answer of the fake API: JSON, or SSE frames when ``events`` is set."""

    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    events: list[bytes] | None = None


@dataclass
class Received:
    """What the fake API saw of one request."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeMessagesAPI:
    """An ASGI app that answers from a queue of canned answers and keeps every request it got."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.received: list[Received] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        self.received.append(
            Received(request.url.path, dict(request.headers), json.loads(await request.body()))
        )
        answer = (
            self.answers.pop(0)
            if self.answers
            else Answer(500, api_error(500, "api_error", "no answer"))
        )
        headers = {"request-id": f"req_upstream_{len(self.received)}", **answer.headers}
        response: Response
        if answer.events is not None:

            async def frames(chunks: list[bytes] = answer.events) -> Any:
                for chunk in chunks:
                    yield chunk

            response = StreamingResponse(frames(), media_type="text/event-stream", headers=headers)
        else:
            response = JSONResponse(answer.body, answer.status, headers=headers)
        await response(scope, receive, send)


@pytest.fixture
def fake_api() -> Iterator[tuple[FakeMessagesAPI, str]]:
    """The fake API served by uvicorn on 127.0.0.1 in a thread; yields it and its base URL."""
    app = FakeMessagesAPI()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_config=None, access_log=False))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    started = threading.Event()
    while not started.wait(0.01):
        if server.started or not thread.is_alive():
            started.set()
    yield app, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def waits() -> list[float]:
    """The waits the upstream asked for between attempts."""
    return []


@pytest.fixture
def upstream_factory(fake_api: tuple[FakeMessagesAPI, str], waits: list[float]) -> UpstreamFactory:
    """Builds AnthropicUpstream on the fake API, recording waits instead of sleeping them."""

    async def record_wait(seconds: float) -> None:
        waits.append(seconds)

    def make(**options: Any) -> AnthropicUpstream:
        return AnthropicUpstream(
            base_url=fake_api[1], api_key=SecretStr(API_KEY), sleep=record_wait, **options
        )

    return make


def test_529_then_200_is_retried_with_retry_after_capped(
    fake_api: tuple[FakeMessagesAPI, str],
    upstream_factory: UpstreamFactory,
    waits: list[float],
    serve: GatewayFactory,
    sdk_client: ClientFactory,
) -> None:
    """An upstream 529 asking for an hour's wait is retried after the cap, and the client sees one 200."""
    api, _ = fake_api
    api.answers = [
        Answer(529, api_error(529, "overloaded_error", "Overloaded"), {"retry-after": "3600"}),
        Answer(200, api_message("Hi from upstream.")),
    ]
    gateway, sock = serve(upstream_factory(retry_after_cap=2.5))

    message = sdk_client(sock).messages.create(model=MODEL, max_tokens=10, messages=HELLO)

    assert [b.text for b in message.content if isinstance(b, TextBlock)] == ["Hi from upstream."]
    assert waits == [2.5]
    assert len(api.received) == 2
    assert gateway.usage.requests == 1
    assert gateway.usage.cache_read_input_tokens == 40


def test_retry_after_ms_is_honoured(
    fake_api: tuple[FakeMessagesAPI, str],
    upstream_factory: UpstreamFactory,
    waits: list[float],
    serve: GatewayFactory,
    sdk_client: ClientFactory,
) -> None:
    """retry-after-ms takes precedence over retry-after, as in the SDK."""
    api, _ = fake_api
    api.answers = [
        Answer(
            429,
            api_error(429, "rate_limit_error", "slow down"),
            {"retry-after-ms": "250", "retry-after": "9"},
        ),
        Answer(200, api_message("ok")),
    ]
    _, sock = serve(upstream_factory())

    sdk_client(sock).messages.create(model=MODEL, max_tokens=10, messages=HELLO)

    assert waits == [0.25]


def test_persistent_529_reaches_the_client_once(
    fake_api: tuple[FakeMessagesAPI, str],
    upstream_factory: UpstreamFactory,
    waits: list[float],
    serve: GatewayFactory,
    sdk_client: ClientFactory,
) -> None:
    """After the gateway's own attempts, the 529 reaches the SDK with x-should-retry false: no 3xN attempts."""
    api, _ = fake_api
    api.answers = [Answer(529, api_error(529, "overloaded_error", "Overloaded")) for _ in range(3)]
    _, sock = serve(upstream_factory(max_attempts=3))

    with pytest.raises(anthropic.OverloadedError) as caught:
        sdk_client(sock, max_retries=3).messages.create(model=MODEL, max_tokens=10, messages=HELLO)

    assert _body(caught.value)["error"]["message"] == "Overloaded"
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert len(api.received) == 3
    assert len(waits) == 2
    assert all(0 < wait <= 8.5 for wait in waits)  # exponential backoff with jitter, no hint given


def test_the_key_goes_upstream_and_nowhere_else(
    fake_api: tuple[FakeMessagesAPI, str],
    upstream_factory: UpstreamFactory,
    serve: GatewayFactory,
    sdk_client: ClientFactory,
    tmp_path: Path,
) -> None:
    """Upstream gets the real key and the pinned version, never the run token; the transcript has neither."""
    api, _ = fake_api
    api.answers = [Answer(200, api_message("ok"))]
    transcript = tmp_path / "transcript.jsonl"
    _, sock = serve(upstream_factory(), transcript=transcript)

    sdk_client(sock).messages.create(model=MODEL, max_tokens=100_000 // 10, messages=HELLO)

    (seen,) = api.received
    assert seen.headers["x-api-key"] == API_KEY
    assert seen.headers["anthropic-version"] == PINNED_API_VERSION
    assert "anthropic-beta" not in seen.headers
    assert "authorization" not in seen.headers
    assert RUN_TOKEN not in json.dumps(seen.headers)
    assert seen.body["max_tokens"] == 4096  # lowered to the policy's cap
    text = transcript.read_text(encoding="utf-8")
    assert API_KEY not in text
    assert RUN_TOKEN not in text
    (entry,) = read_transcript(transcript)
    assert entry.meta.upstream_request_id == "req_upstream_1"


def test_a_beta_the_policy_names_is_forwarded_and_recorded(
    fake_api: tuple[FakeMessagesAPI, str],
    upstream_factory: UpstreamFactory,
    serve: GatewayFactory,
    sdk_client: ClientFactory,
    make_budget: BudgetFactory,
) -> None:
    """An anthropic-beta flag that model.allowed_betas names reaches the upstream as sent."""
    api, _ = fake_api
    api.answers = [Answer(200, api_message("ok"))]
    budget = make_budget(allowed_betas=["context-1m-2025-08-07"])
    _, sock = serve(upstream_factory(), budget=budget)

    sdk_client(sock).messages.create(
        model=MODEL,
        max_tokens=10,
        messages=HELLO,
        extra_headers={"anthropic-beta": "context-1m-2025-08-07"},
    )

    (seen,) = api.received
    assert seen.headers["anthropic-beta"] == "context-1m-2025-08-07"


def test_streams_pass_through_and_are_metered(
    fake_api: tuple[FakeMessagesAPI, str],
    upstream_factory: UpstreamFactory,
    serve: GatewayFactory,
    sdk_client: ClientFactory,
    tmp_path: Path,
) -> None:
    """An upstream stream reaches the SDK event by event; usage comes from message_start and message_delta."""
    api, _ = fake_api
    message = api_message("Streamed " * 20, input_tokens=30, output_tokens=25)
    api.answers = [Answer(events=[event.encode() for event in message_to_events(message)])]
    transcript = tmp_path / "transcript.jsonl"
    gateway, sock = serve(upstream_factory(), transcript=transcript)

    with sdk_client(sock).messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream:
        final = stream.get_final_message()

    assert final.model_dump(exclude_none=True)["content"] == message["content"]
    assert final.id == message["id"]
    usage = gateway.usage
    assert (usage.input_tokens, usage.output_tokens) == (30, 25)
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (3, 40)
    assert api.received[0].headers["accept"] == "text/event-stream"
    (entry,) = read_transcript(transcript)
    assert entry.response is not None
    assert entry.response["content"] == message["content"]


def test_a_stream_cut_short_ends_with_an_error_event(
    fake_api: tuple[FakeMessagesAPI, str],
    upstream_factory: UpstreamFactory,
    serve: GatewayFactory,
    sdk_client: ClientFactory,
    tmp_path: Path,
) -> None:
    """A stream that stops before message_stop gets an error event, which the SDK raises, not retries."""
    api, _ = fake_api
    events = message_to_events(api_message("partial"))
    api.answers = [Answer(events=[event.encode() for event in events[:4]])]
    transcript = tmp_path / "transcript.jsonl"
    gateway, sock = serve(upstream_factory(), transcript=transcript)

    with (
        pytest.raises(anthropic.APIStatusError, match="stream ended early"),
        sdk_client(sock, max_retries=3).messages.stream(
            model=MODEL, max_tokens=100, messages=HELLO
        ) as stream,
    ):
        stream.get_final_message()

    assert gateway.usage.requests == 1
    (entry,) = read_transcript(transcript)
    assert entry.frames is not None
    assert [frame.event for frame in entry.frames][-2:] == ["content_block_delta", "error"]


def test_upstream_errors_pass_through_but_a_refused_key_does_not(
    fake_api: tuple[FakeMessagesAPI, str],
    upstream_factory: UpstreamFactory,
    serve: GatewayFactory,
    sdk_client: ClientFactory,
) -> None:
    """An upstream 400 reaches the SDK as is; an upstream 401 (the controller's key) becomes a plain 500."""
    api, _ = fake_api
    api.answers = [
        Answer(400, api_error(400, "invalid_request_error", "messages.0.content: too long")),
        Answer(401, api_error(401, "authentication_error", "invalid x-api-key")),
    ]
    _, sock = serve(upstream_factory())
    client = sdk_client(sock, max_retries=2)

    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    with pytest.raises(anthropic.InternalServerError) as refused:
        client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)

    assert _body(bad.value)["error"]["message"] == "messages.0.content: too long"
    assert _body(bad.value)["request_id"] == bad.value.response.headers["request-id"]
    assert "credential was refused" in refused.value.message
    assert API_KEY not in refused.value.response.text
    assert len(api.received) == 2


def test_make_upstream_uses_settings_and_count_tokens_is_forwarded(
    fake_api: tuple[FakeMessagesAPI, str], serve: GatewayFactory, sdk_client: ClientFactory
) -> None:
    """make_upstream('anthropic') takes base URL and key from Settings; count_tokens asks upstream."""
    api, base_url = fake_api
    api.answers = [Answer(200, {"input_tokens": 321})]
    settings = Settings(
        _env_file=None, anthropic_base_url=base_url, anthropic_api_key=SecretStr(API_KEY)
    )  # type: ignore[call-arg]
    _, sock = serve(make_upstream("anthropic", settings))

    count = sdk_client(sock).messages.count_tokens(model=MODEL, messages=HELLO)

    assert count.input_tokens == 321
    assert api.received[0].path == "/v1/messages/count_tokens"
    assert api.received[0].headers["x-api-key"] == API_KEY


def test_an_unreachable_upstream_is_a_final_502(
    waits: list[float], serve: GatewayFactory, sdk_client: ClientFactory
) -> None:
    """Connection failures are retried by the gateway, then answered 502 without retry by the SDK."""
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once the probe closes

    async def record_wait(seconds: float) -> None:
        waits.append(seconds)

    upstream = AnthropicUpstream(
        base_url=f"http://127.0.0.1:{port}",
        api_key=SecretStr(API_KEY),
        max_attempts=2,
        sleep=record_wait,
    )
    _, sock = serve(upstream)

    with pytest.raises(anthropic.InternalServerError, match="unreachable") as caught:
        sdk_client(sock, max_retries=3).messages.create(model=MODEL, max_tokens=10, messages=HELLO)

    assert caught.value.status_code == 502
    assert len(waits) == 1
