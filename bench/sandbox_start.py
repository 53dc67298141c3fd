"""Start-to-exit of one hardened sandbox running `true`, through the Docker backend.

Prints the median and spread of N runs of: the backend alone (create, start, wait, remove),
the same with the docker-py baseline (`containers.run`, network none, nothing else), and the
whole `taskbox sandbox run` path (plan, stage from git, run, remove). Usage:

    .venv/bin/python bench/sandbox_start.py [N]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from controller.contract import Task
from controller.image import SANDBOX_IMAGE
from controller.sandbox.docker import DockerBackend
from controller.sandbox.task_sandbox import TaskSandboxRun, run_in_task_sandbox
from controller.settings import PROJECT_ROOT, Settings

if TYPE_CHECKING:
    from collections.abc import Callable

BENCH_LABELS = {"taskbox.test": "1"}


def timed(runs: int, action: Callable[[], object]) -> list[float]:
    action()  # warm-up: first use of the image and the connection pool
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return samples


def describe(name: str, samples: list[float]) -> str:
    return (
        f"{name:<46} median {statistics.median(samples) * 1000:7.1f} ms   "
        f"min {min(samples) * 1000:7.1f}   max {max(samples) * 1000:7.1f}   (n={len(samples)})"
    )


def make_repo(root: Path) -> Path:
    repo = root / "repo"
    (repo / "app").mkdir(parents=True)
    (repo / "app" / "main.py").write_text("x = 1\n")
    env = {
        "GIT_AUTHOR_NAME": "b",
        "GIT_AUTHOR_EMAIL": "b@x.invalid",
        "GIT_COMMITTER_NAME": "b",
        "GIT_COMMITTER_EMAIL": "b@x.invalid",
        "PATH": "/usr/bin:/bin",
    }
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "b"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=env)
    return repo


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    backend = DockerBackend.from_settings(Settings())
    client = backend.client
    task = Task.model_validate(
        {
            "taskKey": "BENCH-1",
            "description": "bench",
            "ownsPaths": ["app/"],
            "contextJson": {"BENCH-1-ctx": {"relevant_files": []}},
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(Path(tmp))

        def full() -> TaskSandboxRun:
            return run_in_task_sandbox(
                task,
                repo=repo,
                command=["true"],
                backend=backend,
                policies_dir=PROJECT_ROOT / "policies",
                runs_dir=Path(tmp) / "runs",
                extra_labels=BENCH_LABELS,
            )

        def baseline() -> object:
            return client.containers.run(
                SANDBOX_IMAGE, ["true"], remove=True, network_mode="none", labels=BENCH_LABELS
            )

        results = {
            "docker-py containers.run (network none only)": timed(runs, baseline),
            "taskbox sandbox run path (plan+stage+run)": timed(runs, full),
        }
        # The backend alone: the full path minus planning and staging, measured inside run().
        inner: list[float] = []
        for _ in range(runs):
            outcome = full()
            inner.append(outcome.run.outcome.duration_seconds)
    for name, samples in results.items():
        print(describe(name, samples))
    print(describe("  of which start -> exit (backend wait)", inner))
    print(json.dumps({k: statistics.median(v) for k, v in results.items()}))


if __name__ == "__main__":
    main()
