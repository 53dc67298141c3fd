"""The task service: admission, a durable FIFO queue, bounded workers, recovery and drain.

Tasks live in the :class:`~controller.store.TaskStore`, so the queue is the
``queued`` rows in submission order and survives any restart. ``max_concurrent``
worker threads each claim the oldest queued task and hand it to a
:class:`TaskExecutor` (synchronous: the docker SDK is). On start, tasks the store
still calls ``running`` belong to a dead controller: their containers and
staging are removed and they are re-queued once, or failed with a reason. A run
that had already put its commit on ``taskbox/<key>`` (its ``record/landing.json``
names that commit and the branch holds it) is finished as succeeded instead. On
shutdown, running tasks get a grace period, then their cancel event, and go
back to the queue for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Protocol

from pydantic import BaseModel, ConfigDict, JsonValue, StringConstraints, ValidationError

from controller.errors import (
    AuditNotFoundError,
    BaseRefError,
    BranchExistsError,
    IdempotencyConflictError,
    PolicyError,
    PolicyUnavailableError,
    QueueFullError,
    RepositoryError,
    RepositoryUnavailableError,
    ShuttingDownError,
    TaskboxError,
    TaskFinishedError,
    TaskNotFinishedError,
    TaskNotFoundError,
    UnknownRepositoryError,
)
from controller.gitrepo import ensure_repository, resolve_commit, run_git
from controller.runs import LANDING_FILE, RunMeta, RunRecord, new_run_id
from controller.store import (
    EventRecord,
    NewEvent,
    NewTask,
    PageQuery,
    TaskRecord,
    TaskState,
    TaskStore,
)
from taskbox_wire.contract import Task, TaskResult

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from pathlib import Path

    from controller.events import RunEvent

logger = logging.getLogger(__name__)

#: A task is started at most this many times: a crash while it runs re-queues it
#: once; a second crash fails it, so one poisonous task cannot crash-loop the controller.
MAX_ATTEMPTS = 2
#: After the shutdown grace, how long cancelled runs get to stop before the process exits
#: anyway (recovery on the next start then cleans up whatever is left).
CANCEL_WAIT_SECONDS = 30.0
#: The stage of a task's last event; event streams end after it.
FINAL_STAGE = "finished"
#: How long a worker waits before it tries again after the store failed a claim.
CLAIM_RETRY_SECONDS = 2.0
#: Caps on what one event may carry, so a chatty run cannot bloat the index.
MAX_EVENT_MESSAGE_CHARS = 4000
MAX_EVENT_DATA_BYTES = 64 * 1024
#: The branch a run of a task writes: ``taskbox/<taskKey>``.
BRANCH_PREFIX = "taskbox/"
#: What a run writes in its record folder right before it moves ``taskbox/<key>``.
#: A landing record is a few KiB; anything far larger is not one of ours.
MAX_LANDING_BYTES = 4 * 1024 * 1024


class TaskExecutor(Protocol):
    """Runs one task to its end; the real one is ``controller.runs.TaskRunner`` (Docker).

    Events go through ``emit`` (``controller.runs.RunEvent``). A ``finished`` event
    of the executor is not stored: the service writes the final event itself.
    ``data["usage"] = {"input_tokens": n, "output_tokens": m}`` on any event feeds
    the model-token metric.
    """

    def admit(
        self, task: Task, repo: Path, base_ref: str, policy_name: str | None = None
    ) -> object:
        """Check that the task can run (plan, policy, resources); blocking, it runs git.

        Raises InvalidTaskError (the plan refuses an owned path, or the task asks for more
        than the policy's maximum), RepositoryError or PolicyError. The value is not used.
        """
        ...

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
        """Run the task; return its result (``cancelled`` when ``cancel`` was set). Blocking."""
        ...

    def container_ids_for(self, run_id: str) -> list[str]:
        """Containers labelled with this run (``org.taskbox.run=<run_id>``)."""
        ...

    def remove_run_containers(self, run_id: str) -> int:
        """Remove this run's containers; how many were removed."""
        ...

    def remove_staging(self, run_id: str) -> None:
        """Remove this run's staging folder (idempotent)."""
        ...

    def audit(self, run_id: str) -> dict[str, JsonValue] | None:
        """The run's mount plan, effective policy and digest, image id and inspected container settings."""
        ...


class TaskObserver(Protocol):
    """Where the service reports what metrics count (``controller.api.metrics`` implements it)."""

    def task_finished(self, status: str, seconds: float) -> None:
        """A run ended in ``status`` after ``seconds`` of running."""
        ...

    def model_tokens(self, kind: str, count: int) -> None:
        """A run used ``count`` model tokens of ``kind`` (``input`` or ``output``)."""
        ...


class TaskChangeFeed:
    """Wakes event-stream readers (coroutines) when a task gets an event; callable from any thread."""

    def __init__(self) -> None:
        """No one watches anything yet."""
        self._lock = threading.Lock()
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    @contextlib.contextmanager
    def watch(self, task_id: str) -> Iterator[asyncio.Event]:
        """An event set (in the caller's loop) whenever ``task_id`` changes; for ``with`` only."""
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters.setdefault(task_id, set()).add(waiter)
        try:
            yield waiter[1]
        finally:
            with self._lock:
                waiters = self._waiters.get(task_id, set())
                waiters.discard(waiter)
                if not waiters:
                    self._waiters.pop(task_id, None)

    def notify(self, task_id: str) -> None:
        """Wake every reader of ``task_id``."""
        with self._lock:
            waiters = list(self._waiters.get(task_id, ()))
        for loop, event in waiters:
            # The loop may already be closed when the server is going away.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)


@dataclass(frozen=True, slots=True)
class Submission:
    """What ``submit`` answers: the task and whether an earlier identical request created it."""

    task: TaskRecord
    replayed: bool


@dataclass(frozen=True, slots=True)
class RecoveryOutcome:
    """What start-up recovery did with one task that was running when the controller died."""

    task_id: str
    run_id: str | None
    containers_removed: int
    action: str  # "requeued", "failed", "cancelled" or "succeeded" (its commit had landed)


def request_hash(task: Task, repository: str, base_ref: str) -> str:
    """sha256 of the canonical JSON of a submission (validated, so equal tasks hash equal)."""
    canonical = json.dumps(
        {"task": task.to_wire(), "repository": repository, "baseRef": base_ref},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_task_id() -> str:
    """A fresh task id: 32 lowercase hex characters."""
    return uuid.uuid4().hex


def _bounded_data(data: dict[str, JsonValue]) -> dict[str, JsonValue]:
    encoded = json.dumps(data)
    if len(encoded) > MAX_EVENT_DATA_BYTES:
        return {"truncated": True, "bytes": len(encoded)}
    return data


def _usage(data: dict[str, JsonValue]) -> dict[str, int]:
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return {}
    counts: dict[str, int] = {}
    for kind in ("input", "output"):
        value = usage.get(f"{kind}_tokens")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            counts[kind] = value
    return counts


class TaskService:
    """Admits tasks, runs them from a durable queue, and answers questions about them."""

    def __init__(
        self,
        *,
        store: TaskStore,
        executor: TaskExecutor,
        repositories: Mapping[str, Path],
        max_concurrent: int,
        max_queued: int,
        observer: TaskObserver | None = None,
        runs_dir: Path | None = None,
    ) -> None:
        """Wire the service; nothing runs before :meth:`start`.

        ``runs_dir`` is where runs keep their records (``<runs_dir>/<run_id>/record``);
        recovery reads a run's landing intent there. Without it, recovery cannot tell
        a landed commit and re-queues every interrupted run.
        """
        self.store = store
        self.executor = executor
        self._runs_dir = runs_dir
        self.changes = TaskChangeFeed()
        self._repositories = dict(repositories)
        self._max_concurrent = max_concurrent
        self._max_queued = max_queued
        self._observer = observer
        # One lock orders claims, cancels and shutdown against each other.
        self._cond = threading.Condition(threading.Lock())
        self._generation = 0  # bumped whenever there may be new work
        self._cancels: dict[str, threading.Event] = {}
        self._interrupted: set[str] = set()
        self._workers: list[threading.Thread] = []
        self._started = False
        # A plain attribute, not an Event: stop_accepting runs in a signal handler, where
        # taking a lock the interrupted thread may hold would deadlock.
        self._draining = False
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ life cycle

    def start(self) -> list[RecoveryOutcome]:
        """Reconcile what a dead controller left running, then start the workers."""
        outcomes = self.recover()
        self._started = True
        for number in range(self._max_concurrent):
            worker = threading.Thread(
                target=self._work, name=f"taskbox-worker-{number}", daemon=True
            )
            # Daemon threads: a run that ignores its cancel must not keep the process alive;
            # the next start recovers it.
            worker.start()
            self._workers.append(worker)
        logger.info("task service started", extra={"workers": self._max_concurrent})
        return outcomes

    def recover(self) -> list[RecoveryOutcome]:
        """Every task stored as ``running``: remove its containers and staging; re-queue once or fail."""
        outcomes = []
        for record in self.store.running():
            removed = 0
            if record.run_id is not None:
                found = self.executor.container_ids_for(record.run_id)
                removed = self.executor.remove_run_containers(record.run_id)
                self.executor.remove_staging(record.run_id)
                logger.info(
                    "reconciled a run of a stopped controller",
                    extra={
                        "task_id": record.id,
                        "run_id": record.run_id,
                        "containers_found": len(found),
                        "containers_removed": removed,
                    },
                )
            landed = self._landed_result(record)
            action: str
            if isinstance(landed, TaskResult):
                # The run had put its checked commit on the branch: that is its result,
                # whatever a cancel or the attempt count says; running it again could
                # only fail on the branch it wrote itself.
                self._complete_record(record, landed)
                self._finish(record, landed)
                action = landed.status
            elif isinstance(landed, str):
                self._finish(
                    record, TaskResult(task_key=record.task_key, status="failed", reason=landed)
                )
                action = "failed"
            elif record.cancel_requested:
                reason = "cancelled on request; the controller stopped while the run was stopping"
                self._finish(
                    record, TaskResult(task_key=record.task_key, status="cancelled", reason=reason)
                )
                action = "cancelled"
            elif record.attempts < MAX_ATTEMPTS:
                self.store.requeue(
                    record.id,
                    event=NewEvent(
                        "requeued",
                        "the controller stopped while this task ran; "
                        f"{removed} container(s) removed; the task is queued again",
                        {"reason": "controller_restart", "attempt": record.attempts},
                    ),
                    uncount_attempt=False,
                )
                action = "requeued"
            else:
                reason = (
                    f"the controller stopped while this task ran, {record.attempts} times; "
                    "it is not retried again"
                )
                self._finish(
                    record, TaskResult(task_key=record.task_key, status="failed", reason=reason)
                )
                action = "failed"
            outcomes.append(RecoveryOutcome(record.id, record.run_id, removed, action))
            self.changes.notify(record.id)
        return outcomes

    def _landed_result(self, record: TaskRecord) -> TaskResult | str | None:
        """What an interrupted run had landed: its result, a reason to fail, or None to rerun.

        The run writes ``record/landing.json`` (branch, commit, the result it will
        report) right before it moves ``taskbox/<key>``. If the branch now holds that
        commit, the run landed and the result stands. If the branch is absent, the
        crash came before the ref update: the task runs again. If the branch holds
        another commit, something else wrote it and a rerun would be refused too.
        """
        intent = self._read_landing(record)
        repo = self._repositories.get(record.repository)
        if intent is None or repo is None:
            return None
        branch, commit, result = intent
        log_extra = {"task_id": record.id, "run_id": record.run_id, "branch": branch}
        try:
            current = branch_commit(repo, branch)
        except RepositoryError as exc:
            logger.error(  # noqa: TRY400 - the cause is in the message
                "cannot read the branch of an interrupted run",
                extra={**log_extra, "error": str(exc)},
            )
            current = None
        if current is None:
            logger.info("the interrupted run had not moved its branch; rerun", extra=log_extra)
            return None
        if current == commit:
            logger.info(
                "the interrupted run had landed its commit; finished as succeeded",
                extra={**log_extra, "commit": commit},
            )
            return result
        logger.warning(
            "the branch of an interrupted run holds another commit",
            extra={**log_extra, "expected": commit, "found": current},
        )
        return (
            f"the controller stopped while run {record.run_id} was landing commit {commit[:12]} "
            f"on {branch}, and {branch} now holds another commit ({current[:12]}); "
            "the branch was not changed and the task is not run again"
        )

    def _complete_record(self, record: TaskRecord, result: TaskResult) -> None:
        """Give a run record that stopped at its landing what the run would have written last.

        That is the result it landed (``result.json``) and, in ``run.json``, its status
        and a finish time (the recovery's, the only one known), so `taskbox runs` and
        `taskbox reproduce` read it like any finished run.
        """
        if self._runs_dir is None or record.run_id is None:
            return
        run = RunRecord(self._runs_dir, record.run_id)
        path = run.dir / "result.json"
        try:
            if not (path.exists() or path.is_symlink()):
                run.write_json("result.json", result.model_dump(mode="json"))
            meta = RunMeta.model_validate(run.read_json("run.json"))
            if meta.status is None:
                meta.finished_at = datetime.now(UTC)
                meta.status = result.status
                run.write_json("run.json", meta.model_dump(mode="json"))
        except (OSError, ValueError) as exc:
            # ValueError: json's and pydantic's; a record this broken stays as it is.
            logger.warning(
                "cannot complete the record of a landed run",
                extra={"run_id": record.run_id, "error": str(exc)},
            )

    def _read_landing(self, record: TaskRecord) -> tuple[str, str, TaskResult] | None:
        """The run's landing intent (branch, commit, result) when it is present and coherent."""
        if self._runs_dir is None or record.run_id is None:
            return None
        path = self._runs_dir / record.run_id / "record" / LANDING_FILE
        log_extra = {"task_id": record.id, "run_id": record.run_id}
        try:
            if path.is_symlink() or not path.is_file():
                return None
            with path.open("rb") as handle:
                raw = handle.read(MAX_LANDING_BYTES + 1)
            # An oversized file fails validation as truncated JSON.
            intent = _LandingIntent.model_validate_json(raw[:MAX_LANDING_BYTES])
        except (OSError, ValueError) as exc:
            # Written right before the ref update: a torn file means the ref was never moved.
            logger.warning(
                "landing record unreadable; treated as absent",
                extra={**log_extra, "error": str(exc)[:500]},
            )
            return None
        expected_branch = BRANCH_PREFIX + record.task_key
        result = intent.result
        problems = []
        if intent.branch != expected_branch:
            problems.append(f"branch {intent.branch!r} is not {expected_branch!r}")
        if result.task_key != record.task_key:
            problems.append("its result is for another task key")
        if result.status != "succeeded" or result.git_commit != intent.commit:
            problems.append("its result is not a success with that commit")
        if problems:
            logger.warning(
                "landing record does not match its task; treated as absent",
                extra={**log_extra, "problems": problems},
            )
            return None
        return intent.branch, intent.commit, result

    @property
    def accepting(self) -> bool:
        """True while new submissions are taken."""
        return self._started and not self._draining and not self._stopping.is_set()

    def stop_accepting(self) -> None:
        """Refuse new submissions from now on (the first step of a drain); safe in a signal handler."""
        self._draining = True

    def shutdown(
        self, grace_seconds: float, cancel_wait_seconds: float = CANCEL_WAIT_SECONDS
    ) -> None:
        """Drain: no new work; running tasks get ``grace_seconds``, then are cancelled and re-queued."""
        self.stop_accepting()
        self._stopping.set()
        deadline = time.monotonic() + grace_seconds
        with self._cond:
            self._generation += 1
            self._cond.notify_all()
            while self._cancels and (remaining := deadline - time.monotonic()) > 0:
                self._cond.wait(remaining)
            pending = list(self._cancels)
            for task_id in pending:
                self._interrupted.add(task_id)
                self._cancels[task_id].set()
            if pending:
                logger.warning(
                    "shutdown grace over; cancelling running tasks",
                    extra={"tasks": pending, "grace_seconds": grace_seconds},
                )
            deadline = time.monotonic() + cancel_wait_seconds
            while self._cancels and (remaining := deadline - time.monotonic()) > 0:
                self._cond.wait(remaining)
            if self._cancels:
                logger.error(
                    "runs did not stop after cancel; the next start recovers them",
                    extra={"tasks": list(self._cancels)},
                )
        for worker in self._workers:
            worker.join(timeout=1)
        logger.info("task service stopped")

    # ------------------------------------------------------------------ requests

    def submit(
        self, *, principal: str, idempotency_key: str, task: Task, repository: str, base_ref: str
    ) -> Submission:
        """Queue a task, or return the one this principal already submitted under the same key."""
        digest = request_hash(task, repository, base_ref)
        found = self.store.find_idempotent(principal, idempotency_key)
        if found is not None:
            return self._replay(found[0], found[1], digest)
        if not self.accepting:
            raise ShuttingDownError("the controller is shutting down and takes no new tasks")
        repo = self._repositories.get(repository)
        if repo is None:
            raise UnknownRepositoryError(f"no repository named {repository!r}")
        if self.store.count_by_status()["queued"] >= self._max_queued:
            raise QueueFullError(f"{self._max_queued} tasks are already waiting; retry later")
        base_commit = self._resolve(repository, repo, base_ref)
        self._admit(repository, repo, task, base_commit)
        branch = BRANCH_PREFIX + task.task_key
        try:
            existing = branches_like(repo, branch)
        except RepositoryError as exc:
            raise RepositoryUnavailableError(
                f"repository {repository!r} is not available on the controller; tell its operator"
            ) from exc
        if existing:
            name, oid = existing[0]
            raise BranchExistsError(
                f"repository {repository!r} already has branch {name} (at {oid[:12]}); "
                f"a run of {task.task_key} could not land there: use another task key "
                "or remove the branch"
            )
        record, stored_hash, created = self.store.create_task(
            NewTask(
                id=new_task_id(),
                task_key=task.task_key,
                repository=repository,
                base_ref=base_ref,
                base_commit=base_commit,
                task_json=json.dumps(task.to_wire()),
                request_hash=digest,
                principal=principal,
                idempotency_key=idempotency_key,
            ),
            NewEvent(
                "queued",
                f"task {task.task_key} queued",
                {"baseCommit": base_commit, "createdBy": principal},
            ),
        )
        if not created:
            return self._replay(stored_hash, record, digest)
        logger.info(
            "task queued",
            extra={
                "task_id": record.id,
                "task_key": record.task_key,
                "repository": repository,
                "principal": principal,
            },
        )
        with self._cond:
            self._generation += 1
            self._cond.notify_all()
        return Submission(record, replayed=False)

    @staticmethod
    def _replay(stored_hash: str, record: TaskRecord, digest: str) -> Submission:
        if stored_hash != digest:
            raise IdempotencyConflictError(
                "this Idempotency-Key was already used with a different request body; "
                "use a new key for a new task"
            )
        return Submission(record, replayed=True)

    def _admit(self, name: str, repo: Path, task: Task, base_commit: str) -> None:
        """Admission at submit: what the run would refuse is refused now, before it takes a slot.

        InvalidTaskError (a refused owned path, resources over the policy's maximum) goes
        to the caller as it is; a repository or policy the controller cannot use is the
        operator's problem and is said so without details.
        """
        try:
            self.executor.admit(task, repo, base_commit)
        except PolicyError as exc:
            logger.error(  # noqa: TRY400 - the cause is in the message
                "admission could not load the task's policy",
                extra={"repository": name, "worker": task.worker, "error": str(exc)},
            )
            raise PolicyUnavailableError(
                f"the policy for worker {task.worker!r} is not usable on the controller; "
                "tell its operator"
            ) from exc
        except RepositoryError as exc:
            logger.error(  # noqa: TRY400 - the cause is in the message
                "admission could not read the repository",
                extra={"repository": name, "error": str(exc)},
            )
            raise RepositoryUnavailableError(
                f"repository {name!r} is not available on the controller; tell its operator"
            ) from exc

    @staticmethod
    def _resolve(name: str, repo: Path, base_ref: str) -> str:
        try:
            top = ensure_repository(repo)
        except RepositoryError as exc:
            logger.error(  # noqa: TRY400 - the cause is in the message; a traceback adds nothing
                "configured repository unusable", extra={"repository": name, "error": str(exc)}
            )
            raise RepositoryUnavailableError(
                f"repository {name!r} is not available on the controller; tell its operator"
            ) from exc
        try:
            return resolve_commit(top, base_ref)
        except RepositoryError as exc:
            raise BaseRefError(f"baseRef {base_ref!r} names no commit of {name!r}") from exc

    def get(self, task_id: str) -> TaskRecord:
        """The task, or TaskNotFoundError."""
        record = self.store.get(task_id)
        if record is None:
            raise TaskNotFoundError(f"no task {task_id!r}")
        return record

    def list_tasks(
        self,
        *,
        status: TaskState | None,
        repositories: Sequence[str] | None,
        after_seq: int,
        limit: int,
    ) -> list[TaskRecord]:
        """One page of tasks in queue order (see :meth:`TaskStore.list_tasks`)."""
        return self.store.list_tasks(
            status=status, repositories=repositories, after_seq=after_seq, limit=limit
        )

    async def list_task_views(
        self, query: PageQuery, *, redact: Callable[[str], str]
    ) -> list[tuple[int, str]]:
        """One page of tasks in queue order, as ``(seq, TaskView JSON)``.

        An orchestrator polls: while no task changed, the page last built for the same
        query is answered at once, on the event loop; otherwise the store's one query
        runs in a worker thread (see :meth:`TaskStore.list_task_views`).
        """
        cached = self.store.cached_task_views(query, redact=redact)
        if cached is not None:
            return cached
        return await asyncio.to_thread(self.store.list_task_views, query, redact=redact)

    def result(self, task_id: str) -> TaskResult:
        """The final result; TaskNotFinishedError while the task is queued or running."""
        record = self.get(task_id)
        if not record.finished or record.result_json is None:
            raise TaskNotFinishedError(f"task {task_id} is {record.status}; it has no result yet")
        return TaskResult.model_validate_json(record.result_json)

    def audit(self, task_id: str) -> tuple[str, dict[str, JsonValue]]:
        """The run id and audit record of the task's latest run."""
        record = self.get(task_id)
        if record.run_id is None:
            raise AuditNotFoundError(f"task {task_id} has not started a run yet")
        audit = self.executor.audit(record.run_id)
        if audit is None:
            raise AuditNotFoundError(f"run {record.run_id} left no record")
        return record.run_id, audit

    def events_after(self, task_id: str, after_seq: int) -> tuple[list[EventRecord], bool]:
        """Events after ``after_seq`` and whether the task's stream is complete."""
        return self.store.events_after(task_id, after_seq)

    def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a task: a queued one at once, a running one through its cancel event."""
        with self._cond:
            record = self.get(task_id)
            if record.finished:
                raise TaskFinishedError(f"task {task_id} already finished ({record.status})")
            if record.status == "queued":
                done = self._finish(
                    record,
                    TaskResult(
                        task_key=record.task_key,
                        status="cancelled",
                        reason="cancelled before it started",
                    ),
                )
                if done is not None:
                    return done
            updated = self.store.mark_cancel_requested(
                task_id, NewEvent("cancel_requested", "cancel requested; stopping the run", {})
            )
            if task_id in self._cancels:
                self._cancels[task_id].set()
        self.changes.notify(task_id)
        return updated or self.get(task_id)

    # ------------------------------------------------------------------ workers

    def _work(self) -> None:
        while not self._stopping.is_set():
            with self._cond:
                if self._stopping.is_set():
                    break
                generation = self._generation
                try:
                    record = self.store.claim_next(new_run_id)
                except Exception:
                    # A full disk or a locked file must not kill the worker; try again shortly.
                    logger.exception("claiming the next task failed")
                    self._cond.wait(timeout=CLAIM_RETRY_SECONDS)
                    continue
                if record is not None:
                    cancel = threading.Event()
                    self._cancels[record.id] = cancel
            if record is None:
                with self._cond:
                    # Wake on new work, or every few seconds in case another writer queued some.
                    if self._generation == generation and not self._stopping.is_set():
                        self._cond.wait(timeout=5)
                continue
            self.changes.notify(record.id)
            try:
                self._run(record, cancel)
            except Exception:
                # The store failed while recording the end; the next start recovers the task.
                logger.exception("recording a run's end failed", extra={"task_id": record.id})
            finally:
                with self._cond:
                    self._cancels.pop(record.id, None)
                    self._interrupted.discard(record.id)
                    self._cond.notify_all()

    def _run(self, record: TaskRecord, cancel: threading.Event) -> None:
        run_id = record.run_id or new_run_id(record.task_key)  # claim_next always sets one
        log_extra = {"task_id": record.id, "run_id": run_id, "attempt": record.attempts}
        logger.info("run started", extra=log_extra)
        try:
            task = Task.model_validate_json(record.task_json)
            result = self.executor.execute(
                run_id=run_id,
                task=task,
                repo=self._repositories[record.repository],
                base_ref=record.base_commit,
                emit=lambda event: self._emit(record.id, event),
                cancel=cancel,
            )
        except TaskboxError as exc:
            logger.warning("run failed", extra={**log_extra, "code": exc.code, "error": str(exc)})
            result = TaskResult(
                task_key=record.task_key, status="error", reason=f"{exc.code}: {exc}"
            )
        except (KeyError, ValidationError) as exc:
            logger.error("task cannot run", extra={**log_extra, "error": str(exc)})  # noqa: TRY400 - the cause is stated
            result = TaskResult(
                task_key=record.task_key,
                status="error",
                reason="the task's repository or stored form is no longer valid on this controller",
            )
        except Exception:
            logger.exception("executor crashed", extra=log_extra)
            result = TaskResult(
                task_key=record.task_key,
                status="error",
                reason=f"internal error in the executor (run {run_id}); see the controller log",
            )
        if result.status != "succeeded":
            # The run may have landed its commit and failed after it (a cleanup that raised,
            # a cancel that came late): a commit on the branch is the task's result.
            landed = self._landed_result(record)
            if isinstance(landed, TaskResult):
                logger.warning(
                    "the run failed after landing its commit; the task succeeded",
                    extra={**log_extra, "run_status": result.status},
                )
                result = landed
        with self._cond:
            interrupted = record.id in self._interrupted
        current = self.store.get(record.id)
        user_cancelled = current is not None and current.cancel_requested
        if interrupted and not user_cancelled and result.status != "succeeded":
            self.store.requeue(
                record.id,
                event=NewEvent(
                    "requeued",
                    "the controller shut down before the task finished; "
                    "it runs again when the controller starts",
                    {"reason": "controller_shutdown"},
                ),
                uncount_attempt=True,
            )
            self.changes.notify(record.id)
            logger.info("run interrupted by shutdown; re-queued", extra=log_extra)
            return
        if (interrupted or user_cancelled or cancel.is_set()) and result.status != "succeeded":
            result = result.model_copy(
                update={"status": "cancelled", "reason": result.reason or "cancelled on request"}
            )
        done = self._finish(record, result)
        if done is not None and done.started_at is not None and done.finished_at is not None:
            seconds = (done.finished_at - done.started_at).total_seconds()
            if self._observer is not None:
                self._observer.task_finished(done.status, seconds)
            logger.info(
                "run finished", extra={**log_extra, "status": done.status, "seconds": seconds}
            )

    def _finish(self, record: TaskRecord, result: TaskResult) -> TaskRecord | None:
        message = f"task {result.status}" + (f": {result.reason}" if result.reason else "")
        done = self.store.finish(
            record.id,
            status=result.status,
            result_json=result.model_dump_json(),
            reason=result.reason,
            event=NewEvent(
                FINAL_STAGE,
                message[:MAX_EVENT_MESSAGE_CHARS],
                {"status": result.status, "reason": result.reason, "gitCommit": result.git_commit},
            ),
        )
        self.changes.notify(record.id)
        return done

    def _emit(self, task_id: str, event: RunEvent) -> None:
        """Store one executor event; never raises into the executor."""
        if event.stage == FINAL_STAGE:
            # The service writes the one final event itself, with the status it decided
            # (a cancel or a shutdown can override the executor's), so streams end once.
            return
        try:
            data = _bounded_data(dict(event.data))
            self.store.append_event(
                task_id, NewEvent(event.stage, event.message[:MAX_EVENT_MESSAGE_CHARS], data)
            )
            if self._observer is not None:
                for kind, count in _usage(data).items():
                    self._observer.model_tokens(kind, count)
        except Exception:
            logger.exception("could not store a run event", extra={"task_id": task_id})
        self.changes.notify(task_id)


class _LandingIntent(BaseModel):
    """``record/landing.json``: what a run is about to put on its branch (written by the run)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    branch: str
    commit: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")]
    result: TaskResult


def branches_like(repo: Path, branch: str) -> list[tuple[str, str]]:
    """Branches (name, commit) that ``branch`` would collide with: the same name in any case.

    ``taskbox/BE-1`` and ``taskbox/be-1`` are one file where names ignore case, so a
    clone on such a system could not hold both; either one blocks the other.
    """
    out = run_git(repo, "for-each-ref", "--format=%(objectname) %(refname)", "--", "refs/heads/")
    wanted = ("refs/heads/" + branch).casefold()
    found = []
    for line in out.decode("utf-8", "replace").splitlines():
        oid, _, name = line.partition(" ")
        if name.casefold() == wanted:
            found.append((name.removeprefix("refs/heads/"), oid))
    return found


def branch_commit(repo: Path, branch: str) -> str | None:
    """The commit ``refs/heads/<branch>`` points at in ``repo``, or None when it does not exist.

    ``for-each-ref`` lists by prefix and succeeds on no match, so the exact name is
    picked from its output: absence is an answer, not an error. Runs with the safe
    git environment (no config, hooks or pagers of anyone else).
    """
    ref = f"refs/heads/{branch}"
    out = run_git(repo, "for-each-ref", "--format=%(objectname) %(refname)", "--", ref)
    for line in out.decode("utf-8", "replace").splitlines():
        oid, _, name = line.partition(" ")
        if name == ref:
            return oid
    return None
