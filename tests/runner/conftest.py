"""Fixtures of the runner tests: a work tree with its RunConfig, a fake verifier, a scripted gateway.

The model is the real gateway (``controller.gateway``) with a scripted
upstream on a Unix socket, reached by the real anthropic SDK; only the
verifier is faked, because it is another package with its own tests.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from taskbox_runner.checks import BaseTests, CheckRequest

from controller.gateway import GatewayThread, ModelGateway, ScriptedUpstream, read_transcript
from controller.policy.schema import ModelBudget
from taskbox_wire.config import RunBudget, RunConfig
from taskbox_wire.contract import ConstraintReport, Task, TestResults

TOKEN = "runner-test-token-0123456789abcdef"  # noqa: S105 - a test run token, not a secret
MODEL = "claude-sonnet-4-6"
TASK_KEY = "BE-123"


def blob_id(data: bytes) -> str:
    """Git's blob id of ``data``, computed without git."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


# --------------------------------------------------------------------------- verifier


@dataclass
class FakeReport:
    """A VerificationReport look-alike with a fixed verdict and feedback."""

    passed: bool
    text: str = ""
    framework: str = "fastapi"
    test_results: TestResults = field(default_factory=lambda: TestResults(total=1, passed=1))
    constraints: list[ConstraintReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def feedback(self) -> str:
        """The fixed feedback text."""
        return self.text


@dataclass
class FakeVerifier:
    """Answers each check with ``judge(request)`` and records every request."""

    judge: Callable[[CheckRequest], FakeReport]
    requests: list[CheckRequest] = field(default_factory=list)
    base_tests: BaseTests = field(default_factory=dict)

    def index_base_tests(self, workdir: Path) -> BaseTests | None:  # noqa: ARG002 - the Verifier interface
        """The fixed base index."""
        return self.base_tests

    def __call__(self, request: CheckRequest) -> FakeReport:
        """Record the request and judge it."""
        self.requests.append(request)
        return self.judge(request)


def passing_report() -> FakeReport:
    """All ten constraints pass."""
    return FakeReport(
        passed=True,
        test_results=TestResults(total=3, passed=3, coverage_percent=91.5),
        constraints=[ConstraintReport(id=i, name=f"c{i}", passed=True) for i in range(1, 11)],
    )


def failing_report(
    text: str = "[FAIL] 5. All tests pass: tests/test_x.py::test_a failed",
) -> FakeReport:
    """Constraint 5 fails with ``text`` as feedback."""
    return FakeReport(
        passed=False,
        text=text,
        test_results=TestResults(total=2, passed=1, failed=1, coverage_percent=50.0),
        constraints=[ConstraintReport(id=i, name=f"c{i}", passed=i != 5) for i in range(1, 11)],
    )


def verifier_needing(workdir: Path, rel: str, text: str) -> FakeVerifier:
    """Passes once ``rel`` under ``workdir`` contains ``text``; fails otherwise."""

    def judge(_request: CheckRequest) -> FakeReport:
        path = workdir / rel
        ok = path.is_file() and text in path.read_text(encoding="utf-8")
        return passing_report() if ok else failing_report(f"[FAIL] {rel} lacks {text!r}")

    return FakeVerifier(judge)


# --------------------------------------------------------------------------- work tree and config


@dataclass
class Workspace:
    """A staged work tree and out folder with the RunConfig that describes them."""

    root: Path
    workdir: Path
    outdir: Path
    base_files: dict[str, str]

    def config(self, *, socket: Path | None = None, **overrides: Any) -> RunConfig:
        """A RunConfig for this work tree; keyword arguments override fields."""
        task = Task.model_validate(
            {
                "taskKey": TASK_KEY,
                "description": "Add the users endpoint\n\nGET /users returns the users.",
                "specSnippet": "GET /users -> 200 [User]",
                "ownsPaths": ["app/api/routes/", "tests/test_users.py"],
                "contextJson": {
                    f"{TASK_KEY}-ctx": {
                        "relevant_files": ["app/main.py", "pyproject.toml"],
                        "world_state": {"db": "sqlite"},
                    },
                    f"{TASK_KEY}-schema": {"interfaces": ["GET /users"], "data_models": {}},
                    f"{TASK_KEY}-contract": {"openapi_path": "openapi.yaml"},
                },
            }
        )
        fields: dict[str, Any] = {
            "run_id": "run-1",
            "task": task,
            "base_files": self.base_files,
            "owns_paths": ["app/api/routes/", "tests/test_users.py"],
            "readable_paths": ["app/main.py", "openapi.yaml", "pyproject.toml"],
            "missing_context": ["app/core/config.py — refused by policy"],
            "openapi_path": "openapi.yaml",
            "budget": RunBudget(
                model=MODEL,
                max_tokens_per_request=4096,
                max_total_tokens=1_000_000,
                max_rounds=3,
                wall_clock_seconds=600,
            ),
            "gateway_socket": socket or self.root / "no.sock",
            "gateway_token": SecretStr(TOKEN),
            "workdir": self.workdir,
            "outdir": self.outdir,
        }
        fields.update(overrides)
        return RunConfig(**fields)


BASE_FILES: dict[str, str] = {
    "app/main.py": "from fastapi import FastAPI\n\napp = FastAPI()\n",
    "app/api/routes/__init__.py": "",
    "app/api/routes/health.py": "async def health() -> dict[str, str]:\n    return {'ok': 'yes'}\n",
    "openapi.yaml": "openapi: 3.1.0\npaths:\n  /users:\n    get: {}\n",
    "pyproject.toml": '[project]\nname = "demo"\ndependencies = ["fastapi>=0.110"]\n',
}


@pytest.fixture
def make_workspace(tmp_path: Path) -> Callable[..., Workspace]:
    """Stages files (and empty placeholders, which are not base files) under tmp/work."""

    def make(
        files: Mapping[str, str] | None = None,
        placeholders: tuple[str, ...] = ("tests/test_users.py",),
    ) -> Workspace:
        root = tmp_path / "ws"
        workdir, outdir = root / "work", root / "out"
        outdir.mkdir(parents=True)
        base: dict[str, str] = {}
        for rel, text in (BASE_FILES if files is None else files).items():
            path = workdir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text.encode())
            base[rel] = blob_id(text.encode())
        for rel in placeholders:
            path = workdir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        (workdir / "app/api/routes").mkdir(parents=True, exist_ok=True)
        return Workspace(root=root, workdir=workdir, outdir=outdir, base_files=base)

    return make


# --------------------------------------------------------------------------- gateway


@dataclass
class ScriptedGateway:
    """A served gateway with a scripted upstream; ``requests()`` reads what the runner sent."""

    gateway: ModelGateway
    socket: Path
    transcript: Path

    def requests(self) -> list[dict[str, Any]]:
        """The JSON bodies of every /v1/messages request, in order."""
        return [
            entry.request.body
            for entry in read_transcript(self.transcript)
            if entry.request.path == "/v1/messages" and entry.request.body is not None
        ]


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., ScriptedGateway]]:
    """Starts the real gateway on a short Unix socket path with a script of turns."""
    sock_dir = Path(tempfile.mkdtemp(prefix="tbrn-", dir="/tmp"))
    with ExitStack() as stack:
        count = 0

        def start(turns: list[dict[str, Any]], **budget: Any) -> ScriptedGateway:
            nonlocal count
            count += 1
            script = tmp_path / f"script{count}.jsonl"
            script.write_text("".join(json.dumps(t) + "\n" for t in turns), encoding="utf-8")
            limits: dict[str, Any] = {
                "allowed_models": [MODEL],
                "default_model": MODEL,
                "max_tokens_per_request": 4096,
                "max_total_tokens": 1_000_000,
                "max_requests": 100,
                "max_rounds": 3,
            } | budget
            transcript = tmp_path / f"transcript{count}.jsonl"
            gateway = ModelGateway(
                ScriptedUpstream.from_file(script), ModelBudget(**limits), TOKEN, transcript
            )
            thread = stack.enter_context(GatewayThread(gateway, sock_dir / f"gw{count}.sock"))
            return ScriptedGateway(gateway, thread.socket_path, transcript)

        yield start
    shutil.rmtree(sock_dir, ignore_errors=True)
