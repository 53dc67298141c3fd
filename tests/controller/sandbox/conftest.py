"""Docker fixtures: the engine, the built image (missing = a clear failure), a small test policy.

Every container these tests make carries ``taskbox.test=1``; the session ends with a check that
no container with the project's labels is left on the engine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.errors import SandboxError
from controller.image import SANDBOX_IMAGE
from controller.sandbox.conformance import Scene
from controller.sandbox.docker import DockerBackend, DockerImages
from controller.sandbox.spec import LABEL_MANAGED
from controller.sandbox.task_sandbox import TaskSandboxRun, run_in_task_sandbox
from controller.settings import Settings
from taskbox_wire.contract import Task
from tests.conftest import RepoFactory, git

TEST_LABEL = "taskbox.test"

#: Small limits keep the attacks fast: each container lives a fraction of a second.
TEST_POLICY = {
    "name": "test",
    "description": "Tight limits for the Docker tests.",
    "image": SANDBOX_IMAGE,
    "uid": 10001,
    "gid": 10001,
    "limits": {
        "memory_mb": 128,
        "cpus": 1.0,
        "pids": 64,
        "nofile": 256,
        "file_size_mb": 16,
        "wall_clock_seconds": 20,
        "log_max_mb": 1,
    },
    "max": {"memory_mb": 256, "cpus": 1.0, "pids": 128, "wall_clock_seconds": 60},
    "tmpfs": [{"path": "/tmp", "size_mb": 8}, {"path": "/home/sandbox", "size_mb": 4}],
    "deny": ["*.secret"],
    "model": {
        "allowed_models": ["test-model"],
        "default_model": "test-model",
        "max_tokens_per_request": 100,
        "max_total_tokens": 1000,
        "max_requests": 10,
        "max_rounds": 1,
    },
}

REPO_FILES = {
    "app/__init__.py": "",
    "app/readme.md": "relevant and read-only\n",
    "app/owned/handlers.py": "HANDLERS = {}\n",
    "notes.txt": "owned file\n",
    "secret_plan.txt": "never planned\n",
    "keys.secret": "denied by the policy\n",
    ".env": "API_KEY=never-mounted\n",
}


def commit_repo_files(repo: Path) -> Path:
    """A git repository at ``repo`` whose one commit holds :data:`REPO_FILES` (for module-scoped scenes)."""
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    for rel, text in REPO_FILES.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    return repo


def make_scene(root: Path, policies_dir: Path, host_canary: str) -> Scene:
    """The conformance suite's scene for these tests: the test task on :func:`commit_repo_files`' repository.

    ``host_canary`` is written to the host file the suite checks a sandbox cannot reach.
    """
    host_file = root / "host-result.json"
    host_file.write_text(host_canary)
    return Scene(
        task=make_task(),
        repo=commit_repo_files(root / "repo"),
        policies_dir=policies_dir,
        policy_name="test",
        runs_dir=root / "runs",
        host_file=host_file,
        extra_labels={TEST_LABEL: "1"},
    )


def _leftovers(backend: DockerBackend, since: float) -> list[str]:
    """Test containers in any state, and Taskbox containers made during the session that stopped.

    A running Taskbox container that no test made belongs to someone else using the same
    engine (a benchmark, a demo); in CI nothing else runs, so the check is then exact.
    """
    api = backend.client.api
    tests = api.containers(all=True, filters={"label": [f"{TEST_LABEL}=1"]})
    managed = api.containers(all=True, filters={"label": [f"{LABEL_MANAGED}=1"]})
    stopped = [c for c in managed if c["State"] != "running" and c["Created"] >= since]
    return sorted({c["Names"][0] for c in [*tests, *stopped]})


@pytest.fixture(scope="session")
def docker_backend() -> Iterator[DockerBackend]:
    """A backend on the local engine; at the end of the session, no labelled container may remain."""
    try:
        backend = DockerBackend.from_settings(Settings())
        backend.client.ping()
    except SandboxError as exc:
        pytest.fail(f"no Docker engine answers ({exc}); start one with scripts/ensure-docker")
    if DockerImages(backend.client).image_id(SANDBOX_IMAGE) is None:
        pytest.fail(
            f"the sandbox image {SANDBOX_IMAGE} is missing: build it with `taskbox image build` "
            "(scripts/setup does) before running the Docker tests"
        )
    since = int(time.time()) - 1
    yield backend
    deadline = time.monotonic() + 5  # a run elsewhere may be between its exit and its removal
    while (left := _leftovers(backend, since)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], f"containers left on the engine after the tests: {left}"


@pytest.fixture(scope="session")
def policies_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A policy folder holding only the tight ``test`` policy."""
    folder = tmp_path_factory.mktemp("policies")
    (folder / "test.yaml").write_text(json.dumps(TEST_POLICY))  # JSON is YAML
    return folder


@pytest.fixture
def sandbox_repo(make_repo: RepoFactory) -> Path:
    """A real git repository with planned, unplanned and denied files."""
    repo, _ = make_repo(REPO_FILES)
    return repo


def make_task(**resources: Any) -> Task:
    """The test task: owns app/owned/ and notes.txt, may read app/readme.md (and asks for .env)."""
    return Task.model_validate(
        {
            "taskKey": "SBX-1",
            "description": "Docker test task",
            "ownsPaths": ["app/owned/", "notes.txt"],
            "contextJson": {"SBX-1-ctx": {"relevant_files": ["app/readme.md", ".env"]}},
            **({"resources": resources} if resources else {}),
        }
    )


class SandboxRunner:
    """Runs commands in the test task's sandbox the way ``taskbox sandbox run`` does."""

    def __init__(self, backend: DockerBackend, repo: Path, policies: Path, runs: Path) -> None:
        self.backend = backend
        self.repo = repo
        self.policies = policies
        self.runs = runs

    def __call__(
        self,
        script: str,
        *,
        task: Task | None = None,
        keep: bool = False,
        collect: dict[str, int] | None = None,
        on_log: Callable[[str], None] | None = None,
    ) -> TaskSandboxRun:
        return run_in_task_sandbox(
            task or make_task(),
            repo=self.repo,
            command=["sh", "-c", script],
            backend=self.backend,
            policies_dir=self.policies,
            policy_name="test",
            runs_dir=self.runs,
            keep=keep,
            collect=collect,
            extra_labels={TEST_LABEL: "1"},
            on_log=on_log,
        )


@pytest.fixture
def in_sandbox(
    docker_backend: DockerBackend, sandbox_repo: Path, policies_dir: Path, tmp_path: Path
) -> SandboxRunner:
    """Call with a shell script; returns the TaskSandboxRun (container already removed)."""
    return SandboxRunner(docker_backend, sandbox_repo, policies_dir, tmp_path / "runs")
