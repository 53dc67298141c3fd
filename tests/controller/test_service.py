"""The task service's logic with the fake executor: recovery, drain on shutdown, admission, metrics hooks."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.contract import Task
from controller.errors import (
    BaseRefError,
    RepositoryUnavailableError,
    SandboxError,
    ShuttingDownError,
    UnknownRepositoryError,
)
from controller.runs import new_run_id
from controller.service import MAX_ATTEMPTS, TaskService, request_hash
from controller.store import NewEvent, TaskStore
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
