"""One admission for every caller: the plan and the image the security team audits are the ones that run."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner

from controller.admission import admit, plan_admission
from controller.cli import cli
from controller.errors import InvalidTaskError
from controller.image import build_repo_image
from controller.runs import TaskRunner, new_run_id
from controller.sandbox.engines import open_engine
from controller.settings import PROJECT_ROOT, Settings
from taskbox_wire.contract import Task
from tests.conftest import copy_example_repo

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import RepoFactory

TASK_FILE = PROJECT_ROOT / "examples" / "task-greetings.json"


def example_task(**changes: Any) -> Task:
    """The example task, with some wire fields replaced."""
    wire = json.loads(TASK_FILE.read_text())
    wire.update(changes)
    return Task.model_validate(wire)


def test_admit_refuses_a_task_whose_owned_path_the_plan_refuses(make_repo: RepoFactory) -> None:
    """An owned path outside the repository refuses the task, with the plan's reason."""
    repo, _ = make_repo({"app/main.py": "x = 1\n"})
    task = example_task(ownsPaths=["../outside.py"])
    with pytest.raises(
        InvalidTaskError, match=r"owned paths refused by the plan: \.\./outside\.py"
    ):
        admit(task, repo=repo, base_ref="HEAD", policies_dir=PROJECT_ROOT / "policies")


def test_plan_admission_shows_a_refused_plan_without_raising(make_repo: RepoFactory) -> None:
    """``policy explain`` needs the refused plan itself, to show why."""
    repo, commit = make_repo({"app/main.py": "x = 1\n"})
    task = example_task(ownsPaths=["../outside.py"])

    admission = plan_admission(
        task, repo=repo, base_ref="HEAD", policies_dir=PROJECT_ROOT / "policies"
    )

    assert admission.base_commit == commit
    assert admission.plan.invalid_reasons
    assert admission.image == admission.policy.image  # no engine asked: the policy's image


def _settings_of_a_spec(container: dict[str, Any]) -> dict[str, Any]:
    """What ``policy explain --json`` promises, from its ``container`` (a ContainerSpec)."""
    return {
        "user": container["user"],
        "read_only_root": container["read_only_root"],
        "network_disabled": container["network_disabled"],
        "cap_drop": sorted(container["cap_drop"]),
        "security_opt": sorted(container["security_opt"]),
        "memory": container["memory_bytes"],
        "nano_cpus": container["nano_cpus"],
        "pids": container["pids_limit"],
        "tmpfs": sorted(t["target"] for t in container["tmpfs"]),
        "mounts": sorted((m["target"], m["read_only"]) for m in container["mounts"]),
        "command": container["command"],
    }


def _settings_of_an_inspect(inspected: dict[str, Any]) -> dict[str, Any]:
    """The same facts, from the engine's inspect of the container a real run created."""
    host = inspected["HostConfig"]
    return {
        "user": inspected["Config"]["User"],
        "read_only_root": host["ReadonlyRootfs"],
        "network_disabled": inspected["Config"].get("NetworkDisabled", False),
        "cap_drop": sorted(host["CapDrop"]),
        "security_opt": sorted(host["SecurityOpt"]),
        "memory": host["Memory"],
        "nano_cpus": host["NanoCpus"],
        "pids": host["PidsLimit"],
        "tmpfs": sorted(host["Tmpfs"]),
        "mounts": sorted((m["Destination"], not m["RW"]) for m in inspected["Mounts"]),
        "command": inspected["Config"]["Cmd"],
    }


@pytest.mark.docker
def test_policy_explain_shows_the_image_and_settings_of_the_container_a_run_gets(
    tmp_path: Path,
) -> None:
    """``policy explain --json`` and a real run of the same task agree (run ids aside), dependency image included."""
    repo = copy_example_repo(tmp_path / "hello-api")
    settings = Settings(_env_file=None, runs_dir=tmp_path / "runs", keep_staging=False)  # type: ignore[call-arg]  # pydantic-settings' own keyword
    engine = open_engine(settings)
    built, _deps = build_repo_image(
        engine.images,
        repo,
        admit(
            example_task(), repo=repo, base_ref="HEAD", policies_dir=settings.policies_dir
        ).base_commit,
    )
    assert built is not None, "the example repository declares dependencies"

    explained = CliRunner().invoke(
        cli,
        ["policy", "explain", str(TASK_FILE), "--repo", str(repo), "--json"],
        env={"TASKBOX_RUNS_DIR": str(settings.runs_dir)},
        catch_exceptions=False,
    )
    assert explained.exit_code == 0, explained.output
    shown = json.loads(explained.output)

    run_id = new_run_id("BE-101")
    runner = TaskRunner(
        settings,
        engine.backend,
        engine.images,
        model=f"scripted:{PROJECT_ROOT / 'examples' / 'greetings.script.jsonl'}",
    )
    runner.execute(
        run_id=run_id,
        task=example_task(),
        repo=repo,
        base_ref="HEAD",
        command=["python", "-c", "print('looked')"],
    )
    inspected = json.loads((settings.runs_dir / run_id / "record" / "container.json").read_text())

    assert shown["image"] == built.tag
    assert shown["image_id"] == inspected["Image"] == built.image_id
    expected = _settings_of_a_spec(shown["container"])
    expected["command"] = inspected["Config"]["Cmd"]  # the run replaced the runner's command
    assert expected == _settings_of_an_inspect(inspected)
