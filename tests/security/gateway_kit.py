"""Tools of the gateway attacks (invariant 12): the real gateway on a Unix socket, a loopback provider, raw sockets.

The gateway is the one ``taskbox run`` starts (``ModelGateway`` in a
``GatewayThread``, uvicorn on a Unix socket); the provider is a loopback HTTP
server standing in for the Messages API that records every request it gets, so
an attack that leaks shows up as a request there.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
from pydantic import SecretStr

from controller.gateway import AnthropicUpstream, GatewayThread, ModelGateway, Upstream
from controller.policy.schema import ModelBudget

MODEL = "claude-sonnet-4-6"
TOKEN = f"run-token-{secrets.token_hex(16)}"
API_KEY = f"sk-ant-api03-GATEWAY-CANARY-{secrets.token_hex(8)}"
HELLO: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "Hello."}],
}


def budget(**overrides: Any) -> ModelBudget:
    """A roomy model budget with the policy's default gateway bounds; keywords override."""
    fields: dict[str, Any] = {
        "allowed_models": [MODEL],
        "default_model": MODEL,
        "max_tokens_per_request": 1024,
        "max_total_tokens": 10_000_000,
        "max_requests": 500,
        "max_rounds": 2,
    }
    fields.update(overrides)
    return ModelBudget(**fields)


@dataclass
class Provider:
    """A loopback Messages API: answers every call, keeps each request's path, headers and raw body."""

    url: str
    server: ThreadingHTTPServer
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    delay: float = 0.0

    def stop(self) -> None:
        """Shut the server down."""
        self.server.shutdown()
        self.server.server_close()

    def seen(self) -> bytes:
        """Everything the provider received, headers and bodies, as one blob to search."""
        return b"\n".join(
            json.dumps(headers).encode() + b"\n" + body for _, headers, body in self.requests
        )


@contextlib.contextmanager
def provider() -> Iterator[Provider]:
    """A ``Provider`` on 127.0.0.1 for the length of the block."""
    state: dict[str, Provider] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            """Quiet: the test reads the requests."""

        def do_POST(self) -> None:
            """Answer as the Messages API would, after the provider's delay."""
            api = state["api"]
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            api.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            time.sleep(api.delay)
            if self.path.endswith("/count_tokens"):
                answer: dict[str, Any] = {"input_tokens": 7}
            else:
                answer = {
                    "id": f"msg_{secrets.token_hex(8)}",
                    "type": "message",
                    "role": "assistant",
                    "model": MODEL,
                    "content": [{"type": "text", "text": "ok"}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": 10, "output_tokens": 2},
                }
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    api = Provider(url=f"http://127.0.0.1:{server.server_address[1]}", server=server)
    state["api"] = api
    threading.Thread(target=server.serve_forever, name="gateway-kit-provider", daemon=True).start()
    try:
        yield api
    finally:
        api.stop()


def anthropic_upstream(api: Provider) -> AnthropicUpstream:
    """The real ``anthropic`` upstream pointed at the loopback provider, with a canary key."""
    return AnthropicUpstream(base_url=api.url, api_key=SecretStr(API_KEY), max_attempts=1)


@contextlib.contextmanager
def gateway(
    upstream: Upstream, model_budget: ModelBudget, transcript: Path | None = None
) -> Iterator[tuple[ModelGateway, Path]]:
    """The real gateway served on a fresh Unix socket; yields it and the socket path."""
    folder = Path(tempfile.mkdtemp(prefix="tbsec-", dir="/tmp"))
    try:
        served = ModelGateway(upstream, model_budget, TOKEN, transcript)
        with GatewayThread(served, folder / "gateway.sock") as thread:
            yield served, thread.socket_path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def client(sock: Path, timeout: float = 30.0) -> httpx2.Client:
    """A plain HTTP client on the gateway socket, authenticated with the run token."""
    return httpx2.Client(
        transport=httpx2.HTTPTransport(uds=str(sock)),
        base_url="http://gateway",
        headers={"x-api-key": TOKEN, "anthropic-version": "2023-06-01"},
        timeout=timeout,
    )


def connect(sock: Path, timeout: float = 10.0) -> socket.socket:
    """A raw connection to the gateway socket."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    conn.connect(str(sock))
    return conn


def request_head(
    path: str = "/v1/messages", *, length: int | None = None, chunked: bool = False
) -> bytes:
    """The head of an authenticated POST, with a Content-Length or chunked encoding."""
    lines = [
        f"POST {path} HTTP/1.1",
        "host: gateway",
        "content-type: application/json",
        f"x-api-key: {TOKEN}",
    ]
    if length is not None:
        lines.append(f"content-length: {length}")
    if chunked:
        lines.append("transfer-encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_answer(conn: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP answer (status, headers, body by Content-Length) from a raw connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before an answer: {data[:200]!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in header_lines)
    }
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(status_line.split()[1]), headers, rest[:length]


def closed_by_peer(conn: socket.socket, within: float) -> bool:
    """Whether the gateway closes ``conn`` (EOF) within ``within`` seconds, reading what it sends."""
    conn.settimeout(within)
    try:
        while conn.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True
