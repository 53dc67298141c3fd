"""The API over real HTTP with the real Docker executor and the scripted model: submit → events → result → branch."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.runs import make_executor, make_readiness_probes
from controller.settings import PROJECT_ROOT
from tests.conftest import git
from tests.controller.api.conftest import ServedApi, SettingsFactory
from tests.controller.api.test_events import read_events

pytestmark = pytest.mark.docker

EXAMPLES = PROJECT_ROOT / "examples"


@pytest.fixture
def hello_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "hello-api"
    shutil.copytree(EXAMPLES / "hello-api", repo)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "hello-api")
    return repo


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

    audit = client.get(f"/v1/tasks/{task_id}/audit").json()["audit"]
    assert audit["container"]["HostConfig"]["ReadonlyRootfs"] is True
    assert audit["policy"]["digest"].startswith("sha256:")

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
