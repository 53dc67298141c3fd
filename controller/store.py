"""The task index: tasks, their states, their events and idempotency keys in one SQLite file.

The file is opened in WAL mode with ``synchronous=FULL``: a commit is on disk
before the API answers, so a ``kill -9`` loses nothing that a caller was told.
Every state change is one transaction that also appends its event, so a reader
never sees a final status without the final event. The schema has a version
table and an ordered list of migrations; a file newer than this code is
refused rather than guessed at. One controller owns a file at a time (an
advisory lock beside it), because start-up recovery takes over every running
task and two controllers would fight over them.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

from controller.errors import StoreError, TaskKeyTakenError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from pydantic import JsonValue

logger = logging.getLogger(__name__)

TaskState = Literal["queued", "running", "succeeded", "failed", "timeout", "cancelled", "error"]
"""Where a task is: waiting, running, or one of the final states of ``TaskResult.status``."""

TASK_STATES: tuple[str, ...] = get_args(TaskState)
FINAL_STATES: frozenset[str] = frozenset(TASK_STATES) - {"queued", "running"}

#: Ordered migrations: (version, statements). Append only; never edit a shipped one.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            f"""CREATE TABLE tasks (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- queue order; never reused
                id TEXT NOT NULL UNIQUE,
                task_key TEXT NOT NULL,
                repository TEXT NOT NULL,
                base_ref TEXT NOT NULL,
                base_commit TEXT NOT NULL,
                task_json TEXT NOT NULL,
                request_hash TEXT NOT NULL,
                principal TEXT NOT NULL,
                status TEXT NOT NULL CHECK (status IN ({", ".join(f"'{s}'" for s in TASK_STATES)})),
                attempts INTEGER NOT NULL DEFAULT 0,
                run_id TEXT,
                cancel_requested INTEGER NOT NULL DEFAULT 0,
                reason TEXT,
                result_json TEXT,
                created_at TEXT NOT NULL,
                started_at TEXT,
                finished_at TEXT,
                updated_at TEXT NOT NULL
            )""",
            "CREATE INDEX tasks_by_status ON tasks (status, seq)",
            "CREATE INDEX tasks_by_repository ON tasks (repository, seq)",
            """CREATE TABLE events (
                task_id TEXT NOT NULL REFERENCES tasks (id),
                seq INTEGER NOT NULL,
                stage TEXT NOT NULL,
                message TEXT NOT NULL,
                data_json TEXT NOT NULL,
                created_at TEXT NOT NULL,
                PRIMARY KEY (task_id, seq)
            ) WITHOUT ROWID""",
            """CREATE TABLE idempotency_keys (
                principal TEXT NOT NULL,
                key TEXT NOT NULL,
                request_hash TEXT NOT NULL,
                task_id TEXT NOT NULL REFERENCES tasks (id),
                created_at TEXT NOT NULL,
                PRIMARY KEY (principal, key)
            ) WITHOUT ROWID""",
            """CREATE TABLE readiness_probe (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                checked_at TEXT NOT NULL
            )""",
        ),
    ),
    # Submission looks up every task of a key in a repository (who owns the key, is one active).
    # NOCASE: keys name branches, and `taskbox/be-1` and `taskbox/BE-1` are one folder where
    # names ignore case (macOS, Windows clones), so they are one key.
    (2, ("CREATE INDEX tasks_by_key ON tasks (repository, task_key COLLATE NOCASE, seq)",)),
)

SCHEMA_VERSION = MIGRATIONS[-1][0]


def utc_now() -> datetime:
    """The current time in UTC (the only clock the store uses)."""
    return datetime.now(UTC)


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _parse_ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


#: States in which a task still holds its key: a second run of the key would race it for the branch.
ACTIVE_STATES: frozenset[str] = frozenset({"queued", "running"})


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """One task as the store holds it."""

    seq: int
    id: str
    task_key: str
    repository: str
    base_ref: str
    base_commit: str
    task_json: str
    request_hash: str
    principal: str
    status: TaskState
    attempts: int
    run_id: str | None
    cancel_requested: bool
    reason: str | None
    result_json: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime

    @property
    def finished(self) -> bool:
        """True once the task is in a final state."""
        return self.status in FINAL_STATES

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> TaskRecord:
        """Build a record from a ``SELECT * FROM tasks`` row."""
        created = _parse_ts(row["created_at"])
        updated = _parse_ts(row["updated_at"])
        if created is None or updated is None:  # pragma: no cover - NOT NULL columns
            raise StoreError("a task row has no timestamps")
        return cls(
            seq=row["seq"],
            id=row["id"],
            task_key=row["task_key"],
            repository=row["repository"],
            base_ref=row["base_ref"],
            base_commit=row["base_commit"],
            task_json=row["task_json"],
            request_hash=row["request_hash"],
            principal=row["principal"],
            status=cast("TaskState", row["status"]),
            attempts=row["attempts"],
            run_id=row["run_id"],
            cancel_requested=bool(row["cancel_requested"]),
            reason=row["reason"],
            result_json=row["result_json"],
            created_at=created,
            started_at=_parse_ts(row["started_at"]),
            finished_at=_parse_ts(row["finished_at"]),
            updated_at=updated,
        )


#: One task as the API's ``TaskView`` JSON (camelCase, same order), built by SQLite per row, so
#: a listing neither builds a record nor validates a model per task. ``taskbox_redact`` is the
#: caller's host-path redactor, registered for the query. Timestamps are stored as
#: ``isoformat(timespec="microseconds")`` in UTC (:func:`_ts`) and written as pydantic writes
#: them: ``...Z``, without a fraction when it is zero. tests/controller/test_store.py and
#: tests/controller/api/test_tasks.py check this against ``TaskView`` byte for byte.
_TASK_VIEW_JSON = (
    "json_object("
    "'id', t.id, 'taskKey', t.task_key, 'repository', t.repository, "
    "'baseRef', t.base_ref, 'baseCommit', t.base_commit, 'status', t.status, "
    "'queuePosition', CASE WHEN t.status = 'queued' THEN 1 + (SELECT COUNT(*) FROM tasks q "
    "WHERE q.status = 'queued' AND q.seq < t.seq) END, "
    "'attempts', t.attempts, 'runId', t.run_id, "
    "'cancelRequested', json(CASE WHEN t.cancel_requested THEN 'true' ELSE 'false' END), "
    "'reason', CASE WHEN t.reason IS NULL THEN NULL ELSE taskbox_redact(t.reason) END, "
    "'createdBy', t.principal, "
    "'createdAt', replace(replace(t.created_at, '.000000+00:00', 'Z'), '+00:00', 'Z'), "
    "'startedAt', replace(replace(t.started_at, '.000000+00:00', 'Z'), '+00:00', 'Z'), "
    "'finishedAt', replace(replace(t.finished_at, '.000000+00:00', 'Z'), '+00:00', 'Z'))"
)


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event of a task; ``seq`` counts from 1 per task and is the SSE event id."""

    task_id: str
    seq: int
    stage: str
    message: str
    data: dict[str, JsonValue]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class NewTask:
    """What a submission stores; the store adds the queue position, state and times."""

    id: str
    task_key: str
    repository: str
    base_ref: str
    base_commit: str
    task_json: str
    request_hash: str
    principal: str
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append in the same transaction as a state change."""

    stage: str
    message: str
    data: dict[str, JsonValue]


#: Pages of the task list kept for reuse (a few queries per caller and page size are polled).
MAX_CACHED_PAGES = 128
#: Temporary triggers (this connection only): every write to ``tasks`` calls back into Python.
_TASKS_CHANGED = "taskbox_tasks_changed"
_CHANGE_TRIGGERS = tuple(
    f"CREATE TEMP TRIGGER IF NOT EXISTS tasks_changed_{op.lower()} AFTER {op} ON main.tasks "
    f"BEGIN SELECT {_TASKS_CHANGED}(); END"
    for op in ("INSERT", "UPDATE", "DELETE")
)


@dataclass(frozen=True, slots=True)
class PageQuery:
    """One page of the task list: which tasks, after which one, how many."""

    status: str | None = None
    """Only tasks in this state; ``None``: every state."""
    repositories: tuple[str, ...] | None = None
    """Only tasks of these repositories; ``None``: every repository, ``()``: none."""
    after_seq: int = 0
    """Tasks after this ``seq`` (the keyset cursor)."""
    limit: int = 50


PageKey = tuple[object, PageQuery]
"""What one list page depends on: the redactor (applied to reasons) and the query."""


#: (rows this connection wrote to ``tasks``, SQLite's ``data_version``): both only grow.
Version = tuple[int, int]


class _TaskPages:
    """The task list's pages as last built, valid until the next write to ``tasks``.

    Every view field (the queue position included) is a function of the ``tasks``
    table alone, so a page stays right until a row of it changes. The store counts
    the rows its own connection writes there (temporary triggers call
    :meth:`changed`), and SQLite's ``data_version`` moves when another connection
    commits (one should not, since the controller holds the file's lock, but an
    operator's ``sqlite3`` shell could). Events go to their own table and do not
    count. A page is stored with the version read under the store's lock with its
    query, so a write cannot fall between the two.
    """

    def __init__(self) -> None:
        self.changes = 0
        self._version: Version = (0, 0)
        # Kept as tuples and handed out as new lists: no caller can change a kept page.
        self._pages: OrderedDict[PageKey, tuple[tuple[int, str], ...]] = OrderedDict()
        self._lock = threading.Lock()

    def changed(self) -> None:
        """Called by SQLite (under the store's lock) for every row written to ``tasks``."""
        self.changes += 1

    def get(self, key: PageKey, version: Version) -> list[tuple[int, str]] | None:
        """The page for ``key`` if it was built at ``version``, else None."""
        with self._lock:
            if self._version != version:
                return None
            page = self._pages.get(key)
            if page is None:
                return None
            self._pages.move_to_end(key)
        return list(page)

    def put(self, key: PageKey, version: Version, page: list[tuple[int, str]]) -> None:
        """Keep ``page``, built at ``version``."""
        with self._lock:
            if version != self._version:
                if version < self._version:
                    return  # built before a newer page was stored: already stale
                self._pages.clear()
                self._version = version
            self._pages[key] = tuple(page)
            self._pages.move_to_end(key)
            while len(self._pages) > MAX_CACHED_PAGES:
                self._pages.popitem(last=False)


class TaskStore:
    """SQLite-backed task index; every method is safe to call from any thread."""

    def __init__(self, path: Path, *, exclusive: bool = True) -> None:
        """Open (creating and migrating) the store at ``path``.

        ``exclusive`` takes an advisory lock so that a second controller on the
        same file fails at start instead of taking over the first one's tasks.
        """
        self.path = path
        self._lock = threading.RLock()
        self._lock_file: int | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if exclusive:
                self._lock_file = self._take_file_lock(path)
            self._conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=10
            )
        except OSError as exc:
            self._release_file_lock()
            raise StoreError(f"cannot open the task store {path}: {exc.strerror}") from exc
        except sqlite3.Error as exc:
            self._release_file_lock()
            raise StoreError(f"cannot open the task store {path}: {exc}") from exc
        self._conn.row_factory = sqlite3.Row
        self._pages = _TaskPages()
        try:
            _configure(self._conn, path)
            migrate(self._conn)
            self._conn.create_function(_TASKS_CHANGED, 0, self._pages.changed)
            for trigger in _CHANGE_TRIGGERS:
                self._conn.execute(trigger)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _take_file_lock(path: Path) -> int:
        # flock is released by the kernel when the process dies, even on SIGKILL.
        lock_path = path.with_name(path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise StoreError(
                f"another controller is using the task store {path} (lock {lock_path} is held)"
            ) from exc
        return fd

    def _release_file_lock(self) -> None:
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None

    def close(self) -> None:
        """Close the database and release the controller lock."""
        with self._lock:
            conn = getattr(self, "_conn", None)
            if conn is not None:
                conn.close()
            self._release_file_lock()

    # ------------------------------------------------------------------ plumbing

    def _write(self) -> _Transaction:
        return _Transaction(self._conn, self._lock, immediate=True)

    def _read(self) -> _Transaction:
        return _Transaction(self._conn, self._lock, immediate=False)

    def _append_event(self, conn: sqlite3.Connection, task_id: str, event: NewEvent) -> EventRecord:
        seq = conn.execute(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE task_id = ?", (task_id,)
        ).fetchone()[0]
        now = utc_now()
        conn.execute(
            "INSERT INTO events (task_id, seq, stage, message, data_json, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (task_id, seq, event.stage, event.message, json.dumps(event.data), _ts(now)),
        )
        return EventRecord(task_id, seq, event.stage, event.message, event.data, now)

    @staticmethod
    def _task(conn: sqlite3.Connection, task_id: str) -> TaskRecord | None:
        row = conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return None if row is None else TaskRecord.from_row(row)

    # ------------------------------------------------------------------ submission

    def find_idempotent(self, principal: str, key: str) -> tuple[str, TaskRecord] | None:
        """The request hash and task already stored under ``(principal, key)``, if any."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT request_hash, task_id FROM idempotency_keys WHERE principal = ? AND key = ?",
                (principal, key),
            ).fetchone()
            if row is None:
                return None
            task = self._task(conn, row["task_id"])
        if task is None:  # pragma: no cover - foreign key
            raise StoreError("an idempotency key points at a missing task")
        return row["request_hash"], task

    def create_task(self, new: NewTask, event: NewEvent) -> tuple[TaskRecord, str, bool]:
        """Insert a queued task under its idempotency key, atomically.

        Returns ``(task, stored_request_hash, created)``. When the key is already
        taken (a concurrent submission won the race) nothing is written and the
        existing task comes back with ``created=False``. Raises TaskKeyTakenError
        when the task key is another caller's in that repository, or is active.
        """
        now = _ts(utc_now())
        with self._write() as conn:
            row = conn.execute(
                "SELECT request_hash, task_id FROM idempotency_keys WHERE principal = ? AND key = ?",
                (new.principal, new.idempotency_key),
            ).fetchone()
            if row is not None:
                existing = self._task(conn, row["task_id"])
                if existing is None:  # pragma: no cover - foreign key
                    raise StoreError("an idempotency key points at a missing task")
                return existing, row["request_hash"], False
            self._check_key_free(conn, new)
            conn.execute(
                "INSERT INTO tasks (id, task_key, repository, base_ref, base_commit, task_json, "
                "request_hash, principal, status, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                (
                    new.id,
                    new.task_key,
                    new.repository,
                    new.base_ref,
                    new.base_commit,
                    new.task_json,
                    new.request_hash,
                    new.principal,
                    now,
                    now,
                ),
            )
            conn.execute(
                "INSERT INTO idempotency_keys (principal, key, request_hash, task_id, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (new.principal, new.idempotency_key, new.request_hash, new.id, now),
            )
            self._append_event(conn, new.id, event)
            task = self._task(conn, new.id)
        if task is None:  # pragma: no cover - just inserted
            raise StoreError("a task vanished right after it was written")
        return task, new.request_hash, True

    @staticmethod
    def _check_key_free(conn: sqlite3.Connection, new: NewTask) -> None:
        """Raise TaskKeyTakenError unless ``new.task_key`` may get a new task in its repository.

        A key belongs to the caller that used it first in a repository (it names the
        branch ``taskbox/<key>`` that a run writes), so another caller can never take
        it, not even after the first task finished. Keys differing only in case are one
        key (their branches collide where file names ignore case). The same caller may submit the key
        again only when no task of it is queued or running. Checked in the insert's
        transaction, so two racing submissions cannot both pass.
        """
        rows = conn.execute(
            "SELECT id, principal, status FROM tasks "
            "WHERE repository = ? AND task_key = ? COLLATE NOCASE ORDER BY seq",
            (new.repository, new.task_key),
        ).fetchall()
        if any(row["principal"] != new.principal for row in rows):
            raise TaskKeyTakenError(
                f"task key {new.task_key!r} is already used in repository {new.repository!r} "
                "by another caller; use another task key"
            )
        active = [row["id"] for row in rows if row["status"] in ACTIVE_STATES]
        if active:
            raise TaskKeyTakenError(
                f"task key {new.task_key!r} is already queued or running as task {active[0]}; "
                "wait for it to finish or cancel it"
            )

    # ------------------------------------------------------------------ reading

    def get(self, task_id: str) -> TaskRecord | None:
        """The task with that id, or ``None``."""
        with self._read() as conn:
            return self._task(conn, task_id)

    def list_tasks(
        self,
        *,
        status: str | None = None,
        repositories: Sequence[str] | None = None,
        after_seq: int = 0,
        limit: int = 50,
    ) -> list[TaskRecord]:
        """Tasks in queue order after ``after_seq``; ``repositories=None`` means every repository."""
        page = _page_filter("", status, repositories, after_seq, limit)
        if page is None:
            return []
        where, params = page
        sql = f"SELECT * FROM tasks WHERE {where} ORDER BY seq LIMIT ?"  # noqa: S608 - only placeholders are interpolated
        with self._read() as conn:
            return [TaskRecord.from_row(r) for r in conn.execute(sql, params)]

    def list_task_views(
        self, query: PageQuery, *, redact: Callable[[str], str]
    ) -> list[tuple[int, str]]:
        """:meth:`list_tasks`' page as ``(seq, TaskView JSON)`` pairs, in one query.

        Keyset pagination on ``seq`` (an index range, however deep the page). Each
        task's JSON, its queue position (a correlated count on the ``(status, seq)``
        index, in the same snapshot) included, is built by SQLite; the stored task
        and result JSON are never read. ``redact`` is applied to every ``reason``.
        The page is kept for :meth:`cached_task_views` until a task changes.
        """
        found = _page_filter("t.", query.status, query.repositories, query.after_seq, query.limit)
        if found is None:
            return []
        where, params = found
        # The page comes back as one row: each row stepped would hand the GIL to the event loop
        # and wait to get it back, which under load cost more than the query. JSON never holds a
        # raw newline (json_object escapes control characters), so it separates the items; both
        # aggregates walk the rows in the same order, and the pairs are sorted by seq anyway.
        page = f"SELECT t.seq AS seq, {_TASK_VIEW_JSON} AS view FROM tasks t WHERE {where} ORDER BY t.seq LIMIT ?"  # noqa: S608 - only placeholders are interpolated
        sql = f"SELECT group_concat(seq, ','), group_concat(view, char(10)) FROM ({page})"  # noqa: S608 - no value is interpolated
        # One statement is one snapshot (autocommit, WAL): no BEGIN/COMMIT, two GIL hand-offs
        # fewer. The lock serialises the shared connection and every write, so the change count
        # read with the query is this snapshot's; the redactor is the caller's.
        with self._lock:
            version = self._version()
            self._conn.create_function("taskbox_redact", 1, redact, deterministic=True)
            seqs, views = self._conn.execute(sql, params).fetchone()
        result = (
            []
            if seqs is None
            else sorted(zip(map(int, seqs.split(",")), views.split("\n"), strict=True))
        )
        self._pages.put((redact, query), version, result)
        return result

    def cached_task_views(
        self, query: PageQuery, *, redact: Callable[[str], str]
    ) -> list[tuple[int, str]] | None:
        """The page :meth:`list_task_views` built for the same query if no task changed since.

        No file I/O and no wait on the store's lock: safe to call on the event loop.
        ``None`` when the page must be built (the first time, a task changed, or a
        write holds the lock right now).
        """
        if not self._lock.acquire(blocking=False):
            return None
        try:
            version = self._version()
        finally:
            self._lock.release()
        return self._pages.get((redact, query), version)

    def _version(self) -> Version:
        """What the kept pages are checked against; call with the lock held."""
        outside = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
        return (self._pages.changes, outside)

    def count_by_status(self) -> dict[str, int]:
        """How many tasks are in each state (every state present, zero when none)."""
        counts = dict.fromkeys(TASK_STATES, 0)
        with self._read() as conn:
            for row in conn.execute("SELECT status, COUNT(*) AS n FROM tasks GROUP BY status"):
                counts[row["status"]] = row["n"]
        return counts

    def queue_position(self, task: TaskRecord) -> int | None:
        """1 for the next task to run; ``None`` when the task is not queued."""
        if task.status != "queued":
            return None
        with self._read() as conn:
            ahead = conn.execute(
                "SELECT COUNT(*) FROM tasks WHERE status = 'queued' AND seq < ?", (task.seq,)
            ).fetchone()[0]
        return int(ahead) + 1

    def running(self) -> list[TaskRecord]:
        """Every task the store believes is running, in queue order."""
        return self.list_tasks(status="running", limit=1_000_000)

    def events_after(
        self, task_id: str, after_seq: int, limit: int = 500
    ) -> tuple[list[EventRecord], bool]:
        """Events of a task after ``after_seq`` and whether the stream is complete.

        Read in one transaction with the task's state, so "complete" (the task is
        final and no event follows the ones returned) is never reported before
        the final event is in the list.
        """
        with self._read() as conn:
            row = conn.execute("SELECT status FROM tasks WHERE id = ?", (task_id,)).fetchone()
            rows = conn.execute(
                "SELECT * FROM events WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (task_id, after_seq, limit + 1),
            ).fetchall()
        events = [
            EventRecord(
                task_id=r["task_id"],
                seq=r["seq"],
                stage=r["stage"],
                message=r["message"],
                data=json.loads(r["data_json"]),
                created_at=datetime.fromisoformat(r["created_at"]),
            )
            for r in rows[:limit]
        ]
        complete = row is not None and row["status"] in FINAL_STATES and len(rows) <= limit
        return events, complete

    # ------------------------------------------------------------------ state changes

    def append_event(self, task_id: str, event: NewEvent) -> EventRecord:
        """Append one event to a task (the executor's progress)."""
        with self._write() as conn:
            return self._append_event(conn, task_id, event)

    def claim_next(self, new_run_id: Callable[[str], str]) -> TaskRecord | None:
        """Move the oldest queued task to ``running`` and give it a run id; ``None`` if none waits.

        ``new_run_id(task_key)`` names the run (a fresh id each time: a run id is
        never reused, not even by the next attempt of the same task). The claim and its
        ``started`` event are one transaction, so a crash leaves either a queued
        task or a running one with a run id that recovery can look for.
        """
        with self._write() as conn:
            row = conn.execute(
                "SELECT id, task_key, attempts FROM tasks WHERE status = 'queued' "
                "ORDER BY seq LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            attempt = row["attempts"] + 1
            run_id = new_run_id(row["task_key"])
            now = _ts(utc_now())
            conn.execute(
                "UPDATE tasks SET status = 'running', attempts = ?, run_id = ?, started_at = ?, "
                "updated_at = ? WHERE id = ?",
                (attempt, run_id, now, now, row["id"]),
            )
            self._append_event(
                conn,
                row["id"],
                NewEvent("started", f"run {run_id} started", {"runId": run_id, "attempt": attempt}),
            )
            return self._task(conn, row["id"])

    def finish(
        self,
        task_id: str,
        *,
        status: TaskState,
        result_json: str,
        reason: str | None,
        event: NewEvent,
        only_if: Sequence[TaskState] = ("queued", "running"),
    ) -> TaskRecord | None:
        """Put a task in a final state with its result; ``None`` if it was not in ``only_if``."""
        if status not in FINAL_STATES:
            raise ValueError(f"{status!r} is not a final state")
        now = _ts(utc_now())
        with self._write() as conn:
            current = self._task(conn, task_id)
            if current is None or current.status not in only_if:
                return None
            conn.execute(
                "UPDATE tasks SET status = ?, result_json = ?, reason = ?, finished_at = ?, "
                "updated_at = ? WHERE id = ?",
                (status, result_json, reason, now, now, task_id),
            )
            self._append_event(conn, task_id, event)
            return self._task(conn, task_id)

    def requeue(self, task_id: str, *, event: NewEvent, uncount_attempt: bool) -> TaskRecord | None:
        """Put a running task back in the queue at its old position; ``None`` if it was not running.

        ``uncount_attempt`` gives the attempt back when the run was stopped by a
        clean shutdown rather than lost in a crash.
        """
        now = _ts(utc_now())
        with self._write() as conn:
            current = self._task(conn, task_id)
            if current is None or current.status != "running":
                return None
            conn.execute(
                "UPDATE tasks SET status = 'queued', attempts = attempts - ?, started_at = NULL, "
                "updated_at = ? WHERE id = ?",
                (1 if uncount_attempt else 0, now, task_id),
            )
            self._append_event(conn, task_id, event)
            return self._task(conn, task_id)

    def mark_cancel_requested(self, task_id: str, event: NewEvent) -> TaskRecord | None:
        """Record a cancel request on a running task (once); ``None`` if it is not running."""
        now = _ts(utc_now())
        with self._write() as conn:
            current = self._task(conn, task_id)
            if current is None or current.status != "running":
                return None
            if not current.cancel_requested:
                conn.execute(
                    "UPDATE tasks SET cancel_requested = 1, updated_at = ? WHERE id = ?",
                    (now, task_id),
                )
                self._append_event(conn, task_id, event)
            return self._task(conn, task_id)

    def check_writable(self) -> None:
        """Write one row, as the readiness probe; raises StoreError when the file cannot be written."""
        try:
            with self._write() as conn:
                conn.execute(
                    "INSERT INTO readiness_probe (id, checked_at) VALUES (1, ?) "
                    "ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                    (_ts(utc_now()),),
                )
        except sqlite3.Error as exc:
            raise StoreError(f"the task store cannot be written: {exc}") from exc


class _Transaction:
    """``with`` block holding the store lock and one SQLite transaction."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock, *, immediate: bool) -> None:
        self._conn = conn
        self._lock = lock
        self._immediate = immediate

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            # Reads take a transaction too, so that what they see is one snapshot.
            self._conn.execute("BEGIN IMMEDIATE" if self._immediate else "BEGIN")
        except BaseException:
            self._lock.release()
            raise
        return self._conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self._conn.execute("COMMIT")
            elif self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        finally:
            self._lock.release()


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION`, one migration per transaction; return the version."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    for version, statements in MIGRATIONS:
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = schema_version(conn)
            _refuse_newer(current)
            if version > current:
                try:
                    for statement in statements:
                        conn.execute(statement)
                except sqlite3.Error as exc:
                    raise StoreError(
                        f"migration to schema version {version} failed: {exc}"
                    ) from exc
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                logger.info("store migrated", extra={"schema_version": version})
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return schema_version(conn)


def schema_version(conn: sqlite3.Connection) -> int:
    """The version recorded in the file (0 for a new file)."""
    return int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])


def _refuse_newer(current: int) -> None:
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"the task store has schema version {current}, newer than this controller "
            f"knows ({SCHEMA_VERSION}); upgrade Taskbox instead of downgrading the store"
        )


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreError(f"{path}: SQLite refused WAL mode (got {mode!r})")
    # FULL: a commit survives power loss too, not only a killed process.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=10000")


def _page_filter(
    prefix: str,
    status: str | None,
    repositories: Sequence[str] | None,
    after_seq: int,
    limit: int,
) -> tuple[str, list[Any]] | None:
    """The WHERE clause and parameters (``limit`` last) of one list page; None: nothing can match.

    ``prefix`` qualifies the columns (``"t."`` under an alias). Only placeholders are
    interpolated into the SQL.
    """
    clauses = [f"{prefix}seq > ?"]
    params: list[Any] = [after_seq]
    if status is not None:
        clauses.append(f"{prefix}status = ?")
        params.append(status)
    if repositories is not None:
        if not repositories:
            return None
        clauses.append(f"{prefix}repository IN ({', '.join('?' for _ in repositories)})")
        params.extend(repositories)
    params.append(limit)
    return " AND ".join(clauses), params
