"""A test-only TaskExecutor steered by files, so it works in-process and in a served subprocess.

``taskbox serve`` loads it when ``TASKBOX_EXECUTOR_MODULE`` names this module
and ``TASKBOX_FAKE_CONTROL_DIR`` names its control folder. What a task does
depends on its key's prefix:

    HOLD…  emits a stage, then waits until ``release/<key>`` (or ``release/ALL``) exists or it is cancelled
    FAIL…  finishes ``failed``
    BOOM…  raises an unexpected exception (its text must never reach a client)
    SBX…   raises SandboxError
    LAND…  the first time: writes a real commit, the run's ``record/landing.json``, moves
           ``taskbox/<key>`` to the commit, then SIGKILLs its own process (a crash right
           after the ref update); ``LANDPRE…`` crashes before the ref update. Only in a
           served subprocess (``may_kill``); later runs of the key behave as "other".
    other  emits admitted, staged, a model round with token usage, checks; then succeeds

``admit`` is the real admission (policy, resources, mount plan on the real repository).

Each run leaves a "container" (a file ``containers/<run_id>``) and a staging
folder while it runs, like the Docker executor; both survive a SIGKILL of the
server, which is what recovery has to clean up. ``calls.jsonl`` records every
``execute`` in start order.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import JsonValue

from controller.admission import Admission, admit
from controller.errors import SandboxError
from controller.events import RunEvent
from controller.settings import PROJECT_ROOT
from taskbox_wire.contract import Task, TaskResult

if TYPE_CHECKING:
    from collections.abc import Callable

    from controller.settings import Settings

CONTROL_ENV = "TASKBOX_FAKE_CONTROL_DIR"
LEAKED_TEXT = "SECRET-TRACEBACK-MARKER"
POLL_SECONDS = 0.02


class FakeExecutor:
    """Plays runs out according to the task key; state lives in ``control``."""

    def __init__(
        self,
        control: Path,
        *,
        runs_dir: Path | None = None,
        policies_dir: Path = PROJECT_ROOT / "policies",
        may_kill: bool = False,
    ) -> None:
        """Use (and create) the control folder; ``may_kill`` lets LAND tasks SIGKILL the process."""
        self.control = control
        self.runs_dir = runs_dir if runs_dir is not None else control / "runs"
        self.policies_dir = policies_dir
        self.may_kill = may_kill
        for sub in ("containers", "staging", "release", "records", "landed"):
            (control / sub).mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ control helpers

    def calls(self) -> list[dict[str, str]]:
        """Every execute so far, in start order."""
        path = self.control / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def release(self, task_key: str = "ALL") -> None:
        """Let a HOLD task (or all of them) finish."""
        (self.control / "release" / task_key).touch()

    def containers(self) -> list[str]:
        """Run ids that still have a "container"."""
        return sorted(p.name for p in (self.control / "containers").iterdir())

    def stagings(self) -> list[str]:
        """Run ids that still have a staging folder."""
        return sorted(p.name for p in (self.control / "staging").iterdir())

    # ------------------------------------------------------------------ TaskExecutor

    def admit(
        self, task: Task, repo: Path, base_ref: str, policy_name: str | None = None
    ) -> Admission:
        """The real admission (``controller.admission.admit``), without an engine to ask for images."""
        return admit(
            task,
            repo=repo,
            base_ref=base_ref,
            policies_dir=self.policies_dir,
            policy_name=policy_name,
        )

    def execute(
        self,
        *,
        run_id: str,
        task: Task,
        repo: Path,
        base_ref: str,
        emit: Callable[[RunEvent], None],
        cancel: threading.Event,
    ) -> TaskResult:
        """Play the run the task key asks for."""
        with self._lock, (self.control / "calls.jsonl").open("a") as calls:
            calls.write(
                json.dumps({"task_key": task.task_key, "run_id": run_id, "base_ref": base_ref})
                + "\n"
            )
            calls.flush()
            os.fsync(calls.fileno())
        (self.control / "containers" / run_id).write_text(str(repo))
        (self.control / "staging" / run_id).mkdir(exist_ok=True)
        (self.control / "records" / run_id).write_text(
            json.dumps({"runId": run_id, "image": "sha256:fake", "policyDigest": "sha256:fake"})
        )
        try:
            if (
                task.task_key.startswith("LAND")
                and not (self.control / "landed" / task.task_key).exists()
            ):
                self._land_and_crash(run_id, task, repo, base_ref)
            return self._play(run_id, task, emit, cancel)
        finally:
            (self.control / "containers" / run_id).unlink(missing_ok=True)
            shutil.rmtree(self.control / "staging" / run_id, ignore_errors=True)

    def _play(
        self,
        run_id: str,
        task: Task,
        emit: Callable[[RunEvent], None],
        cancel: threading.Event,
    ) -> TaskResult:
        key = task.task_key
        emit(RunEvent(stage="admitted", message="task admitted", data={"runId": run_id}))
        if key.startswith("HOLD"):
            emit(RunEvent(stage="sandbox_started", message="holding until released"))
            release = self.control / "release"
            while not ((release / key).exists() or (release / "ALL").exists()):
                if cancel.wait(POLL_SECONDS):
                    emit(RunEvent(stage="sandbox_exited", message="stopped on cancel"))
                    return TaskResult(task_key=key, status="cancelled", reason="cancel event set")
        elif key.startswith("FAIL"):
            return TaskResult(task_key=key, status="failed", reason="the checks failed")
        elif key.startswith("BOOM"):
            raise RuntimeError(f"{LEAKED_TEXT} at /srv/secret/path")
        elif key.startswith("SBX"):
            raise SandboxError("the container engine refused the container")
        emit(RunEvent(stage="staged", message="files staged", data={"files": 3}))
        emit(
            RunEvent(
                stage="round",
                message="model round 1",
                data={"round": 1, "usage": {"input_tokens": 100, "output_tokens": 20}},
            )
        )
        emit(RunEvent(stage="checks", message="checks passed", data={"passed": 4, "failed": 0}))
        # The real runner reports its own end too; the service must not store a second final event.
        emit(RunEvent(stage="finished", message="succeeded", data={"status": "succeeded"}))
        return TaskResult(
            task_key=key, status="succeeded", git_commit="a" * 40, files_created=["app/x.py"]
        )

    def _land_and_crash(self, run_id: str, task: Task, repo: Path, base_ref: str) -> None:
        """Do what a run does right before and at its ref update, then die like a crash."""
        if not self.may_kill:
            raise RuntimeError("LAND tasks kill their process: run them in a served subprocess")
        key = task.task_key
        commit = _git(repo, "commit-tree", f"{base_ref}^{{tree}}", "-p", base_ref, "-m", f"[{key}]")
        result = TaskResult(
            task_key=key, status="succeeded", git_commit=commit, files_created=["app/landed.py"]
        )
        record = self.runs_dir / run_id / "record"
        record.mkdir(parents=True, exist_ok=True)
        # A real run wrote run.json at its start, with no status or finish time yet.
        meta = {
            "run_id": run_id,
            "task_key": key,
            "repository": "alpha",
            "base_ref": base_ref,
            "base_commit": base_ref,
            "model": "scripted:fake",
            "policy": "be-python",
            "policy_digest": "0" * 64,
            "commit_date": "2026-12-06T00:00:00Z",
            "started_at": "2026-12-06T00:00:00Z",
        }
        _write_synced(record / "run.json", json.dumps(meta))
        landing = {
            "branch": f"taskbox/{key}",
            "commit": commit,
            "result": result.model_dump(mode="json"),
        }
        _write_synced(record / "landing.json", json.dumps(landing))
        if not key.startswith("LANDPRE"):
            _git(repo, "update-ref", f"refs/heads/taskbox/{key}", commit, "0" * 40)
        _write_synced(self.control / "landed" / key, commit)
        os.kill(os.getpid(), signal.SIGKILL)

    def container_ids_for(self, run_id: str) -> list[str]:
        """The run's "container", if it is still there."""
        return [run_id] if (self.control / "containers" / run_id).exists() else []

    def remove_run_containers(self, run_id: str) -> int:
        """Remove the run's "container"."""
        path = self.control / "containers" / run_id
        if path.exists():
            path.unlink()
            return 1
        return 0

    def remove_staging(self, run_id: str) -> None:
        """Remove the run's staging folder."""
        shutil.rmtree(self.control / "staging" / run_id, ignore_errors=True)

    def audit(self, run_id: str) -> dict[str, JsonValue] | None:
        """The run record, or None; a run of a BOOM task makes audit crash too."""
        path = self.control / "records" / run_id
        if not path.exists():
            return None
        record: dict[str, JsonValue] = json.loads(path.read_text())
        if (self.control / "audit-crashes").exists():
            raise RuntimeError(f"{LEAKED_TEXT} while reading {path}")
        return record


def _git(repo: Path, *args: str) -> str:
    env = {
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": "Taskbox",
        "GIT_AUTHOR_EMAIL": "taskbox@localhost",
        "GIT_COMMITTER_NAME": "Taskbox",
        "GIT_COMMITTER_EMAIL": "taskbox@localhost",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, env=env, check=True)
    return done.stdout.decode().strip()


def _write_synced(path: Path, text: str) -> None:
    with path.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def make_executor(settings: Settings) -> FakeExecutor:
    """The entry point ``taskbox serve`` calls (``TASKBOX_EXECUTOR_MODULE`` = this module)."""
    return FakeExecutor(
        Path(os.environ[CONTROL_ENV]),
        runs_dir=settings.runs_dir,
        policies_dir=settings.policies_dir,
        may_kill=True,
    )


def make_readiness_probes(settings: Settings) -> dict[str, Callable[[], None]]:
    """Engine and image probes that fail while ``engine-down`` / ``image-missing`` files exist."""
    del settings
    control = Path(os.environ[CONTROL_ENV])
    return {
        "engine": probe_file(control, "engine-down"),
        "image": probe_file(control, "image-missing"),
    }


def probe_file(control: Path, name: str) -> Callable[[], None]:
    """A probe that raises while ``control/name`` exists."""

    def probe() -> None:
        if (control / name).exists():
            raise ConnectionError(f"{name} (details only in the server log)")

    return probe


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """Poll until ``predicate()`` holds; fail the test after ``timeout`` seconds (a bound, not a measure)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
