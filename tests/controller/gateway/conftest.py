"""Fixtures of the gateway tests: a budget, scripts, a served gateway, and SDK clients on its socket.

Tests take everything through fixtures; the default run token is the one the
``serve`` and ``sdk_client`` factories share.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.types import ToolParam

from controller.gateway import GatewayThread, ModelGateway, Upstream
from controller.policy.schema import ModelBudget

TOKEN = "run-token-0123456789abcdefghij"  # noqa: S105 - a test run token, not a secret
MODEL = "claude-sonnet-4-6"
TOOLS: list[ToolParam] = [
    {
        "name": "read_file",
        "description": "Read a file of the repository.",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
    }
]

BudgetFactory = Callable[..., ModelBudget]
ScriptFactory = Callable[[list[dict[str, Any]]], Path]
GatewayFactory = Callable[..., tuple[ModelGateway, Path]]
ClientFactory = Callable[..., anthropic.Anthropic]


@pytest.fixture
def tools() -> list[ToolParam]:
    """One custom tool, as the runner declares its tools."""
    return list(TOOLS)


@pytest.fixture
def anyio_backend() -> str:
    """uvicorn runs on asyncio only."""
    return "asyncio"


@pytest.fixture
def make_budget() -> BudgetFactory:
    """A model budget with roomy defaults; keyword arguments override fields."""

    def make(**overrides: Any) -> ModelBudget:
        fields: dict[str, Any] = {
            "allowed_models": [MODEL, "claude-haiku-5-5"],
            "default_model": MODEL,
            "max_tokens_per_request": 4096,
            "max_total_tokens": 1_000_000,
            "max_requests": 50,
            "max_rounds": 3,
        }
        fields.update(overrides)
        return ModelBudget(**fields)

    return make


@pytest.fixture
def write_script(tmp_path: Path) -> ScriptFactory:
    """Writes script turns to a JSON Lines file and returns its path."""

    def write(turns: list[dict[str, Any]]) -> Path:
        path = tmp_path / "script.jsonl"
        path.write_text("".join(json.dumps(turn) + "\n" for turn in turns), encoding="utf-8")
        return path

    return write


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short folder for sockets (a socket path must fit in 107 bytes; tmp_path may not)."""
    path = Path(tempfile.mkdtemp(prefix="tbgw-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def serve(sock_dir: Path, make_budget: BudgetFactory) -> Iterator[GatewayFactory]:
    """Starts a gateway in a thread on a Unix socket; every one is stopped at teardown."""
    with ExitStack() as stack:
        count = 0

        def start(
            upstream: Upstream,
            budget: ModelBudget | None = None,
            transcript: Path | None = None,
            token: str = TOKEN,
        ) -> tuple[ModelGateway, Path]:
            nonlocal count
            count += 1
            gateway = ModelGateway(upstream, budget or make_budget(), token, transcript)
            thread = stack.enter_context(GatewayThread(gateway, sock_dir / f"gw{count}.sock"))
            return gateway, thread.socket_path

        yield start


@pytest.fixture
def sdk_client() -> Iterator[ClientFactory]:
    """The real anthropic SDK pointed at a gateway socket; closed at teardown."""
    clients: list[anthropic.Anthropic] = []

    def make(socket_path: Path, api_key: str = TOKEN, max_retries: int = 2) -> anthropic.Anthropic:
        client = anthropic.Anthropic(
            api_key=api_key,
            base_url="http://gateway",
            max_retries=max_retries,
            http_client=anthropic.DefaultHttpxClient(
                transport=httpx2.HTTPTransport(uds=str(socket_path))
            ),
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
