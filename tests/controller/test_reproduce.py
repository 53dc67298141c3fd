"""``taskbox reproduce``: a recorded run replays to the same commit; a changed base names the turn that diverged."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner

from controller.cli import cli
from controller.reproduce import compare, reproduce
from controller.runs import TaskRunner, new_run_id
from controller.sandbox.engines import open_engine
from controller.settings import PROJECT_ROOT, Settings
from taskbox_wire.contract import Task, TaskResult
from tests.conftest import copy_example_repo, git

if TYPE_CHECKING:
    from pathlib import Path

EXAMPLE_TASK = PROJECT_ROOT / "examples" / "task-greetings.json"
EXAMPLE_SCRIPT = PROJECT_ROOT / "examples" / "greetings.script.jsonl"


def test_compare_names_every_reported_fact_that_differs() -> None:
    """Status, commit, files, test counts and failing checks are compared; equal results give nothing."""
    recorded = TaskResult(task_key="BE-1", status="succeeded", git_commit="a" * 40)
    same = recorded.model_copy()
    other = recorded.model_copy(update={"status": "failed", "git_commit": None})

    assert compare(recorded, same) == []
    assert [d.what for d in compare(recorded, other)] == ["status", "git_commit"]


@pytest.mark.docker
def test_a_recorded_run_reproduces_identically_and_a_changed_base_names_its_turn(
    tmp_path: Path,
) -> None:
    """Same commit id from the record alone; after the base changes, the first diverging turn and exit 1."""
    repo = copy_example_repo(tmp_path / "hello-api")
    settings = Settings(_env_file=None, runs_dir=tmp_path / "runs")  # type: ignore[call-arg]  # pydantic-settings' own keyword
    engine = open_engine(settings)
    runner = TaskRunner(settings, engine.backend, engine.images)
    task = Task.model_validate(json.loads(EXAMPLE_TASK.read_text()))
    run_id = new_run_id(task.task_key)
    original = runner.execute(
        run_id=run_id,
        task=task,
        repo=repo,
        base_ref="HEAD",
        model=f"scripted:{EXAMPLE_SCRIPT}",
    )
    assert original.status == "succeeded", original.reason

    again = reproduce(settings.runs_dir / run_id, runner=runner)

    assert again.identical, again.differences
    assert again.result.git_commit == original.git_commit
    assert again.first_diverging_turn is None

    # The base changes under the contract, which the prompt of the first turn quotes.
    contract = repo / "contracts" / "openapi.json"
    spec = json.loads(contract.read_text())
    spec["info"]["description"] = "changed after the recording"
    contract.write_text(json.dumps(spec, indent=2) + "\n")
    git(repo, "commit", "-q", "-am", "change the contract")

    done = CliRunner().invoke(
        cli,
        [
            "reproduce",
            str(settings.runs_dir / run_id),
            "--base",
            "HEAD",
            "--runs-dir",
            str(settings.runs_dir),
            "--json",
        ],
        catch_exceptions=False,
    )

    assert done.exit_code == 1, done.output
    answer = json.loads(done.output)
    assert answer["identical"] is False
    assert answer["first_diverging_turn"] == 1
    assert "status" in {d["what"] for d in answer["differences"]}
