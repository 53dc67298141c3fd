"""The task service's logic with the fake executor: recovery (landed commits included), drain on
shutdown, admission at submit, task keys, metrics hooks."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.errors import (
    BaseRefError,
    BranchExistsError,
    InvalidTaskError,
    RepositoryUnavailableError,
    SandboxError,
    ShuttingDownError,
    TaskKeyTakenError,
    UnknownRepositoryError,
)
from controller.runs import new_run_id
from controller.service import (
    MAX_ATTEMPTS,
    TaskService,
    branch_commit,
    request_hash,
)
from controller.store import NewEvent, TaskStore
from taskbox_wire.contract import Task, TaskResult
from tests.conftest import git
from tests.controller.api.fake_executor import FakeExecutor, wait_for


def make_task(key: str) -> Task:
    """A valid task with ``key``."""
    return Task.model_validate(
        {
            "taskKey": key,
            "description": "Do it.",
            "ownsPaths": ["app/"],
            "contextJson": {f"{key}-ctx": {"relevant_files": []}},
        }
    )


class Observed:
    """Records what the service reports to metrics."""

    def __init__(self) -> None:
        self.finished: list[tuple[str, float]] = []
        self.tokens: list[tuple[str, int]] = []

    def task_finished(self, status: str, seconds: float) -> None:
        self.finished.append((status, seconds))

    def model_tokens(self, kind: str, count: int) -> None:
        self.tokens.append((kind, count))


@pytest.fixture
def repo(make_repo: Callable[..., tuple[Path, str]]) -> Path:
    """A real git repository."""
    return make_repo({"README.md": "hello\n"})[0]


@pytest.fixture
def fake(tmp_path: Path) -> FakeExecutor:
    """The fake executor."""
    return FakeExecutor(tmp_path / "control")


@pytest.fixture
def make_service(
    tmp_path: Path, repo: Path, fake: FakeExecutor
) -> Iterator[Callable[..., TaskService]]:
    """Services over one store file; each is shut down and its store closed at teardown."""
    made: list[TaskService] = []

    def make(max_concurrent: int = 1, observer: Observed | None = None) -> TaskService:
        service = TaskService(
            store=TaskStore(tmp_path / "tasks.sqlite3"),
            executor=fake,
            repositories={"alpha": repo, "broken": tmp_path / "not-a-repo"},
            max_concurrent=max_concurrent,
            max_queued=100,
            observer=observer,
        )
        made.append(service)
        return service

    yield make
    fake.release()
    for service in made:
        service.shutdown(grace_seconds=5)
        service.store.close()


def submit(service: TaskService, key: str, idem: str | None = None) -> str:
    """Submit a task; its id."""
    return service.submit(
        principal="p",
        idempotency_key=idem or key,
        task=make_task(key),
        repository="alpha",
        base_ref="HEAD",
    ).task.id


def test_recovery_requeues_a_run_once_and_removes_its_leftovers(
    make_service: Callable[..., TaskService], fake: FakeExecutor
) -> None:
    """A task left running by a dead controller loses its containers and staging and is queued again."""
    service = make_service()
    task_id = submit_queued(service, "HOLD-1")
    claimed = service.store.claim_next(new_run_id)
    assert claimed is not None
    assert claimed.run_id is not None
    # What a SIGKILL leaves: the store says running, the run's container and staging are still there.
    (fake.control / "containers" / claimed.run_id).touch()
    (fake.control / "staging" / claimed.run_id).mkdir()
    outcomes = service.recover()
    assert [(o.task_id, o.action, o.containers_removed) for o in outcomes] == [
        (task_id, "requeued", 1)
    ]
    assert fake.containers() == []
    assert fake.stagings() == []
    record = service.get(task_id)
    assert record.status == "queued"
    assert record.attempts == 1
    events, _ = service.events_after(task_id, 0)
    assert events[-1].stage == "requeued"
    assert events[-1].data["reason"] == "controller_restart"


def test_recovery_fails_a_task_that_crashed_the_controller_twice(
    make_service: Callable[..., TaskService],
) -> None:
    """A task already started MAX_ATTEMPTS times is failed with a reason instead of re-queued."""
    service = make_service()
    task_id = submit_queued(service, "HOLD-2")
    for _ in range(MAX_ATTEMPTS):
        service.store.claim_next(new_run_id)
        service.store.requeue(task_id, event=_event("requeued"), uncount_attempt=False)
    service.store.claim_next(new_run_id)  # attempt MAX_ATTEMPTS + 1 is "running" at the crash
    outcomes = service.recover()
    assert [o.action for o in outcomes] == ["failed"]
    record = service.get(task_id)
    assert record.status == "failed"
    assert record.reason is not None
    assert "controller stopped while this task ran" in record.reason
    assert service.result(task_id).status == "failed"


def test_recovery_finishes_a_cancel_that_was_under_way(
    make_service: Callable[..., TaskService],
) -> None:
    """A task whose cancel was requested when the controller died ends cancelled, not re-queued."""
    service = make_service()
    task_id = submit_queued(service, "HOLD-3")
    service.store.claim_next(new_run_id)
    service.store.mark_cancel_requested(task_id, _event("cancel_requested"))
    assert [o.action for o in service.recover()] == ["cancelled"]
    assert service.get(task_id).status == "cancelled"


def test_shutdown_cancels_after_the_grace_and_requeues(
    make_service: Callable[..., TaskService], fake: FakeExecutor
) -> None:
    """A run still going when the grace ends is cancelled and queued again with its attempt given back."""
    service = make_service()
    service.start()
    task_id = submit(service, "HOLD-4")
    wait_for(lambda: len(fake.calls()) == 1, what="the run")
    service.shutdown(grace_seconds=0)
    record = service.get(task_id)
    assert record.status == "queued"
    assert record.attempts == 0
    events, _ = service.events_after(task_id, 0)
    assert events[-1].data["reason"] == "controller_shutdown"
    assert fake.containers() == []
    with pytest.raises(ShuttingDownError):
        submit(service, "BE-5")


def test_shutdown_lets_a_run_finish_within_the_grace(
    make_service: Callable[..., TaskService], fake: FakeExecutor
) -> None:
    """A run that ends during the grace period keeps its result; nothing is re-queued."""
    service = make_service()
    service.start()
    task_id = submit(service, "HOLD-6")
    queued_id = submit(service, "BE-7")
    wait_for(lambda: len(fake.calls()) == 1, what="the run")
    stopper = threading.Thread(target=service.shutdown, kwargs={"grace_seconds": 60})
    stopper.start()
    wait_for(lambda: not service.accepting, what="the drain to start")
    fake.release("HOLD-6")
    stopper.join(timeout=60)
    assert not stopper.is_alive()
    assert service.get(task_id).status == "succeeded"
    # The queued task was not started during the drain; it waits for the next start.
    assert service.get(queued_id).status == "queued"
    assert [c["task_key"] for c in fake.calls()] == ["HOLD-6"]


def test_observer_hears_durations_and_tokens(
    make_service: Callable[..., TaskService],
) -> None:
    """Each finished run reports its status and duration; model rounds report their tokens."""
    observed = Observed()
    service = make_service(observer=observed)
    service.start()
    task_id = submit(service, "BE-8")
    wait_for(lambda: service.get(task_id).finished, what="the run to end")
    assert [status for status, _ in observed.finished] == ["succeeded"]
    assert observed.finished[0][1] >= 0
    assert observed.tokens == [("input", 100), ("output", 20)]


def test_admission_errors(make_service: Callable[..., TaskService]) -> None:
    """Unknown repository, a ref that names nothing and a broken configured path each raise their error."""
    service = make_service()
    service.start()
    task = make_task("BE-9")
    with pytest.raises(UnknownRepositoryError):
        service.submit(
            principal="p", idempotency_key="a", task=task, repository="x", base_ref="HEAD"
        )
    with pytest.raises(BaseRefError):
        service.submit(
            principal="p", idempotency_key="b", task=task, repository="alpha", base_ref="nope"
        )
    with pytest.raises(RepositoryUnavailableError):
        service.submit(
            principal="p", idempotency_key="c", task=task, repository="broken", base_ref="HEAD"
        )


def test_request_hash_is_canonical() -> None:
    """Equal requests hash equal however the JSON was written; any real difference changes the hash."""
    task = make_task("BE-1")
    as_string = Task.model_validate(
        {**task.to_wire(), "contextJson": '{"BE-1-ctx": {"relevant_files": []}}'}
    )
    assert request_hash(task, "alpha", "HEAD") == request_hash(as_string, "alpha", "HEAD")
    assert request_hash(task, "alpha", "HEAD") != request_hash(task, "alpha", "main")
    assert request_hash(task, "alpha", "HEAD") != request_hash(task, "beta", "HEAD")


def submit_queued(service: TaskService, key: str) -> str:
    """Submit without workers running (the service accepts but nothing claims)."""
    service._started = True
    return submit(service, key)


def _event(stage: str) -> NewEvent:
    return NewEvent(stage, stage, {})


def test_recovery_that_cannot_remove_containers_stops_the_start(
    make_service: Callable[..., TaskService], fake: FakeExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a dead run's containers cannot be removed, start fails loudly and the task stays running."""
    service = make_service()
    task_id = submit_queued(service, "HOLD-10")
    service.store.claim_next(new_run_id)

    def engine_down(run_id: str) -> int:
        raise SandboxError(f"cannot reach the engine to remove {run_id}")

    monkeypatch.setattr(fake, "remove_run_containers", engine_down)
    with pytest.raises(SandboxError):
        service.start()
    assert service.get(task_id).status == "running"
    assert service._workers == []  # no worker was started


# --------------------------------------------------------------------------- landed commits


@pytest.fixture
def landing_service(tmp_path: Path, repo: Path, fake: FakeExecutor) -> Iterator[TaskService]:
    """A service whose runs keep their records in tmp_path/runs (where landing.json is read)."""
    service = TaskService(
        store=TaskStore(tmp_path / "landing.sqlite3"),
        executor=fake,
        repositories={"alpha": repo},
        max_concurrent=1,
        max_queued=100,
        runs_dir=tmp_path / "runs",
    )
    yield service
    service.store.close()


def crash_while_landing(
    service: TaskService, repo: Path, key: str, *, move_branch: bool = True
) -> tuple[str, str, Path]:
    """A task left running with a landing intent (and the branch moved, unless told not to).

    Returns (task id, landed commit, the landing file).
    """
    task_id = submit_queued(service, key)
    claimed = service.store.claim_next(new_run_id)
    assert claimed is not None
    assert claimed.run_id is not None
    commit = git(repo, "commit-tree", "HEAD^{tree}", "-p", "HEAD", "-m", f"[{key}]").strip()
    result = TaskResult(task_key=key, status="succeeded", git_commit=commit, summary="done")
    landing = tmp_landing(service, claimed.run_id)
    landing.write_text(
        json.dumps(
            {"branch": f"taskbox/{key}", "commit": commit, "result": result.model_dump(mode="json")}
        )
    )
    if move_branch:
        git(repo, "update-ref", f"refs/heads/taskbox/{key}", commit)
    return task_id, commit, landing


def tmp_landing(service: TaskService, run_id: str) -> Path:
    """Where the run's landing intent goes: <runs_dir>/<run_id>/record/landing.json."""
    assert service._runs_dir is not None
    record = service._runs_dir / run_id / "record"
    record.mkdir(parents=True)
    return record / "landing.json"


def test_recovery_finishes_a_landed_run_as_succeeded(
    landing_service: TaskService, repo: Path
) -> None:
    """The branch holds the commit the run's landing.json names: the task is succeeded with that result."""
    task_id, commit, _ = crash_while_landing(landing_service, repo, "LAND-10")
    outcomes = landing_service.recover()
    assert [o.action for o in outcomes] == ["succeeded"]
    record = landing_service.get(task_id)
    assert record.status == "succeeded"
    result = landing_service.result(task_id)
    assert result.git_commit == commit
    assert result.summary == "done"
    events, complete = landing_service.events_after(task_id, 0)
    assert complete
    assert events[-1].stage == "finished"
    assert events[-1].data["gitCommit"] == commit


def test_a_landed_run_wins_over_a_pending_cancel_and_the_attempt_count(
    landing_service: TaskService, repo: Path
) -> None:
    """A run that landed is succeeded even if a cancel was under way and it was its last attempt."""
    task_id, commit, _ = crash_while_landing(landing_service, repo, "LAND-11")
    landing_service.store.mark_cancel_requested(task_id, _event("cancel_requested"))
    with landing_service.store._write() as conn:  # as if this were the last allowed attempt
        conn.execute("UPDATE tasks SET attempts = ? WHERE id = ?", (MAX_ATTEMPTS + 1, task_id))
    assert [o.action for o in landing_service.recover()] == ["succeeded"]
    assert landing_service.result(task_id).git_commit == commit


def test_recovery_reruns_when_the_branch_was_not_moved(
    landing_service: TaskService, repo: Path
) -> None:
    """landing.json without the branch: the crash came before the ref update, so the task is queued again."""
    task_id, _, _ = crash_while_landing(landing_service, repo, "LAND-12", move_branch=False)
    assert [o.action for o in landing_service.recover()] == ["requeued"]
    assert landing_service.get(task_id).status == "queued"


def test_recovery_fails_when_the_branch_holds_another_commit(
    landing_service: TaskService, repo: Path
) -> None:
    """The branch exists at a commit the run did not land: failed, with a reason naming both commits."""
    task_id, commit, _ = crash_while_landing(landing_service, repo, "LAND-13")
    other = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "update-ref", "refs/heads/taskbox/LAND-13", other)
    assert [o.action for o in landing_service.recover()] == ["failed"]
    record = landing_service.get(task_id)
    assert record.status == "failed"
    assert record.reason is not None
    assert commit[:12] in record.reason
    assert other[:12] in record.reason
    assert git(repo, "rev-parse", "refs/heads/taskbox/LAND-13").strip() == other  # left alone


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda text: text[: len(text) // 2],  # torn write
        lambda text: text.replace('"taskbox/LAND-14"', '"taskbox/OTHER"'),  # another branch
        lambda text: text.replace('"succeeded"', '"failed"'),  # not a success
        lambda _text: "[]",
    ],
    ids=["torn", "other-branch", "not-succeeded", "not-an-object"],
)
def test_an_unusable_landing_record_is_treated_as_absent(
    landing_service: TaskService, repo: Path, corrupt: Callable[[str], str]
) -> None:
    """A landing.json that is torn or does not match its task never finishes a task: the task is re-queued."""
    task_id, _, landing = crash_while_landing(landing_service, repo, "LAND-14")
    landing.write_text(corrupt(landing.read_text()))
    assert [o.action for o in landing_service.recover()] == ["requeued"]
    assert landing_service.get(task_id).status == "queued"


# --------------------------------------------------------------------------- admission at submit


def test_submit_admits_before_queueing(make_service: Callable[..., TaskService]) -> None:
    """A task the plan or the policy refuses raises InvalidTaskError at submit and queues nothing."""
    service = make_service()
    service.start()
    for owned in ("../x/", "/abs/", "app/\x00x", ".env", ".git/hooks/"):
        task = Task.model_validate({**make_task("ADM-S").to_wire(), "ownsPaths": [owned]})
        with pytest.raises(InvalidTaskError):
            service.submit(
                principal="p", idempotency_key=owned, task=task, repository="alpha", base_ref="HEAD"
            )
    greedy = Task.model_validate({**make_task("ADM-R").to_wire(), "resources": {"pids": 10**6}})
    with pytest.raises(InvalidTaskError, match="asks for more than"):
        service.submit(
            principal="p", idempotency_key="r", task=greedy, repository="alpha", base_ref="HEAD"
        )
    assert service.store.list_tasks() == []


def test_submit_refuses_a_key_whose_branch_exists(
    make_service: Callable[..., TaskService], repo: Path
) -> None:
    """A task key whose taskbox/<key> branch exists raises BranchExistsError at submit."""
    service = make_service()
    service.start()
    git(repo, "branch", "taskbox/ADM-B")
    with pytest.raises(BranchExistsError, match="taskbox/ADM-B"):
        submit(service, "ADM-B")
    assert branch_commit(repo, "taskbox/ADM-B") == git(repo, "rev-parse", "HEAD").strip()
    assert branch_commit(repo, "taskbox/ADM") is None  # a prefix is not the branch


def test_submit_refuses_a_key_of_another_principal(
    make_service: Callable[..., TaskService],
) -> None:
    """A key another principal used in the repository raises TaskKeyTakenError, finished or not."""
    service = make_service()
    service.start()
    first = submit(service, "ADM-K")
    wait_for(lambda: service.get(first).finished, what="the first run")
    with pytest.raises(TaskKeyTakenError):
        service.submit(
            principal="q",
            idempotency_key="other",
            task=make_task("ADM-K"),
            repository="alpha",
            base_ref="HEAD",
        )


class LandThenCrash(FakeExecutor):
    """Writes landing.json and moves the branch with real git, then raises, as a cleanup failure would."""

    def __init__(self, control: Path, runs_dir: Path, repo: Path) -> None:
        super().__init__(control, runs_dir=runs_dir)
        self.repo = repo
        self.commit = ""

    def execute(self, **kwargs: Any) -> TaskResult:
        """Land, then fail the way a crash after the ref update does."""
        run_id, task = kwargs["run_id"], kwargs["task"]
        key = task.task_key
        self.commit = git(self.repo, "commit-tree", "HEAD^{tree}", "-p", "HEAD", "-m", key).strip()
        record = self.runs_dir / run_id / "record"
        record.mkdir(parents=True)
        result = TaskResult(task_key=key, status="succeeded", git_commit=self.commit)
        (record / "landing.json").write_text(
            json.dumps(
                {
                    "branch": f"taskbox/{key}",
                    "commit": self.commit,
                    "result": result.model_dump(mode="json"),
                }
            )
        )
        git(self.repo, "update-ref", f"refs/heads/taskbox/{key}", self.commit)
        raise RecursionError("maximum recursion depth exceeded while removing the staging folder")


def test_a_run_that_fails_after_landing_is_succeeded(tmp_path: Path, repo: Path) -> None:
    """An executor that raises after moving its branch: the task ends succeeded with the landed commit."""
    executor = LandThenCrash(tmp_path / "control-land", tmp_path / "runs", repo)
    service = TaskService(
        store=TaskStore(tmp_path / "land.sqlite3"),
        executor=executor,
        repositories={"alpha": repo},
        max_concurrent=1,
        max_queued=10,
        runs_dir=tmp_path / "runs",
    )
    try:
        service.start()
        task_id = submit(service, "LAND-20")
        wait_for(lambda: service.get(task_id).finished, what="the run")
        assert service.get(task_id).status == "succeeded"
        assert service.result(task_id).git_commit == executor.commit
    finally:
        service.shutdown(grace_seconds=1)
        service.store.close()
