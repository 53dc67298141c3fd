"""The whole runner on the host: run.json in, the real gateway and git, result.json and a bundle out."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from taskbox_runner.__main__ import EXIT_NO_RESULT, SecretRedactor, main
from taskbox_runner.checks import CheckRequest
from taskbox_runner.scratch_git import BUNDLE_REF

from taskbox_wire.contract import parse_untrusted_result
from tests.conftest import GIT_ENV
from tests.runner.conftest import (
    TOKEN,
    FakeReport,
    FakeVerifier,
    ScriptedGateway,
    Workspace,
    verifier_needing,
)

USERS = "app/api/routes/users.py"
TEST_FILE = "tests/test_users.py"
ROOT = Path(__file__).resolve().parents[2]

SCRIPT: list[dict[str, Any]] = [
    {
        "content": [
            {"type": "text", "text": "I will read the contract first."},
            {
                "type": "tool_use",
                "name": "str_replace_based_edit_tool",
                "input": {"command": "view", "path": "openapi.yaml"},
            },
        ]
    },
    {
        "content": [
            {
                "type": "tool_use",
                "name": "str_replace_based_edit_tool",
                "input": {"command": "create", "path": USERS, "file_text": "ROUTE = '/users'\n"},
            },
            {
                "type": "tool_use",
                "name": "str_replace_based_edit_tool",
                "input": {
                    "command": "create",
                    "path": TEST_FILE,
                    "file_text": "def test_route() -> None:\n    assert True\n",
                },
            },
        ]
    },
    {"content": [{"type": "tool_use", "name": "run_checks", "input": {}}]},
    {
        "content": [{"type": "text", "text": "Added GET /users and its test."}],
        "stop_reason": "end_turn",
    },
]


def git_out(git_dir: Path, *args: str) -> str:
    """git against a bare repository, with no user config."""
    done = subprocess.run(
        ["git", "--git-dir", str(git_dir), *args], capture_output=True, env=GIT_ENV, check=True
    )
    return done.stdout.decode()


def write_config(ws: Workspace, gw: ScriptedGateway | None) -> Path:
    """run.json for ``ws`` (the token revealed, as the controller writes it)."""
    path = ws.root / "run.json"
    path.write_text(ws.config(socket=gw.socket if gw else None).dump_for_sandbox())
    return path


def test_end_to_end_scripted_run(
    make_workspace: Callable[..., Workspace],
    start_gateway: Callable[..., ScriptedGateway],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """Create files with the editor, run_checks, end_turn: a succeeded result.json and a bundle the controller can take."""
    ws = make_workspace()
    gw = start_gateway(SCRIPT)
    verifier = verifier_needing(ws.workdir, USERS, "/users")

    code = main(["--config", str(write_config(ws, gw))], verifier=verifier)

    assert code == 0
    result = parse_untrusted_result((ws.outdir / "result.json").read_bytes())
    assert result.status == "succeeded", result.reason
    assert result.files_created == [USERS, TEST_FILE]
    assert result.files_modified == []
    assert result.missing_context == ["app/core/config.py — refused by policy"]
    assert result.test_results.total == 3
    assert len(result.constraints) == 10
    assert "Added GET /users and its test." in result.summary
    assert verifier.requests[0].changed_files == (USERS, TEST_FILE)
    assert verifier.requests[0].base_config_dir.name == "base-config"

    # The bundle as the controller will take it: fresh repo, verify, one ref, base tree = planned blobs.
    bundle = ws.outdir / "result.bundle"
    fresh = tmp_path / "controller.git"
    subprocess.run(["git", "init", "-q", "--bare", str(fresh)], env=GIT_ENV, check=True)
    git_out(fresh, "bundle", "verify", str(bundle))
    assert git_out(fresh, "bundle", "list-heads", str(bundle)).split() == [
        result.git_commit,
        BUNDLE_REF,
    ]
    git_out(fresh, "fetch", "-q", str(bundle), f"{BUNDLE_REF}:{BUNDLE_REF}")
    work, base = git_out(fresh, "rev-list", BUNDLE_REF).split()
    assert work == result.git_commit
    base_tree = {}
    for line in git_out(fresh, "ls-tree", "-r", base).splitlines():
        meta, path = line.split("\t")
        base_tree[path] = meta.split()[2]
    assert base_tree == ws.base_files
    changed = git_out(fresh, "diff", "--name-only", base, work).split()
    assert changed == [USERS, TEST_FILE]
    subject = git_out(fresh, "log", "-1", "--format=%s", work).strip()
    assert subject == "feat(api): Add the users endpoint [BE-123]"

    assert not (ws.workdir / ".git").exists()
    logs = capsys.readouterr().err
    assert "model call 4: stop_reason=end_turn" in logs
    assert TOKEN not in logs


def test_failing_checks_still_deliver_the_work(
    make_workspace: Callable[..., Workspace], start_gateway: Callable[..., ScriptedGateway]
) -> None:
    """When the checks never pass, result.json says failed with the reason, and the commit and bundle are still there."""
    ws = make_workspace()
    gw = start_gateway([*SCRIPT, {"content": [{"type": "text", "text": "I cannot fix ruff."}]}])
    verifier = FakeVerifier(lambda _r: FakeReport(passed=False, text="[FAIL] 9. ruff"))
    config = ws.config(socket=gw.socket)
    budget = config.budget.model_copy(update={"max_rounds": 1})
    (ws.root / "run.json").write_text(
        config.model_copy(update={"budget": budget}).dump_for_sandbox()
    )

    assert main(["--config", str(ws.root / "run.json")], verifier=verifier) == 0

    result = parse_untrusted_result((ws.outdir / "result.json").read_bytes())
    assert result.status == "failed"
    assert result.reason is not None
    assert result.reason.startswith("the checks still fail after 2 rounds")
    assert "I cannot fix ruff." in result.summary
    assert result.git_commit is not None
    assert (ws.outdir / "result.bundle").is_file()


def test_sigterm_writes_a_failed_result(
    make_workspace: Callable[..., Workspace], start_gateway: Callable[..., ScriptedGateway]
) -> None:
    """SIGTERM in the middle of the loop still leaves a failed result.json naming the signal."""

    def judge(_request: CheckRequest) -> FakeReport:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        return FakeReport(passed=True)

    ws = make_workspace()
    gw = start_gateway(SCRIPT)
    previous = signal.getsignal(signal.SIGTERM)

    assert main(["--config", str(write_config(ws, gw))], verifier=FakeVerifier(judge)) == 0

    assert signal.getsignal(signal.SIGTERM) == previous
    result = parse_untrusted_result((ws.outdir / "result.json").read_bytes())
    assert result.status == "failed"
    assert result.reason == "runner error: RunInterruptedError: stopped by signal SIGTERM"
    assert not (ws.outdir / "result.bundle").exists()


def test_redactor_masks_the_token() -> None:
    """A log line that would carry the token is rewritten before any handler prints it."""
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "token is %s", (TOKEN,), None)
    assert SecretRedactor(TOKEN).filter(record)
    assert record.getMessage() == "token is [redacted]"


def run_module(
    config: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m taskbox_runner --config config`` in a child process, as the sandbox runs it."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}:{ROOT / 'sandbox-image/runner'}",
        "PYTHONDONTWRITEBYTECODE": "1",
        **(extra_env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "taskbox_runner", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_invalid_config_still_writes_a_failed_result(
    make_workspace: Callable[..., Workspace],
) -> None:
    """A run.json that does not validate gives exit 0 and a failed result naming the problem, without the token."""
    ws = make_workspace()
    data = json.loads(ws.config().dump_for_sandbox())
    del data["budget"]
    path = ws.root / "run.json"
    path.write_text(json.dumps(data))

    done = run_module(path)

    assert done.returncode == 0, done.stderr
    result = parse_untrusted_result((ws.outdir / "result.json").read_bytes())
    assert result.status == "failed"
    assert result.task_key == "BE-123"
    assert result.reason is not None
    assert "budget: Field required" in result.reason
    assert TOKEN not in done.stderr
    assert TOKEN not in (ws.outdir / "result.json").read_text()


def test_unusable_config_exits_non_zero(tmp_path: Path) -> None:
    """When not even the task key can be read, nothing can be reported: exit code 2."""
    path = tmp_path / "run.json"
    path.write_text("not json")
    done = run_module(path)
    assert done.returncode == EXIT_NO_RESULT
    assert "not a valid RunConfig" in done.stderr


# --------------------------------------------------------------------------- with the real verifier

USERS_ROUTE = '''"""The users routes."""

import logging

from fastapi import APIRouter
from pydantic import BaseModel

logger = logging.getLogger(__name__)
router = APIRouter()


class User(BaseModel):
    """A user as the API shows it."""

    id: int
    name: str


USERS = [User(id=1, name="Alice")]


@router.get("/users", response_model=list[User])
async def list_users() -> list[User]:
    """All users."""
    logger.info("listing %d users", len(USERS))
    return USERS
'''

USERS_TEST = '''"""Tests of the users routes."""

import asyncio

from app.api.routes.users import list_users


def test_list_users() -> None:
    """The list holds Alice."""
    users = asyncio.run(list_users())
    assert users[0].name == "Alice"
'''

APP_MAIN = '''"""The application."""

from fastapi import FastAPI

from app.api.routes.users import router

app = FastAPI(title="demo", version="0.1.0")
app.include_router(router)
'''

DEMO_BASE = {
    "pyproject.toml": '[project]\nname = "demo"\nversion = "0.1.0"\ndependencies = ["fastapi"]\n',
    "app/__init__.py": "",
    "app/main.py": APP_MAIN,
    "app/api/__init__.py": "",
    "app/api/routes/__init__.py": "",
    "tests/__init__.py": "",
}


def openapi_of(files: dict[str, str], folder: Path) -> str:
    """The OpenAPI JSON the finished app serves (the contract the scripted model then meets)."""
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    code = "import json; from app.main import app; print(json.dumps(app.openapi(), indent=2))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, check=True
    )
    return done.stdout


def test_runner_process_with_the_real_verifier(
    make_workspace: Callable[..., Workspace],
    start_gateway: Callable[..., ScriptedGateway],
    tmp_path: Path,
) -> None:
    """``python -m taskbox_runner`` with taskbox_runner.verify: ten passing constraints, a commit, a bundle."""
    files = dict(DEMO_BASE)
    files["openapi.json"] = openapi_of({**DEMO_BASE, USERS: USERS_ROUTE}, tmp_path / "contract")
    ws = make_workspace(files, placeholders=(USERS, TEST_FILE))
    editor = "str_replace_based_edit_tool"
    gw = start_gateway(
        [
            {
                "content": [
                    {
                        "type": "tool_use",
                        "name": editor,
                        "input": {"command": "view", "path": "openapi.json"},
                    }
                ]
            },
            {
                "content": [
                    {
                        "type": "tool_use",
                        "name": editor,
                        "input": {"command": "create", "path": USERS, "file_text": USERS_ROUTE},
                    },
                    {
                        "type": "tool_use",
                        "name": editor,
                        "input": {"command": "create", "path": TEST_FILE, "file_text": USERS_TEST},
                    },
                ]
            },
            {"content": [{"type": "tool_use", "name": "run_checks", "input": {}}]},
            {
                "content": [{"type": "text", "text": "Added GET /users with a test."}],
                "stop_reason": "end_turn",
            },
        ]
    )
    config = ws.config(
        socket=gw.socket,
        owns_paths=[USERS, TEST_FILE],
        readable_paths=sorted(files),
        openapi_path="openapi.json",
        missing_context=[],
    )
    path = ws.root / "run.json"
    path.write_text(config.dump_for_sandbox())

    done = run_module(
        path,
        extra_env={
            "PYTHONPYCACHEPREFIX": str(tmp_path / "pycache"),
            "COVERAGE_FILE": str(tmp_path / ".coverage"),
        },
    )

    assert done.returncode == 0, done.stderr[-3000:]
    result = parse_untrusted_result((ws.outdir / "result.json").read_bytes())
    assert result.status == "succeeded", (result.reason, result.constraints)
    assert [c.id for c in result.constraints] == list(range(1, 11))
    assert all(c.passed for c in result.constraints)
    assert result.test_results.passed == 1
    assert result.files_created == [USERS, TEST_FILE]
    assert (ws.outdir / "result.bundle").is_file()
    assert TOKEN not in done.stderr
    # The model SDK came from the import started at the entry point, joined before the first call.
    assert "model SDK ready (waited" in done.stderr


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """``python -c code`` with the runner on the path, as a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'sandbox-image/runner'}"}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_importing_the_runner_and_the_judge_loads_no_model_sdk() -> None:
    """The runner's modules and the judge import neither the SDK nor its transport: the SDK's import stays off the boot path."""
    code = (
        "import sys\n"
        "import taskbox_runner.__main__, taskbox_runner.run, taskbox_runner.loop, taskbox_runner.judge\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('anthropic', 'httpx2')))\n"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"


def test_preload_imports_the_sdk_on_a_thread_and_make_client_joins_it(tmp_path: Path) -> None:
    """preload() imports the SDK off the main thread; make_client waits for it and builds the client."""
    code = (
        "import sys, threading\n"
        "from pydantic import SecretStr\n"
        "from taskbox_runner import model_sdk\n"
        "from taskbox_runner.loop import make_client\n"
        "importer = []\n"
        "class Spy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'anthropic':\n"
        "            importer.append(threading.current_thread().name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Spy())\n"
        "model_sdk.preload()\n"
        "model_sdk.preload()\n"
        "class Config:\n"
        f"    gateway_socket = {str(tmp_path / 'gw.sock')!r}\n"
        "    gateway_token = SecretStr('t')\n"
        "    gateway_url = None\n"
        "client = make_client(Config())\n"
        "print(type(client).__name__, importer)\n"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["Anthropic", "['taskbox-sdk-import']"]
