"""`taskbox run`: the exit status says what happened (0 succeeded, 1 did not, 2 bad input, 3 infrastructure)."""

from __future__ import annotations

import json
import re
import shutil
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from controller.cli import cli
from controller.settings import PROJECT_ROOT
from tests.conftest import copy_example_repo, git

EXAMPLES = PROJECT_ROOT / "examples"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return copy_example_repo(tmp_path / "hello-api")


def invoke(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli,
        ["run", *args, "--runs-dir", str(tmp_path / "runs")],
        env=env,
        catch_exceptions=False,
    )
    return result.exit_code, result.output


def test_invalid_task_exits_2(tmp_path: Path, repo: Path) -> None:
    """A task file that is not a valid task is refused with exit status 2 and the reason."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"taskKey": "X-1"}))
    code, output = invoke(tmp_path, str(bad), "--repo", str(repo))
    assert code == 2
    assert "ownsPaths: Field required" in output
    assert not (tmp_path / "runs").exists()


def test_unknown_repository_and_ref_exit_2(tmp_path: Path, repo: Path) -> None:
    """A folder that is not a repository, or a ref that names no commit, is bad input: exit 2."""
    code, output = invoke(tmp_path, str(EXAMPLES / "task-greetings.json"), "--repo", str(tmp_path))
    assert code == 2
    assert "not a git repository" in output
    code, output = invoke(
        tmp_path, str(EXAMPLES / "task-greetings.json"), "--repo", str(repo), "--base", "nope"
    )
    assert code == 2
    assert "does not name a commit" in output


def test_task_asking_too_much_exits_2(tmp_path: Path, repo: Path) -> None:
    """A task asking for more than its policy's maximum is refused before anything starts."""
    task = json.loads((EXAMPLES / "task-greetings.json").read_text())
    task["resources"] = {"memoryMb": 10**6}
    path = tmp_path / "greedy.json"
    path.write_text(json.dumps(task))
    code, output = invoke(tmp_path, str(path), "--repo", str(repo))
    assert code == 2
    assert "asks for more than policy" in output


@pytest.mark.docker
def test_missing_image_exits_3(tmp_path: Path, repo: Path) -> None:
    """A policy naming an image that is not built is an infrastructure failure: exit 3."""
    policies = tmp_path / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", policies)
    worker = yaml.safe_load((policies / "be-python.yaml").read_text())
    worker["image"] = "taskbox-sandbox:never-built"
    (policies / "be-python.yaml").write_text(yaml.safe_dump(worker))
    code, output = invoke(
        tmp_path,
        str(EXAMPLES / "task-greetings.json"),
        "--repo",
        str(repo),
        "--model",
        f"scripted:{EXAMPLES / 'greetings.script.jsonl'}",
        env={"TASKBOX_POLICIES_DIR": str(policies)},
    )
    assert code == 3
    assert "taskbox image build" in output


@pytest.mark.docker
def test_succeeded_exits_0_and_failed_exits_1(tmp_path: Path, repo: Path) -> None:
    """The scripted example succeeds (0, result JSON on stdout); a model that stops early fails (1)."""
    task = str(EXAMPLES / "task-greetings.json")
    code, output = invoke(
        tmp_path,
        task,
        "--repo",
        str(repo),
        "--json",
        "--model",
        f"scripted:{EXAMPLES / 'greetings.script.jsonl'}",
    )
    assert code == 0, output
    assert json.loads(output)["status"] == "succeeded"

    lazy = tmp_path / "lazy.jsonl"
    lazy.write_text(json.dumps({"content": [{"type": "text", "text": "Nothing to do."}]}) + "\n")
    git(repo, "branch", "-D", "taskbox/BE-101")
    code, output = invoke(
        tmp_path, task, "--repo", str(repo), "--json", "--model", f"scripted:{lazy}"
    )
    assert code == 1
    assert json.loads(output)["status"] == "failed"


@pytest.mark.docker
def test_human_report_of_a_real_run(tmp_path: Path, repo: Path) -> None:
    """Without --json a real run shows timed stages and ends with the report; every recorded event has its time."""
    code, output = invoke(
        tmp_path,
        str(EXAMPLES / "task-greetings.json"),
        "--repo",
        str(repo),
        "--model",
        f"scripted:{EXAMPLES / 'greetings.script.jsonl'}",
        env={"COLUMNS": "200"},
    )
    assert code == 0, output
    lines = output.splitlines()
    assert any(
        re.fullmatch(r"\[\s+\d+\.\ds\]\s+admitted  task BE-101 admitted .*", ln) for ln in lines
    )
    assert "status    succeeded  task BE-101" in output
    (record,) = (tmp_path / "runs").glob("BE-101-*/record")
    result = json.loads((record / "result.json").read_text())
    assert f"branch    taskbox/BE-101 at {result['git_commit']}" in output
    assert "10 of 10 checks pass" in output
    assert f"record    {record}" in output
    assert '"test_results"' not in output
    events = [json.loads(line) for line in (record / "events.jsonl").read_text().splitlines()]
    times = [datetime.fromisoformat(event["at"]) for event in events]
    assert all(t.tzinfo is not None for t in times)
    assert times == sorted(times)
    assert events[-1]["stage"] == "finished"
