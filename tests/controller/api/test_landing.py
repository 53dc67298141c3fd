"""`taskbox serve` killed at the instant a run moves its branch: recovery knows its own landed commit.

The fake executor's LAND tasks do what a run does at its ref update, with real
git on the real repository: write ``record/landing.json`` under the settings'
runs folder, move ``taskbox/<key>``, and SIGKILL the server process from inside
the worker (a crash between the ref update and recording success).
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2

from tests.conftest import git
from tests.controller.api.conftest import ServedProcess, task_body
from tests.controller.api.fake_executor import FakeExecutor, wait_for


def branch_of(repo: Path, key: str) -> str | None:
    """The commit of taskbox/<key>, or None."""
    done = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"refs/heads/taskbox/{key}"],
        capture_output=True,
        check=False,
    )
    return done.stdout.decode().strip() if done.returncode == 0 else None


def submit_until_crash(server: ServedProcess, key: str) -> str:
    """Submit a LAND task and wait for the server to die at its ref update; the task id."""
    with server.client() as client:
        response = client.post("/v1/tasks", json=task_body(key), headers={"Idempotency-Key": key})
        assert response.status_code == 202, response.text
        task_id = str(response.json()["id"])
    wait_for(lambda: server.process.poll() is not None, timeout=30, what="the crash")
    assert server.process.returncode == -signal.SIGKILL
    return task_id


def view(client: httpx2.Client, task_id: str) -> dict[str, Any]:
    """The task's view."""
    answer: dict[str, Any] = client.get(f"/v1/tasks/{task_id}").json()
    return answer


def test_a_crash_right_after_the_branch_is_written_finishes_succeeded(
    serve_process: Callable[..., ServedProcess],
    fake: FakeExecutor,
    repos: dict[str, Path],
    tmp_path: Path,
) -> None:
    """Killed between the ref update and recording success: after a restart the task is succeeded
    with the landed commit, nothing runs again, and the run's container and staging are removed."""
    task_id = submit_until_crash(serve_process(), "LAND-1")
    landed = branch_of(repos["alpha"], "LAND-1")
    assert landed is not None, "the fake did not move the branch before the kill"
    [call] = fake.calls()
    intent = json.loads(
        (tmp_path / "runs" / call["run_id"] / "record" / "landing.json").read_text()
    )
    assert intent["commit"] == landed
    assert fake.containers() == [call["run_id"]]  # the kill left the run's "container"

    server = serve_process()
    with server.client() as client:
        done = view(client, task_id)
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 1
        result = client.get(f"/v1/tasks/{task_id}/result").json()
        assert result["status"] == "succeeded"
        assert result["git_commit"] == landed
        assert result["files_created"] == ["app/landed.py"]
        events = client.get(f"/v1/tasks/{task_id}/events").text
        assert events.count("event: finished") == 1
        assert "event: requeued" not in events
    assert len(fake.calls()) == 1  # recovery did not run the task again
    recorded = tmp_path / "runs" / call["run_id"] / "record" / "result.json"
    assert json.loads(recorded.read_text())["git_commit"] == landed  # the record is complete
    meta = json.loads(recorded.with_name("run.json").read_text())
    assert meta["status"] == "succeeded"
    assert meta["finished_at"] is not None
    assert fake.containers() == []
    assert fake.stagings() == []
    assert branch_of(repos["alpha"], "LAND-1") == landed
    # The same key can no longer be submitted: its branch exists.
    with server.client() as client:
        again = client.post("/v1/tasks", json=task_body("LAND-1"), headers={"Idempotency-Key": "x"})
    assert again.status_code == 409


def test_a_crash_before_the_ref_update_runs_the_task_again(
    serve_process: Callable[..., ServedProcess], fake: FakeExecutor, repos: dict[str, Path]
) -> None:
    """Killed after the landing intent but before the ref update: the branch is absent, so the task runs again."""
    task_id = submit_until_crash(serve_process(), "LANDPRE-2")
    assert branch_of(repos["alpha"], "LANDPRE-2") is None
    server = serve_process()
    with server.client() as client:
        wait_for(lambda: view(client, task_id)["status"] == "succeeded", what="the rerun")
        assert view(client, task_id)["attempts"] == 2
        events = client.get(f"/v1/tasks/{task_id}/events").text
        assert "controller_restart" in events
    assert [c["task_key"] for c in fake.calls()] == ["LANDPRE-2", "LANDPRE-2"]


def test_a_branch_moved_by_someone_else_fails_the_task_with_a_reason(
    serve_process: Callable[..., ServedProcess], fake: FakeExecutor, repos: dict[str, Path]
) -> None:
    """Killed after landing, then the branch is moved elsewhere: recovery fails the task, says why, reruns nothing."""
    task_id = submit_until_crash(serve_process(), "LAND-3")
    landed = branch_of(repos["alpha"], "LAND-3")
    assert landed is not None
    git(repos["alpha"], "update-ref", "refs/heads/taskbox/LAND-3", "main")
    server = serve_process()
    with server.client() as client:
        done = view(client, task_id)
        assert done["status"] == "failed"
        assert "now holds another commit" in done["reason"]
        assert landed[:12] in done["reason"]
    assert len(fake.calls()) == 1
