"""The SQLite task store: schema migrations, WAL, the controller lock, FIFO claims, events, idempotency."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from controller import store as store_module
from controller.errors import StoreError, TaskKeyTakenError
from controller.store import (
    SCHEMA_VERSION,
    NewEvent,
    NewTask,
    PageQuery,
    TaskStore,
    schema_version,
)


def new_task(task_id: str, key: str = "idem", principal: str = "p1", digest: str = "h1") -> NewTask:
    """A task to insert, with made-up fields."""
    return NewTask(
        id=task_id,
        task_key=f"BE-{task_id}",
        repository="alpha",
        base_ref="HEAD",
        base_commit="c" * 40,
        task_json="{}",
        request_hash=digest,
        principal=principal,
        idempotency_key=key,
    )


QUEUED = NewEvent("queued", "queued", {})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TaskStore]:
    """A fresh store in tmp_path."""
    opened = TaskStore(tmp_path / "tasks.sqlite3")
    yield opened
    opened.close()


def test_new_store_is_at_the_latest_schema_in_wal_mode(tmp_path: Path) -> None:
    """Opening a new file creates every table at SCHEMA_VERSION, in WAL mode."""
    path = tmp_path / "tasks.sqlite3"
    TaskStore(path).close()
    conn = sqlite3.connect(path)
    assert schema_version(conn) == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"tasks", "events", "idempotency_keys", "schema_version"} <= tables
    conn.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A file written by a newer controller is refused instead of being misread."""
    path = tmp_path / "tasks.sqlite3"
    TaskStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this controller"):
        TaskStore(path)


def test_a_new_migration_is_applied_once_and_keeps_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration added later runs on an existing file once, keeping its rows."""
    path = tmp_path / "tasks.sqlite3"
    first = TaskStore(path)
    first.create_task(new_task("a"), QUEUED)
    first.close()
    extra = (
        SCHEMA_VERSION + 1,
        ("ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",),
    )
    monkeypatch.setattr(store_module, "MIGRATIONS", (*store_module.MIGRATIONS, extra))
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    for _ in range(2):
        TaskStore(path).close()
    conn = sqlite3.connect(path)
    assert [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY version")] == [
        *range(1, SCHEMA_VERSION + 2)
    ]
    assert conn.execute("SELECT id, priority FROM tasks").fetchall() == [("a", 0)]
    conn.close()


def test_a_failed_migration_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration that fails half-way is rolled back whole; the version does not move."""
    path = tmp_path / "tasks.sqlite3"
    TaskStore(path).close()
    broken = (SCHEMA_VERSION + 1, ("CREATE TABLE extra (x INTEGER)", "THIS IS NOT SQL"))
    monkeypatch.setattr(store_module, "MIGRATIONS", (*store_module.MIGRATIONS, broken))
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(
        StoreError, match=f"migration to schema version {SCHEMA_VERSION + 1} failed"
    ):
        TaskStore(path)
    conn = sqlite3.connect(path)
    assert schema_version(conn) == SCHEMA_VERSION
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'extra'").fetchone() is None
    conn.close()


def test_a_second_controller_cannot_open_the_same_store(store: TaskStore) -> None:
    """The file lock keeps a second controller off a store whose tasks the first one runs."""
    with pytest.raises(StoreError, match="another controller"):
        TaskStore(store.path)
    reader = TaskStore(store.path, exclusive=False)
    reader.close()


def test_claims_are_fifo_and_attempts_count(store: TaskStore) -> None:
    """claim_next takes the oldest queued task, marks it running with a fresh run id and counts the attempt."""
    for task_id in ("a", "b", "c"):
        store.create_task(new_task(task_id, key=task_id), QUEUED)
    run_ids = iter(["run-1", "run-2", "run-3", "run-4"])
    first = store.claim_next(lambda key: f"{key}/{next(run_ids)}")
    assert first is not None
    assert (first.id, first.status, first.attempts, first.run_id) == (
        "a",
        "running",
        1,
        "BE-a/run-1",
    )
    requeued = store.requeue("a", event=NewEvent("requeued", "again", {}), uncount_attempt=False)
    assert requeued is not None
    assert requeued.status == "queued"
    again = store.claim_next(lambda key: f"{key}/{next(run_ids)}")
    assert again is not None
    assert (again.id, again.attempts, again.run_id) == ("a", 2, "BE-a/run-2")
    store.requeue("a", event=NewEvent("requeued", "shutdown", {}), uncount_attempt=True)
    given_back = store.claim_next(lambda key: f"{key}/{next(run_ids)}")
    assert given_back is not None
    assert (given_back.attempts, given_back.run_id) == (2, "BE-a/run-3")
    assert store.queue_position(store.get("c")) == 2  # type: ignore[arg-type]
    order = []
    while (claimed := store.claim_next(lambda key: key)) is not None:
        order.append(claimed.id)
    assert order == ["b", "c"]


def test_idempotency_key_is_taken_once(store: TaskStore) -> None:
    """A second create under the same principal and key writes nothing and returns the first task."""
    task, digest, created = store.create_task(new_task("a", key="k", digest="h1"), QUEUED)
    assert created
    again, stored_digest, created_again = store.create_task(
        new_task("b", key="k", digest="h2"), QUEUED
    )
    assert not created_again
    assert again.id == task.id
    assert stored_digest == digest == "h1"
    other_principal, _, created_other = store.create_task(
        new_task("c", key="k", principal="p2"), QUEUED
    )
    assert created_other
    assert other_principal.id == "c"
    assert store.get("b") is None


def test_concurrent_creates_with_one_key_make_one_task(store: TaskStore) -> None:
    """Racing submissions with one key produce one task, whatever the thread order."""
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def create(n: int) -> None:
        barrier.wait()
        results.append(store.create_task(new_task(f"t{n}", key="race"), QUEUED)[2])

    threads = [threading.Thread(target=create, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
    assert len(store.list_tasks()) == 1


def test_events_are_complete_only_with_the_final_event(store: TaskStore) -> None:
    """events_after reports a stream complete only once the task is final and every event is read."""
    store.create_task(new_task("a"), QUEUED)
    store.claim_next(lambda _key: "r")
    store.append_event("a", NewEvent("round", "round 1", {"n": 1}))
    events, complete = store.events_after("a", 0)
    assert [e.stage for e in events] == ["queued", "started", "round"]
    assert not complete
    store.finish(
        "a",
        status="succeeded",
        result_json="{}",
        reason=None,
        event=NewEvent("finished", "done", {"status": "succeeded"}),
    )
    events, complete = store.events_after("a", 2)
    assert [e.seq for e in events] == [3, 4]
    assert complete
    _, complete_partial = store.events_after("a", 0, limit=2)
    assert not complete_partial


def test_finish_only_from_an_open_state(store: TaskStore) -> None:
    """A final task cannot be finished again or re-queued."""
    store.create_task(new_task("a"), QUEUED)
    done = NewEvent("finished", "cancelled", {})
    assert store.finish("a", status="cancelled", result_json="{}", reason="r", event=done)
    assert store.finish("a", status="failed", result_json="{}", reason="r", event=done) is None
    assert store.requeue("a", event=done, uncount_attempt=False) is None
    assert store.get("a").status == "cancelled"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="not a final state"):
        store.finish("a", status="running", result_json="{}", reason=None, event=done)


def test_counts_and_readiness_write(store: TaskStore) -> None:
    """count_by_status lists every state; check_writable writes a row."""
    store.create_task(new_task("a"), QUEUED)
    counts = store.count_by_status()
    assert counts["queued"] == 1
    assert counts["succeeded"] == 0
    store.check_writable()


def test_data_survives_reopening(tmp_path: Path) -> None:
    """What was committed is there after the store is closed and opened again."""
    path = tmp_path / "tasks.sqlite3"
    first = TaskStore(path)
    first.create_task(new_task("a"), QUEUED)
    first.close()
    second = TaskStore(path)
    record = second.get("a")
    assert record is not None
    assert record.status == "queued"
    assert second.events_after("a", 0)[0][0].stage == "queued"
    second.close()


def keyed(task_id: str, task_key: str, principal: str, idem: str) -> NewTask:
    """A task with an explicit task key, principal and idempotency key."""
    return NewTask(
        id=task_id,
        task_key=task_key,
        repository="alpha",
        base_ref="HEAD",
        base_commit="c" * 40,
        task_json="{}",
        request_hash="h",
        principal=principal,
        idempotency_key=idem,
    )


def test_a_task_key_belongs_to_the_first_principal(store: TaskStore) -> None:
    """Another principal cannot create a task under a key used in the repository, even once it finished."""
    store.create_task(keyed("a", "BE-1", "p1", "k1"), QUEUED)
    with pytest.raises(TaskKeyTakenError, match="another caller"):
        store.create_task(keyed("b", "BE-1", "p2", "k1"), QUEUED)
    store.finish(
        "a", status="failed", result_json="{}", reason="x", event=NewEvent("finished", "x", {})
    )
    with pytest.raises(TaskKeyTakenError):
        store.create_task(keyed("c", "BE-1", "p2", "k2"), QUEUED)
    assert store.get("b") is None
    # The same key in another repository is another key (and another branch).
    _, _, created = store.create_task(
        replace(keyed("d", "BE-1", "p2", "k3"), repository="beta"), QUEUED
    )
    assert created
    assert store.get("c") is None


def test_one_principal_runs_a_key_once_at_a_time(store: TaskStore) -> None:
    """The owner of a key may not queue it twice, but may again once the first task is final."""
    store.create_task(keyed("a", "BE-2", "p1", "k1"), QUEUED)
    with pytest.raises(TaskKeyTakenError, match="queued or running as task a"):
        store.create_task(keyed("b", "BE-2", "p1", "k2"), QUEUED)
    store.finish(
        "a", status="failed", result_json="{}", reason="x", event=NewEvent("finished", "x", {})
    )
    _, _, created = store.create_task(keyed("c", "BE-2", "p1", "k3"), QUEUED)
    assert created


def test_racing_principals_get_one_task_per_key(store: TaskStore) -> None:
    """Eight principals submitting one key at once: exactly one task is created, the rest are refused."""
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def create(n: int) -> None:
        barrier.wait()
        try:
            store.create_task(keyed(f"t{n}", "BE-3", f"p{n}", "k"), QUEUED)
            outcomes.append("created")
        except TaskKeyTakenError:
            outcomes.append("taken")

    threads = [threading.Thread(target=create, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["created"] + ["taken"] * 7
    assert len(store.list_tasks()) == 1


def test_keys_that_differ_only_in_case_are_one_key(store: TaskStore) -> None:
    """`be-4` is the key `BE-4` (their branches collide where names ignore case): another principal is refused."""
    store.create_task(keyed("a", "BE-4", "p1", "k1"), QUEUED)
    with pytest.raises(TaskKeyTakenError):
        store.create_task(keyed("b", "be-4", "p2", "k2"), QUEUED)
    with pytest.raises(TaskKeyTakenError):
        store.create_task(keyed("c", "Be-4", "p1", "k3"), QUEUED)  # the owner's, while active


def _reference_views(store: TaskStore, redact: Callable[[str], str]) -> list[str]:
    """Each task's TaskView JSON as the single-task route builds it (record, model, pydantic)."""
    from controller.api.models import TaskView  # noqa: PLC0415 - the API model is the reference here

    return [
        TaskView(
            id=record.id,
            task_key=record.task_key,
            repository=record.repository,
            base_ref=record.base_ref,
            base_commit=record.base_commit,
            status=record.status,
            queue_position=store.queue_position(record),
            attempts=record.attempts,
            run_id=record.run_id,
            cancel_requested=record.cancel_requested,
            reason=None if record.reason is None else redact(record.reason),
            created_by=record.principal,
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
        ).model_dump_json(by_alias=True)
        for record in store.list_tasks(limit=1000)
    ]


def test_list_task_views_is_the_task_view_json_of_every_state(store: TaskStore) -> None:
    """The one-query listing writes, byte for byte, the JSON the TaskView model writes, in every state."""
    for n in range(5):
        store.create_task(new_task(f"t{n}", key=f"k{n}"), QUEUED)
    store.claim_next(lambda key: f"run-{key}")  # t0 runs; t1..t4 queued at positions 1..4
    store.mark_cancel_requested("t0", NewEvent("cancel_requested", "asked", {}))
    store.claim_next(lambda key: f"run-{key}")
    reason = 'failed in /srv/secret/repo/x.py: "quoted"\ttab \u00e9 \x01'
    store.finish(
        "t1", status="failed", result_json="{}", reason=reason, event=NewEvent("finished", "f", {})
    )
    # A timestamp whose fraction is zero: pydantic writes no fraction at all.
    with store._lock:  # a row as an older clock could have written it
        store._conn.execute(
            "UPDATE tasks SET created_at = '2026-01-02T03:04:05.000000+00:00' WHERE id = 't2'"
        )

    def redact(text: str) -> str:
        return text.replace("/srv/secret", "<host path>")

    listed = store.list_task_views(PageQuery(limit=100), redact=redact)
    assert [json_text for _, json_text in listed] == _reference_views(store, redact)
    assert [seq for seq, _ in listed] == sorted(seq for seq, _ in listed)
    assert "/srv/secret" not in "".join(view for _, view in listed)
    assert '"createdAt":"2026-01-02T03:04:05Z"' in listed[2][1]
    assert [json.loads(view)["queuePosition"] for _, view in listed] == [None, None, 1, 2, 3]


def test_list_task_views_filters_and_pages_by_keyset(store: TaskStore) -> None:
    """Status, repository and after_seq filter in the query; an empty repository list sees nothing."""
    for n in range(6):
        store.create_task(new_task(f"t{n}", key=f"k{n}"), QUEUED)
    views = store.list_task_views(PageQuery(limit=100), redact=str)
    seqs = [seq for seq, _ in views]
    page = store.list_task_views(PageQuery(after_seq=seqs[1], limit=2), redact=str)
    assert [seq for seq, _ in page] == seqs[2:4]
    assert store.list_task_views(PageQuery(repositories=("beta",)), redact=str) == []
    assert store.list_task_views(PageQuery(repositories=()), redact=str) == []
    assert len(store.list_task_views(PageQuery(repositories=("alpha", "beta")), redact=str)) == 6
    assert store.list_task_views(PageQuery(status="running"), redact=str) == []
    assert len(store.list_task_views(PageQuery(status="queued", limit=100), redact=str)) == 6


def test_list_task_views_is_one_statement(store: TaskStore) -> None:
    """A page of queued tasks is read with one query: no query per task, no transaction."""
    for n in range(20):
        store.create_task(new_task(f"t{n}", key=f"k{n}"), QUEUED)
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    try:
        views = store.list_task_views(PageQuery(limit=50), redact=str)
    finally:
        store._conn.set_trace_callback(None)
    assert len(views) == 20
    # One SELECT for the page; the pragma reads the version its page is kept under.
    assert [s.split()[0] for s in statements] == ["PRAGMA", "SELECT"], statements
    assert statements[0] == "PRAGMA data_version"


def test_a_listed_page_is_reused_until_a_task_changes(store: TaskStore) -> None:
    """Every kind of write to a task invalidates the kept pages; an event or another query does not serve them."""
    for n in range(3):
        store.create_task(new_task(f"t{n}", key=f"k{n}"), QUEUED)
    query = PageQuery(limit=10)
    assert store.cached_task_views(query, redact=str) is None  # never built
    built = store.list_task_views(query, redact=str)
    assert store.cached_task_views(query, redact=str) == built
    assert store.cached_task_views(PageQuery(limit=9), redact=str) is None
    assert store.cached_task_views(query, redact=str.upper) is None  # another redactor

    store.append_event("t0", NewEvent("progress", "an event changes no task", {}))
    assert store.cached_task_views(query, redact=str) == built

    writes: list[Callable[[], object]] = [
        lambda: store.claim_next(lambda key: f"run-{key}"),
        lambda: store.mark_cancel_requested("t0", NewEvent("cancel_requested", "asked", {})),
        lambda: store.requeue("t0", event=QUEUED, uncount_attempt=True),
        lambda: store.claim_next(lambda key: f"run-{key}"),
        lambda: store.finish(
            "t0", status="failed", result_json="{}", reason="r", event=NewEvent("finished", "f", {})
        ),
        lambda: store.create_task(new_task("t9", key="k9"), QUEUED),
    ]
    for write in writes:
        before = store.list_task_views(query, redact=str)
        write()
        assert store.cached_task_views(query, redact=str) is None, write
        after = store.list_task_views(query, redact=str)
        assert after != before
        assert store.cached_task_views(query, redact=str) == after


def test_a_write_by_hand_to_the_tasks_table_also_invalidates(store: TaskStore) -> None:
    """The count comes from triggers on the table, not from the store's methods: any UPDATE counts."""
    store.create_task(new_task("t0"), QUEUED)
    query = PageQuery()
    store.list_task_views(query, redact=str)
    with store._lock:
        store._conn.execute("UPDATE tasks SET base_ref = 'other' WHERE id = 't0'")
    assert store.cached_task_views(query, redact=str) is None
    assert '"baseRef":"other"' in store.list_task_views(query, redact=str)[0][1]


def test_a_page_built_before_a_newer_one_is_not_kept(store: TaskStore) -> None:
    """A slow reader that stores its page after a write and a newer page cannot bring old data back."""
    store.create_task(new_task("t0"), QUEUED)
    query = PageQuery()
    stale = store.list_task_views(query, redact=str)
    with store._lock:
        stale_version = store._version()
    store.create_task(new_task("t1", key="k1"), QUEUED)
    fresh = store.list_task_views(query, redact=str)
    store._pages.put((str, query), stale_version, stale)
    assert store.cached_task_views(query, redact=str) == fresh


def test_a_commit_by_another_connection_also_invalidates(store: TaskStore) -> None:
    """An operator's sqlite3 shell writes behind the store's back: data_version catches it."""
    store.create_task(new_task("t0"), QUEUED)
    query = PageQuery()
    store.list_task_views(query, redact=str)
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.execute("UPDATE tasks SET base_ref = 'by-hand' WHERE id = 't0'")
    finally:
        other.close()
    assert store.cached_task_views(query, redact=str) is None
    assert '"baseRef":"by-hand"' in store.list_task_views(query, redact=str)[0][1]


def test_a_page_is_not_served_while_a_write_holds_the_lock(store: TaskStore) -> None:
    """The event loop never waits on a commit: with the lock taken elsewhere, the answer is 'build it'."""
    store.create_task(new_task("t0"), QUEUED)
    query = PageQuery()
    store.list_task_views(query, redact=str)
    held = threading.Event()
    release = threading.Event()

    def writer() -> None:
        with store._lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert held.wait(10)
        assert store.cached_task_views(query, redact=str) is None
    finally:
        release.set()
        thread.join()
    assert store.cached_task_views(query, redact=str) is not None


def test_a_kept_page_cannot_be_changed_by_its_reader(store: TaskStore) -> None:
    """Each caller gets its own list: changing one does not change what the next caller is given."""
    store.create_task(new_task("t0"), QUEUED)
    query = PageQuery()
    first = store.list_task_views(query, redact=str)
    first.clear()
    served = store.cached_task_views(query, redact=str)
    assert served is not None
    assert len(served) == 1
    served.append((0, "{}"))
    assert store.cached_task_views(query, redact=str) == store.list_task_views(query, redact=str)
