"""Serving on a Unix socket: file mode, teardown, stale sockets, the async server, request ids."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import anthropic
import httpx2
import pytest

from controller.errors import GatewayError
from controller.gateway import GatewayThread, ModelGateway, ScriptedUpstream, serve_gateway

if TYPE_CHECKING:
    from tests.controller.gateway.conftest import BudgetFactory, ScriptFactory

MODEL = "claude-sonnet-4-6"
TOKEN = "run-token-0123456789abcdefghij"  # noqa: S105 - a test run token, not a secret


@pytest.fixture
def gateway(write_script: ScriptFactory, make_budget: BudgetFactory) -> ModelGateway:
    """A gateway with a two-turn script."""
    script = write_script([{"content": [{"type": "text", "text": f"Turn {n}."}]} for n in (1, 2)])
    return ModelGateway(ScriptedUpstream.from_file(script), make_budget(), TOKEN)


def test_socket_is_world_connectable_and_removed_on_stop(
    gateway: ModelGateway, sock_dir: Path
) -> None:
    """The socket is mode 0o666 while serving (the token authenticates) and gone after stop()."""
    thread = GatewayThread(gateway, sock_dir / "run" / "gateway.sock")
    path = thread.start()
    try:
        mode = path.stat().st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o666
    finally:
        thread.stop()
    thread.stop()  # a second stop is harmless

    assert not path.exists()


def test_stale_socket_is_replaced_but_other_files_are_not(
    gateway: ModelGateway, sock_dir: Path
) -> None:
    """A socket left by a crashed gateway is replaced; a regular file, or a too long path, is refused."""
    import socket  # noqa: PLC0415 - only this test makes a raw socket

    stale = sock_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX) as leftover:
        leftover.bind(str(stale))
    with GatewayThread(gateway, stale):
        assert stat.S_ISSOCK(stale.stat().st_mode)

    regular = sock_dir / "file.sock"
    regular.write_text("keep me", encoding="utf-8")
    with pytest.raises(GatewayError, match="is not a socket"):
        GatewayThread(gateway, regular).start()
    assert regular.read_text(encoding="utf-8") == "keep me"

    with pytest.raises(GatewayError, match="socket name is too long"):
        GatewayThread(gateway, sock_dir / ("x" * 120)).start()


def test_socket_in_a_deep_folder_is_served(gateway: ModelGateway, sock_dir: Path) -> None:
    """A socket whose full path is longer than sun_path allows is still made in its folder and answers."""
    deep = sock_dir.joinpath(*(["d" * 40] * 4))
    deep.mkdir(parents=True)
    path = deep / "gateway.sock"
    assert len(str(path)) > 107
    body = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "Hi."}]}
    dir_fd = os.open(deep, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with GatewayThread(gateway, path):
            assert stat.S_ISSOCK(path.stat().st_mode)
            short = f"/proc/self/fd/{dir_fd}/gateway.sock"
            with httpx2.Client(transport=httpx2.HTTPTransport(uds=short)) as client:
                reply = client.post(
                    "http://gateway/v1/messages",
                    json=body,
                    headers={"authorization": f"Bearer {TOKEN}"},
                )
            assert reply.status_code == 200
    finally:
        os.close(dir_fd)
    assert not path.exists()


def test_request_id_header_on_every_response(gateway: ModelGateway, sock_dir: Path) -> None:
    """Success, auth failure and unknown routes all carry a request-id header, unique per request."""
    auth = {"authorization": f"Bearer {TOKEN}"}
    body = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "Hi."}]}
    with (
        GatewayThread(gateway, sock_dir / "gw.sock") as thread,
        httpx2.Client(
            transport=httpx2.HTTPTransport(uds=str(thread.socket_path)), base_url="http://gw"
        ) as http,
    ):
        responses = [
            http.post("/v1/messages", json=body, headers=auth),
            http.post("/v1/messages", json=body),
            http.get("/nothing-here", headers=auth),
            http.get("/v1/models", headers=auth),
            http.request("DELETE", "/v1/messages", headers=auth),
        ]

    assert [r.status_code for r in responses] == [200, 401, 404, 200, 405]
    ids = [r.headers["request-id"] for r in responses]
    assert all(i.startswith("req_") for i in ids)
    assert len(set(ids)) == len(ids)
    assert responses[4].json()["error"]["type"] == "invalid_request_error"


@pytest.mark.anyio
async def test_serve_gateway_in_the_running_loop(gateway: ModelGateway, sock_dir: Path) -> None:
    """serve_gateway serves the async SDK in the caller's loop and cleans up when the block ends."""
    path = sock_dir / "async.sock"
    async with serve_gateway(gateway, path):
        client = anthropic.AsyncAnthropic(
            api_key=TOKEN,
            base_url="http://gateway",
            http_client=anthropic.DefaultAsyncHttpxClient(
                transport=httpx2.AsyncHTTPTransport(uds=str(path))
            ),
        )
        async with client:
            first = await client.messages.create(
                model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "Hi."}]
            )
            async with client.messages.stream(
                model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "Again."}]
            ) as stream:
                second = await stream.get_final_message()

    assert [b.type for b in first.content] == ["text"]
    assert second.stop_reason == "end_turn"
    assert gateway.usage.requests == 2
    assert not path.exists()


def test_weak_tokens_are_refused(write_script: ScriptFactory, make_budget: BudgetFactory) -> None:
    """A run token shorter than 16 characters is refused when the gateway is made."""
    upstream = ScriptedUpstream.from_file(
        write_script([{"content": [{"type": "text", "text": "x"}]}])
    )

    with pytest.raises(GatewayError, match="at least 16 characters"):
        ModelGateway(upstream, make_budget(), "short")
