"""The API over real HTTP with the real Docker executor and the scripted model: submit → events → result → branch."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from controller.runs import make_executor, make_readiness_probes
from controller.settings import PROJECT_ROOT
from tests.conftest import copy_example_repo, git
from tests.controller.api.conftest import ServedApi, ServedProcess, SettingsFactory
from tests.controller.api.fake_executor import wait_for
from tests.controller.api.test_events import read_events

pytestmark = pytest.mark.docker

EXAMPLES = PROJECT_ROOT / "examples"


@pytest.fixture
def hello_repo(tmp_path: Path) -> Path:
    return copy_example_repo(tmp_path / "hello-api")


@pytest.fixture
def docker_api(
    serve_api: Callable[..., ServedApi], make_settings: SettingsFactory, hello_repo: Path
) -> ServedApi:
    settings = make_settings(
        repositories={"hello": hello_repo},
        model_upstream=f"scripted:{EXAMPLES / 'greetings.script.jsonl'}",
    )
    return serve_api(
        settings=settings,
        executor=make_executor(settings),
        probes=make_readiness_probes(settings),
    )


def submission() -> dict[str, Any]:
    return {
        "task": json.loads((EXAMPLES / "task-greetings.json").read_text()),
        "repository": "hello",
        "baseRef": "main",
    }


def test_submit_follow_events_read_result_and_find_the_branch(
    docker_api: ServedApi, hello_repo: Path, tmp_path: Path
) -> None:
    """A task submitted over HTTP runs in a real sandbox; its events stream, its result is checked, its branch exists."""
    client = docker_api.client()
    assert client.get("/readyz").status_code == 200
    reply = client.post("/v1/tasks", json=submission(), headers={"Idempotency-Key": "e2e-1"})
    assert reply.status_code == 202, reply.text
    task_id = reply.json()["id"]

    with client.stream("GET", f"/v1/tasks/{task_id}/events", timeout=300) as response:
        events = read_events(response)
    stages = [e.event for e in events]
    assert "sandbox_started" in stages
    assert "checks" in stages  # progress reported from inside the sandbox
    assert stages[-1] == "finished"

    result = client.get(f"/v1/tasks/{task_id}/result")
    assert result.status_code == 200, result.text
    body = result.json()
    assert body["status"] == "succeeded", body.get("reason")
    assert body["git_commit"] == git(hello_repo, "rev-parse", "taskbox/BE-101").strip()

    audit_answer = client.get(f"/v1/tasks/{task_id}/audit")
    audit = audit_answer.json()["audit"]
    assert audit["run_id"] == client.get(f"/v1/tasks/{task_id}").json()["runId"]
    assert audit["container"]["HostConfig"]["ReadonlyRootfs"] is True
    assert audit["policy"]["digest"].startswith("sha256:")
    # No host path (runs folder, repository, engine data root) reaches the caller.
    for host in (str(tmp_path), str(hello_repo), "/var/lib/docker"):
        assert host not in audit_answer.text, host

    metrics = client.get("/metrics").text
    assert 'taskbox_model_tokens_total{kind="output"}' in metrics


def test_the_same_key_twice_starts_one_container(
    docker_api: ServedApi, make_settings: SettingsFactory
) -> None:
    """Submitting one task twice with one Idempotency-Key gives one task and one run."""
    client = docker_api.client()
    first = client.post("/v1/tasks", json=submission(), headers={"Idempotency-Key": "same"})
    second = client.post("/v1/tasks", json=submission(), headers={"Idempotency-Key": "same"})
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    task_id = first.json()["id"]
    with client.stream("GET", f"/v1/tasks/{task_id}/events", timeout=300) as response:
        events = read_events(response)
    assert [e.event for e in events].count("sandbox_started") == 1
    runs_dir = make_settings().runs_dir
    assert len([p for p in runs_dir.iterdir() if p.is_dir()]) == 1


def running_containers(run_ids: list[str]) -> list[str]:
    """Run ids that still have a Taskbox container on the engine."""
    labels = {
        container.labels.get("org.taskbox.run", "")
        for container in docker.from_env().containers.list(
            all=True, filters={"label": "org.taskbox.managed=1"}
        )
    }
    return sorted(r for r in run_ids if r in labels)


def test_kill_9_with_real_sandboxes_leaves_no_container_and_loses_no_task(
    serve_process: Callable[..., ServedProcess], hello_repo: Path
) -> None:
    """SIGKILL of `taskbox serve` while two real sandboxes run and one task waits: the restart
    removes both containers, re-queues both tasks in order, and all three finish with their branches."""
    env = {
        "TASKBOX_EXECUTOR_MODULE": "controller.runs",
        "TASKBOX_REPOSITORIES": f"hello={hello_repo}",
        "TASKBOX_MODEL_UPSTREAM": f"scripted:{EXAMPLES / 'greetings.script.jsonl'}",
    }
    server = serve_process(TASKBOX_MAX_CONCURRENT_TASKS="2", **env)
    client = server.client()
    keys = ("BE-201", "BE-202", "BE-203")
    ids = []
    for key in keys:
        body = submission()
        body["task"]["taskKey"] = key
        body["task"]["contextJson"] = {
            name.replace("BE-101", key): value
            for name, value in body["task"]["contextJson"].items()
        }
        reply = client.post("/v1/tasks", json=body, headers={"Idempotency-Key": key})
        assert reply.status_code == 202, reply.text
        ids.append(reply.json()["id"])

    def view(task_id: str) -> dict[str, Any]:
        return dict(client.get(f"/v1/tasks/{task_id}").json())

    def two_sandboxes_up() -> bool:
        runs = [view(t).get("runId") for t in ids[:2]]
        return all(runs) and running_containers([str(r) for r in runs]) == sorted(map(str, runs))

    wait_for(two_sandboxes_up, timeout=120, what="two sandboxes to be running")
    first_runs = sorted(str(view(t)["runId"]) for t in ids[:2])
    assert view(ids[2])["status"] == "queued"
    client.close()
    server.kill()
    assert running_containers(first_runs) == first_runs  # the crash left them behind

    server = serve_process(TASKBOX_MAX_CONCURRENT_TASKS="1", **env)
    client = server.client()
    wait_for(
        lambda: running_containers(first_runs) == [], timeout=60, what="recovery to remove them"
    )
    wait_for(
        lambda: [view(t)["status"] for t in ids] == ["succeeded"] * 3,
        timeout=300,
        what="all three tasks to finish",
    )
    assert [view(t)["attempts"] for t in ids] == [2, 2, 1]
    for key in keys:
        assert git(hello_repo, "rev-parse", "--verify", f"taskbox/{key}").strip()
    all_runs = [str(view(t)["runId"]) for t in ids]
    assert running_containers([*first_runs, *all_runs]) == []
    client.close()
