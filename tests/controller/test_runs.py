"""One task end to end on the real engine with the scripted model: loop, checks, ingestion, replay."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controller.events import RunEvent
from controller.gateway import read_transcript
from controller.runs import RunRecord, TaskRunner, new_run_id
from controller.sandbox.docker import DockerBackend, DockerImages
from controller.settings import PROJECT_ROOT, Settings
from taskbox_wire.contract import Task, TaskResult
from tests.conftest import EXAMPLE_REPO, copy_example_repo, git

pytestmark = pytest.mark.docker

EXAMPLE_TASK = PROJECT_ROOT / "examples" / "task-greetings.json"
EXAMPLE_SCRIPT = PROJECT_ROOT / "examples" / "greetings.script.jsonl"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(runs_dir=tmp_path / "runs")


@pytest.fixture
def runner(settings: Settings) -> TaskRunner:
    return TaskRunner(
        settings, DockerBackend.from_settings(settings), DockerImages.from_settings(settings)
    )


def example_task(**changes: Any) -> Task:
    wire = json.loads(EXAMPLE_TASK.read_text())
    wire.update(changes)
    return Task.model_validate(wire)


def editor(command: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "tool_use",
        "name": "str_replace_based_edit_tool",
        "input": {"command": command, **fields},
    }


def write_script(path: Path, turns: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(turn) + "\n" for turn in turns))
    return path


def run_task(
    runner: TaskRunner, task: Task, repo: Path, model: str, events: list[RunEvent] | None = None
) -> tuple[str, TaskResult]:
    run_id = new_run_id(task.task_key)
    result = runner.execute(
        run_id=run_id,
        task=task,
        repo=repo,
        base_ref="HEAD",
        emit=None if events is None else events.append,
        model=model,
    )
    return run_id, result


def assert_no_container_left(runner: TaskRunner, run_id: str) -> None:
    assert runner.container_ids_for(run_id) == []


def test_scripted_task_runs_end_to_end(
    tmp_path: Path, runner: TaskRunner, settings: Settings
) -> None:
    """The example task succeeds: checked commit on taskbox/BE-101, lists re-derived, repo otherwise untouched."""
    repo = copy_example_repo(tmp_path / "repo")
    head_before = git(repo, "rev-parse", "HEAD").strip()
    events: list[RunEvent] = []
    run_id, result = run_task(runner, example_task(), repo, f"scripted:{EXAMPLE_SCRIPT}", events)

    assert result.status == "succeeded", result.reason
    branch_head = git(repo, "rev-parse", "taskbox/BE-101").strip()
    assert result.git_commit == branch_head
    assert git(repo, "rev-parse", f"{branch_head}^").strip() == head_before
    assert git(repo, "rev-parse", "HEAD").strip() == head_before
    assert git(repo, "status", "--porcelain") == ""
    assert result.files_modified == ["app/main.py"]
    assert set(result.files_created) == {
        "app/api/__init__.py",
        "app/api/greetings.py",
        "app/schemas/__init__.py",
        "app/schemas/greeting.py",
        "tests/test_greetings.py",
    }
    # The .env the sandbox never saw is still in the final tree, unchanged.
    assert git(repo, "show", f"{branch_head}:.env") == (EXAMPLE_REPO / ".env").read_text()
    message = git(repo, "log", "-1", "--format=%s", branch_head).strip()
    assert message.startswith("feat(")
    assert message.endswith("[BE-101]")
    assert result.test_results.failed == 0
    assert result.test_results.passed >= 3
    assert [c.id for c in result.constraints] == list(range(1, 11))
    assert all(c.passed for c in result.constraints)
    assert result.missing_context == [".env — denied by rule '.env*' of policy 'be-python'"]

    stages = [e.stage for e in events]
    assert stages[0] == "admitted"
    assert stages[-1] == "finished"
    assert {"staged", "sandbox_started", "sandbox_exited"} <= set(stages)
    record = RunRecord(settings.runs_dir, run_id)
    for name in (
        "task.json",
        "plan.json",
        "policy.json",
        "container.json",
        "run.json",
        "result.json",
    ):
        assert (record.dir / name).is_file(), name
    assert len(read_transcript(record.dir / "transcript.jsonl")) == 5
    assert not record.stage.exists()
    assert_no_container_left(runner, run_id)


def test_replay_of_a_recorded_run_gives_the_same_commit(
    tmp_path: Path, runner: TaskRunner, settings: Settings
) -> None:
    """Replaying a run's recording against the same base commit writes the very same commit."""
    first = copy_example_repo(tmp_path / "first")
    run_id, original = run_task(runner, example_task(), first, f"scripted:{EXAMPLE_SCRIPT}")
    assert original.status == "succeeded", original.reason

    second = tmp_path / "second"
    git(tmp_path, "clone", "-q", "--no-local", str(first), str(second))
    git(second, "update-ref", "-d", "refs/remotes/origin/taskbox/BE-101")
    replay_dir = settings.runs_dir / run_id
    _, replayed = run_task(runner, example_task(), second, f"replay:{replay_dir}")
    assert replayed.status == "succeeded", replayed.reason
    assert replayed.git_commit == original.git_commit


def test_a_script_that_runs_out_of_turns_fails_clearly(tmp_path: Path, runner: TaskRunner) -> None:
    """A model script shorter than the run needs ends the task as failed, saying so."""
    repo = copy_example_repo(tmp_path / "repo")
    script = write_script(
        tmp_path / "short.jsonl",
        [{"content": [editor("view", path="contracts/openapi.json")], "stop_reason": "tool_use"}],
    )
    run_id, result = run_task(runner, example_task(), repo, f"scripted:{script}")
    assert result.status == "failed"
    assert result.reason is not None
    assert "1 turn" in result.reason
    assert git(repo, "branch", "--list", "taskbox/*") == ""
    assert_no_container_left(runner, run_id)


ROUTE_WRONG_PATH = '''"""Greetings."""

from fastapi import APIRouter, status

from app.schemas.greeting import Greeting, GreetingRequest

router = APIRouter()


@router.post("/greeting", status_code=status.HTTP_201_CREATED)
async def create_greeting(body: GreetingRequest) -> Greeting:
    return Greeting(message=f"Hello, {body.name}!")
'''

SCHEMA = '''"""Bodies."""

from pydantic import BaseModel, Field


class GreetingRequest(BaseModel):
    name: str = Field(..., min_length=1, max_length=100)


class Greeting(BaseModel):
    message: str
'''


def greeting_tests(path: str) -> str:
    return f"""from fastapi.testclient import TestClient

from app.main import app

client = TestClient(app)


def test_create() -> None:
    response = client.post("{path}", json={{"name": "Ada"}})
    assert response.status_code == 201
    assert response.json() == {{"message": "Hello, Ada!"}}


def test_invalid() -> None:
    assert client.post("{path}", json={{"name": ""}}).status_code == 422
"""


MAIN_EDITS = [
    editor(
        "str_replace",
        path="app/main.py",
        old_str="from fastapi import FastAPI\n",
        new_str="from fastapi import FastAPI\n\nfrom app.api.greetings import router\n",
    ),
    editor(
        "str_replace",
        path="app/main.py",
        old_str='app = FastAPI(title="hello-api")\n',
        new_str='app = FastAPI(title="hello-api")\napp.include_router(router)\n',
    ),
]


def test_model_breaking_the_contract_gets_the_report_and_fixes_it(
    tmp_path: Path, runner: TaskRunner, settings: Settings
) -> None:
    """Constraint 6: a route missing from the contract fails the checks; the report goes back; the fix succeeds."""
    repo = copy_example_repo(tmp_path / "repo")
    script = write_script(
        tmp_path / "contract.jsonl",
        [
            {
                "content": [
                    editor("create", path="app/schemas/__init__.py", file_text=""),
                    editor("create", path="app/schemas/greeting.py", file_text=SCHEMA),
                    editor("create", path="app/api/__init__.py", file_text=""),
                    editor("create", path="app/api/greetings.py", file_text=ROUTE_WRONG_PATH),
                    editor(
                        "create",
                        path="tests/test_greetings.py",
                        file_text=greeting_tests("/greeting"),
                    ),
                    *MAIN_EDITS,
                ],
                "stop_reason": "tool_use",
            },
            {"content": [{"type": "text", "text": "Done."}], "stop_reason": "end_turn"},
            {
                "content": [
                    editor(
                        "str_replace",
                        path="app/api/greetings.py",
                        old_str='"/greeting"',
                        new_str='"/greetings"',
                    ),
                    editor(
                        "create",
                        path="tests/test_greetings.py",
                        file_text=greeting_tests("/greetings"),
                    ),
                ],
                "stop_reason": "tool_use",
            },
            {"content": [{"type": "text", "text": "Fixed the path."}], "stop_reason": "end_turn"},
        ],
    )
    run_id, result = run_task(runner, example_task(), repo, f"scripted:{script}")
    assert result.status == "succeeded", result.reason
    contract = next(c for c in result.constraints if c.id == 6)
    assert contract.passed
    assert result.rounds == 2

    transcript = read_transcript(RunRecord(settings.runs_dir, run_id).dir / "transcript.jsonl")
    # The request after the first end_turn carries the checks' report naming the contract problem.
    feedback_request = json.dumps(transcript[2].request.body)
    assert "/greetings" in feedback_request
    assert "ontract" in feedback_request
    assert git(repo, "show", "taskbox/BE-101:app/api/greetings.py").count('"/greetings"') == 1


SKIP_ALL_CONFTEST = """import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.skip(reason="not today"))
"""


def test_a_conftest_that_skips_every_test_does_not_report_success(
    tmp_path: Path, runner: TaskRunner
) -> None:
    """Constraint 5: a model-written conftest.py that skips everything cannot pass the checks."""
    repo = copy_example_repo(tmp_path / "repo")
    task = example_task(ownsPaths=["app/api/", "app/schemas/", "app/main.py", "tests/"])
    turn = {
        "content": [
            editor("create", path="app/schemas/__init__.py", file_text=""),
            editor("create", path="app/schemas/greeting.py", file_text=SCHEMA),
            editor("create", path="app/api/__init__.py", file_text=""),
            editor(
                "create",
                path="app/api/greetings.py",
                file_text=ROUTE_WRONG_PATH.replace('"/greeting"', '"/greetings"'),
            ),
            editor(
                "create", path="tests/test_greetings.py", file_text=greeting_tests("/greetings")
            ),
            editor("create", path="tests/conftest.py", file_text=SKIP_ALL_CONFTEST),
            *MAIN_EDITS,
        ],
        "stop_reason": "tool_use",
    }
    done = {"content": [{"type": "text", "text": "Done."}], "stop_reason": "end_turn"}
    script = write_script(tmp_path / "skip.jsonl", [turn] + [done] * 8)
    run_id, result = run_task(runner, task, repo, f"scripted:{script}")
    assert result.status != "succeeded"
    tests_pass = next(c for c in result.constraints if c.id == 5)
    assert not tests_pass.passed
    assert any("conftest.py" in e or "skip" in e for e in tests_pass.evidence)
    assert git(repo, "branch", "--list", "taskbox/*") == ""
    assert_no_container_left(runner, run_id)


def test_a_failing_test_goes_back_to_the_model_and_the_second_round_passes(
    tmp_path: Path, runner: TaskRunner, settings: Settings
) -> None:
    """Round one ends with a failing test; the model sees pytest's report, fixes it, and round two passes."""
    repo = copy_example_repo(tmp_path / "repo")
    route = ROUTE_WRONG_PATH.replace('"/greeting"', '"/greetings"')
    wrong_test = greeting_tests("/greetings").replace("Hello, Ada!", "Hi, Ada!")
    script = write_script(
        tmp_path / "tests.jsonl",
        [
            {
                "content": [
                    editor("create", path="app/schemas/__init__.py", file_text=""),
                    editor("create", path="app/schemas/greeting.py", file_text=SCHEMA),
                    editor("create", path="app/api/__init__.py", file_text=""),
                    editor("create", path="app/api/greetings.py", file_text=route),
                    editor("create", path="tests/test_greetings.py", file_text=wrong_test),
                    *MAIN_EDITS,
                ],
                "stop_reason": "tool_use",
            },
            {"content": [{"type": "text", "text": "Done."}], "stop_reason": "end_turn"},
            {
                "content": [
                    editor(
                        "str_replace",
                        path="tests/test_greetings.py",
                        old_str="Hi, Ada!",
                        new_str="Hello, Ada!",
                    )
                ],
                "stop_reason": "tool_use",
            },
            {
                "content": [{"type": "text", "text": "Fixed the expectation."}],
                "stop_reason": "end_turn",
            },
        ],
    )
    run_id, result = run_task(runner, example_task(), repo, f"scripted:{script}")
    assert result.status == "succeeded", result.reason
    assert result.rounds == 2
    assert result.test_results.failed == 0
    transcript = read_transcript(RunRecord(settings.runs_dir, run_id).dir / "transcript.jsonl")
    feedback = json.dumps(transcript[2].request.body)
    assert "test_create" in feedback
    assert "Hi, Ada!" in feedback or "failed" in feedback
