"""Serving one run's gateway on a TCP port as well as its Unix socket (the Kubernetes path), and the runner's TCP client."""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Any

import anthropic
import httpx2
import pytest
from pydantic import SecretStr, ValidationError
from taskbox_runner.loop import make_client

from controller.errors import GatewayError
from controller.gateway import GatewayThread, ModelGateway, ScriptedUpstream
from controller.gateway.serve import bind_tcp
from taskbox_wire.config import RunBudget, RunConfig
from taskbox_wire.contract import Task

if TYPE_CHECKING:
    from pathlib import Path

    from tests.controller.gateway.conftest import BudgetFactory, ScriptFactory

MODEL = "claude-sonnet-4-6"
TOKEN = "run-token-0123456789abcdefghij"  # noqa: S105 - a test run token, not a secret
HI: list[Any] = [{"role": "user", "content": "Hi."}]


def _gateway(write_script: ScriptFactory, budget: Any, turns: int = 3) -> ModelGateway:
    script = write_script(
        [{"content": [{"type": "text", "text": f"Turn {n}."}]} for n in range(turns)]
    )
    return ModelGateway(ScriptedUpstream.from_file(script), budget, TOKEN)


def _tcp_client(port: int, api_key: str = TOKEN) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key=api_key,
        base_url=f"http://127.0.0.1:{port}",
        max_retries=0,
        http_client=anthropic.DefaultHttpxClient(transport=httpx2.HTTPTransport()),
    )


def _port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def _config(**overrides: Any) -> RunConfig:
    fields: dict[str, Any] = {
        "run_id": "run-1",
        "task": Task.model_validate(
            {
                "taskKey": "BE-1",
                "description": "x",
                "specSnippet": "x",
                "ownsPaths": ["app/"],
                "contextJson": {"BE-1-ctx": {"relevant_files": []}},
            }
        ),
        "base_files": {},
        "owns_paths": ["app/"],
        "readable_paths": [],
        "budget": RunBudget(
            model=MODEL,
            max_tokens_per_request=64,
            max_total_tokens=10_000,
            max_rounds=1,
            wall_clock_seconds=60,
        ),
        "gateway_token": SecretStr(TOKEN),
    }
    fields.update(overrides)
    return RunConfig(**fields)


def test_tcp_and_socket_serve_one_gateway(
    write_script: ScriptFactory, make_budget: BudgetFactory, sock_dir: Path
) -> None:
    """The SDK works over TCP (plain and streaming) and the socket alike, metered as one run; both close on stop."""
    gateway = _gateway(write_script, make_budget())
    tcp = bind_tcp("127.0.0.1")
    port = _port(tcp)
    path = sock_dir / "gw.sock"
    with GatewayThread(gateway, path, tcp=tcp):
        with _tcp_client(port) as client:
            first = client.messages.create(model=MODEL, max_tokens=5, messages=HI)
            with client.messages.stream(model=MODEL, max_tokens=5, messages=HI) as stream:
                second = stream.get_final_message()
        with anthropic.Anthropic(
            api_key=TOKEN,
            base_url="http://gateway",
            http_client=anthropic.DefaultHttpxClient(transport=httpx2.HTTPTransport(uds=str(path))),
        ) as over_socket:
            third = over_socket.messages.create(model=MODEL, max_tokens=5, messages=HI)

    assert [first.content[0].type, second.stop_reason, third.content[0].type] == [
        "text",
        "end_turn",
        "text",
    ]
    assert gateway.usage.requests == 3
    assert tcp.fileno() == -1  # closed by the gateway
    assert not path.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_tcp_needs_the_run_token(
    write_script: ScriptFactory, make_budget: BudgetFactory, sock_dir: Path
) -> None:
    """Over TCP a wrong token is refused (401) and never reaches the upstream."""
    gateway = _gateway(write_script, make_budget())
    tcp = bind_tcp("127.0.0.1")
    with (
        GatewayThread(gateway, sock_dir / "gw.sock", tcp=tcp),
        _tcp_client(_port(tcp), api_key="not-the-run-token-0123456789") as client,
        pytest.raises(anthropic.AuthenticationError),
    ):
        client.messages.create(model=MODEL, max_tokens=5, messages=HI)

    assert gateway.usage.requests == 0


def test_connection_cap_counts_tcp_and_socket_together(
    write_script: ScriptFactory, make_budget: BudgetFactory, sock_dir: Path
) -> None:
    """With max_connections=1 a connection held on the socket makes the next TCP one get 429 at once."""
    gateway = _gateway(write_script, make_budget(max_connections=1))
    tcp = bind_tcp("127.0.0.1")
    path = sock_dir / "gw.sock"
    with GatewayThread(gateway, path, tcp=tcp), socket.socket(socket.AF_UNIX) as held:
        held.connect(str(path))
        deadline = time.monotonic() + 5
        while gateway.connections is None or gateway.connections.open < 1:
            assert time.monotonic() < deadline, "the held connection was never counted"
            time.sleep(0.01)
        with socket.create_connection(("127.0.0.1", _port(tcp)), timeout=5) as extra:
            answer = extra.recv(65536)
        assert gateway.connections.refused == 1

    assert answer.startswith(b"HTTP/1.1 429 ")


def test_idle_tcp_connection_is_closed(
    write_script: ScriptFactory, make_budget: BudgetFactory, sock_dir: Path
) -> None:
    """A TCP connection that sends nothing is closed after model.idle_timeout_seconds, as on the socket."""
    gateway = _gateway(write_script, make_budget(idle_timeout_seconds=0.3))
    tcp = bind_tcp("127.0.0.1")
    with (
        GatewayThread(gateway, sock_dir / "gw.sock", tcp=tcp),
        socket.create_connection(("127.0.0.1", _port(tcp)), timeout=5) as idle,
    ):
        idle.sendall(b"POST /v1/messages HTTP/1.1\r\n")  # part of a head, then silence
        started = time.monotonic()
        assert idle.recv(1024) == b""  # closed by the gateway, not by the 5 s timeout
        waited = time.monotonic() - started
        assert gateway.connections is not None
        assert gateway.connections.timed_out == 1

    assert 0.2 < waited < 4


def test_bind_tcp_refuses_a_taken_port_and_an_unknown_host() -> None:
    """bind_tcp reports a port in use or a host that does not resolve as a GatewayError."""
    taken = bind_tcp("127.0.0.1")
    try:
        with pytest.raises(GatewayError, match="cannot bind"):
            bind_tcp("127.0.0.1", _port(taken))
    finally:
        taken.close()
    with pytest.raises(GatewayError, match="cannot resolve"):
        bind_tcp("no-such-host.invalid")


def test_a_failed_start_closes_the_tcp_socket(
    write_script: ScriptFactory, make_budget: BudgetFactory, sock_dir: Path
) -> None:
    """When the Unix socket cannot be bound the TCP listener handed over is closed, not leaked."""
    regular = sock_dir / "file.sock"
    regular.write_text("keep me", encoding="utf-8")
    tcp = bind_tcp("127.0.0.1")
    with pytest.raises(GatewayError, match="is not a socket"):
        GatewayThread(_gateway(write_script, make_budget()), regular, tcp=tcp).start()

    assert tcp.fileno() == -1


def test_runner_client_uses_gateway_url_and_ignores_proxy_variables(
    write_script: ScriptFactory,
    make_budget: BudgetFactory,
    sock_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """make_client speaks TCP to gateway_url (no socket exists) and never through an HTTP_PROXY of the environment."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    gateway = _gateway(write_script, make_budget())
    tcp = bind_tcp("127.0.0.1")
    config = _config(
        gateway_url=f"http://127.0.0.1:{_port(tcp)}/", gateway_socket=sock_dir / "absent.sock"
    )
    with GatewayThread(gateway, sock_dir / "gw.sock", tcp=tcp), make_client(config) as client:
        reply = client.messages.create(model=MODEL, max_tokens=5, messages=HI)

    assert reply.content[0].type == "text"
    assert gateway.usage.requests == 1


@pytest.mark.parametrize(
    "url",
    [
        "https://gw:8443",
        "http://user:secret@gw:8080",
        "http://@gw:8080",
        "http://gw:8080/v1",
        "http://gw:8080?x=1",
        "http://gw:8080#f",
        "http://gw:99999",
        "http://:8080",
        "unix:///run/taskbox/gateway.sock",
        "gw:8080",
    ],
)
def test_gateway_url_must_be_a_plain_http_origin(url: str) -> None:
    """RunConfig refuses a gateway_url that is not http://host[:port] (userinfo, path, query, other schemes)."""
    with pytest.raises(ValidationError, match="gateway_url"):
        _config(gateway_url=url)


def test_gateway_url_defaults_to_the_socket() -> None:
    """Without gateway_url the config keeps the socket (the Docker path); a plain origin is kept without its slash."""
    assert _config().gateway_url is None
    assert _config(gateway_url="http://10.0.0.7:8123/").gateway_url == "http://10.0.0.7:8123"
    assert _config(gateway_url="http://[fd00::1]:80").gateway_url == "http://[fd00::1]:80"
