"""The task routes through real HTTP: submit, idempotency, list, result, cancel, audit, queue order."""

from __future__ import annotations

import threading
from collections.abc import Callable

from controller.api.models import TaskPage, TaskView
from tests.controller.api.conftest import (
    TOKEN_ALL,
    TOKEN_ALPHA,
    TOKEN_BETA,
    ServedApi,
    SettingsFactory,
    task_body,
)
from tests.controller.api.fake_executor import LEAKED_TEXT, FakeExecutor, wait_for


def submit(api: ServedApi, body: dict[str, object], key: str, token: str = TOKEN_ALL) -> dict:  # type: ignore[type-arg]
    """POST a task and return the JSON answer (any status)."""
    response = api.client(token).post("/v1/tasks", json=body, headers={"Idempotency-Key": key})
    return {"status": response.status_code, "headers": response.headers, "body": response.json()}


def wait_status(api: ServedApi, task_id: str, *statuses: str) -> dict:  # type: ignore[type-arg]
    """Poll the task until it is in one of ``statuses``; its last view."""
    client = api.client()
    seen: dict = {}  # type: ignore[type-arg]

    def reached() -> bool:
        seen.update(client.get(f"/v1/tasks/{task_id}").json())
        return seen.get("status") in statuses

    wait_for(reached, what=f"task {task_id} to be {statuses}")
    return seen


def test_submit_runs_the_task_to_a_result(api: ServedApi, fake: FakeExecutor) -> None:
    """A submission answers 202 with the queued task, runs once, and its result is the executor's."""
    answer = submit(api, task_body("BE-7"), "key-1")
    assert answer["status"] == 202
    task = answer["body"]
    assert task["taskKey"] == "BE-7"
    assert task["repository"] == "alpha"
    assert len(task["baseCommit"]) == 40
    assert answer["headers"]["Location"] == f"/v1/tasks/{task['id']}"
    assert "Idempotent-Replayed" not in answer["headers"]
    done = wait_status(api, task["id"], "succeeded")
    assert done["attempts"] == 1
    assert done["finishedAt"] is not None
    result = api.client().get(f"/v1/tasks/{task['id']}/result")
    assert result.status_code == 200
    assert result.json()["status"] == "succeeded"
    assert result.json()["git_commit"] == "a" * 40
    assert [c["task_key"] for c in fake.calls()] == ["BE-7"]
    assert fake.calls()[0]["base_ref"] == task["baseCommit"]


def test_same_key_same_body_is_one_task_and_one_run(api: ServedApi, fake: FakeExecutor) -> None:
    """Submitting twice with one key returns the same task and calls the executor once."""
    first = submit(api, task_body("BE-8"), "same-key")
    # The same body with contextJson sent as a JSON string is the same request once validated.
    again_body = task_body("BE-8")
    again_body["task"]["contextJson"] = '{"BE-8-ctx": {"relevant_files": ["README.md"]}}'
    second = submit(api, again_body, "same-key")
    assert first["status"] == second["status"] == 202
    assert second["body"]["id"] == first["body"]["id"]
    assert second["headers"]["Idempotent-Replayed"] == "true"
    wait_status(api, first["body"]["id"], "succeeded")
    third = submit(api, task_body("BE-8"), "same-key")
    assert third["body"]["id"] == first["body"]["id"]
    assert third["body"]["status"] == "succeeded"
    assert len(fake.calls()) == 1
    listing = api.client().get("/v1/tasks").json()
    assert len(listing["items"]) == 1


def test_same_key_other_body_is_a_conflict(api: ServedApi, fake: FakeExecutor) -> None:
    """Reusing a key with a different body answers 409 idempotency_conflict and starts nothing."""
    first = submit(api, task_body("BE-9"), "reused")
    wait_status(api, first["body"]["id"], "succeeded")
    other = submit(api, task_body("BE-9", description="Something else."), "reused")
    assert other["status"] == 409
    assert other["body"]["error"]["code"] == "idempotency_conflict"
    other_ref = {**task_body("BE-9"), "baseRef": "main"}
    assert submit(api, other_ref, "reused")["status"] == 409
    assert len(fake.calls()) == 1


def test_keys_are_per_token(api: ServedApi, fake: FakeExecutor) -> None:
    """Two tokens using the same Idempotency-Key get two tasks: one caller's key cannot reach another's task."""
    from tests.controller.api.conftest import TOKEN_ALPHA  # noqa: PLC0415 - only this test needs it

    first = submit(api, task_body("BE-10"), "shared", token=TOKEN_ALL)
    second = submit(api, task_body("BE-10B"), "shared", token=TOKEN_ALPHA)
    assert first["status"] == second["status"] == 202
    assert first["body"]["id"] != second["body"]["id"]
    wait_for(lambda: len(fake.calls()) == 2, what="two runs")


def test_missing_idempotency_key_is_422(api: ServedApi) -> None:
    """The Idempotency-Key header is required: without it the answer is 422 validation_error."""
    response = api.client().post("/v1/tasks", json=task_body())
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert "idempotency-key" in error["message"]


def test_invalid_task_is_422_without_echoing_input(api: ServedApi) -> None:
    """A malformed task answers 422 naming the field, without repeating the submitted value."""
    secret_like = "sk-ant-api03/THIS-MUST-NOT-COME-BACK"  # noqa: S105 - a fake, to test echoing
    body = task_body()
    body["task"]["taskKey"] = secret_like
    body["task"]["ownsPaths"] = []
    response = api.client().post("/v1/tasks", json=body, headers={"Idempotency-Key": "k"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert "body.task.taskKey" in error["message"]
    assert "body.task.ownsPaths" in error["message"]
    assert secret_like not in response.text
    extra = task_body()
    extra["hostPath"] = "/etc"
    response = api.client().post("/v1/tasks", json=extra, headers={"Idempotency-Key": "k2"})
    assert response.status_code == 422
    assert "body.hostPath" in response.json()["error"]["message"]


def test_not_json_is_422(api: ServedApi) -> None:
    """A body that is not JSON answers 422 validation_error."""
    response = api.client().post(
        "/v1/tasks",
        content=b"{not json",
        headers={"Idempotency-Key": "k", "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


def test_unknown_repository_is_404(api: ServedApi) -> None:
    """A repository name the settings do not know answers 404 repository_not_found."""
    answer = submit(api, task_body(repository="gamma"), "k")
    assert answer["status"] == 404
    assert answer["body"]["error"]["code"] == "repository_not_found"


def test_a_path_is_not_a_repository_name(api: ServedApi) -> None:
    """A host path in place of a repository name is refused by the schema (422)."""
    answer = submit(api, task_body(repository="/etc"), "k")
    assert answer["status"] == 422


def test_unknown_base_ref_is_422(api: ServedApi, fake: FakeExecutor) -> None:
    """A baseRef that names no commit answers 422 invalid_base_ref and queues nothing."""
    answer = submit(api, {**task_body(), "baseRef": "no-such-branch"}, "k")
    assert answer["status"] == 422
    assert answer["body"]["error"]["code"] == "invalid_base_ref"
    option = submit(api, {**task_body(), "baseRef": "--output=/tmp/x"}, "k2")
    assert option["status"] == 422
    assert api.client().get("/v1/tasks").json()["items"] == []
    assert fake.calls() == []


def test_unknown_task_is_404(api: ServedApi) -> None:
    """Every route of a task id that does not exist answers 404 task_not_found."""
    client = api.client()
    missing = "0" * 32
    for method, path in [
        ("GET", f"/v1/tasks/{missing}"),
        ("GET", f"/v1/tasks/{missing}/result"),
        ("GET", f"/v1/tasks/{missing}/events"),
        ("GET", f"/v1/tasks/{missing}/audit"),
        ("POST", f"/v1/tasks/{missing}/cancel"),
    ]:
        response = client.request(method, path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "task_not_found"
    assert client.get("/v1/tasks/not-an-id").status_code == 422


def test_result_is_409_while_running_then_200(api: ServedApi, fake: FakeExecutor) -> None:
    """The result answers 409 task_not_finished while the task runs, and 200 once it finished."""
    task = submit(api, task_body("HOLD-1"), "k")["body"]
    wait_status(api, task["id"], "running")
    early = api.client().get(f"/v1/tasks/{task['id']}/result")
    assert early.status_code == 409
    assert early.json()["error"]["code"] == "task_not_finished"
    fake.release("HOLD-1")
    wait_status(api, task["id"], "succeeded")
    assert api.client().get(f"/v1/tasks/{task['id']}/result").status_code == 200


def test_cancel_a_running_task(api: ServedApi, fake: FakeExecutor) -> None:
    """Cancelling a running task sets its cancel event; it ends cancelled and its container is gone."""
    task = submit(api, task_body("HOLD-2"), "k")["body"]
    wait_status(api, task["id"], "running")
    response = api.client().post(f"/v1/tasks/{task['id']}/cancel")
    assert response.status_code == 202
    assert response.json()["cancelRequested"] is True
    done = wait_status(api, task["id"], "cancelled")
    assert done["reason"]
    result = api.client().get(f"/v1/tasks/{task['id']}/result").json()
    assert result["status"] == "cancelled"
    assert fake.containers() == []
    again = api.client().post(f"/v1/tasks/{task['id']}/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "task_already_finished"


def test_cancel_a_queued_task(
    serve_api: Callable[..., ServedApi], make_settings: SettingsFactory, fake: FakeExecutor
) -> None:
    """Cancelling a queued task ends it at once (200 cancelled); it never reaches the executor."""
    api = serve_api(make_settings(max_concurrent_tasks=1))
    blocker = submit(api, task_body("HOLD-3"), "k1")["body"]
    queued = submit(api, task_body("BE-11"), "k2")["body"]
    wait_status(api, blocker["id"], "running")
    assert api.client().get(f"/v1/tasks/{queued['id']}").json()["queuePosition"] == 1
    response = api.client().post(f"/v1/tasks/{queued['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    fake.release("HOLD-3")
    wait_status(api, blocker["id"], "succeeded")
    assert [c["task_key"] for c in fake.calls()] == ["HOLD-3"]


def test_queue_runs_in_submission_order_with_concurrency_one(
    serve_api: Callable[..., ServedApi], make_settings: SettingsFactory, fake: FakeExecutor
) -> None:
    """With one worker, tasks wait in FIFO order and run one after the other in that order."""
    api = serve_api(make_settings(max_concurrent_tasks=1))
    keys = ["HOLD-A", "BE-B", "BE-C", "BE-D"]
    ids = [submit(api, task_body(key), f"k-{key}")["body"]["id"] for key in keys]
    wait_status(api, ids[0], "running")
    positions = [api.client().get(f"/v1/tasks/{i}").json()["queuePosition"] for i in ids[1:]]
    assert positions == [1, 2, 3]
    queued = api.client().get("/v1/tasks", params={"status": "queued"}).json()["items"]
    assert [t["taskKey"] for t in queued] == keys[1:]
    fake.release("HOLD-A")
    for task_id in ids:
        wait_status(api, task_id, "succeeded")
    assert [c["task_key"] for c in fake.calls()] == keys


def test_concurrency_limit_holds(
    serve_api: Callable[..., ServedApi], make_settings: SettingsFactory, fake: FakeExecutor
) -> None:
    """With a limit of two, a third task waits while two run."""
    api = serve_api(make_settings(max_concurrent_tasks=2))
    ids = [submit(api, task_body(f"HOLD-{n}"), f"k{n}")["body"]["id"] for n in range(3)]
    wait_status(api, ids[0], "running")
    wait_status(api, ids[1], "running")
    assert api.client().get(f"/v1/tasks/{ids[2]}").json()["status"] == "queued"
    assert len(fake.calls()) == 2
    fake.release()
    wait_status(api, ids[2], "succeeded")


def test_list_filters_and_pages(api: ServedApi, fake: FakeExecutor) -> None:
    """The list filters by status and repository and pages with an opaque cursor, in order."""
    ids = [submit(api, task_body(f"BE-{n}"), f"k{n}")["body"]["id"] for n in range(5)]
    failing = submit(api, task_body("FAIL-1", repository="beta"), "kf")["body"]["id"]
    for task_id in ids:
        wait_status(api, task_id, "succeeded")
    wait_status(api, failing, "failed")
    client = api.client()
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 2, "repository": "alpha"}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/tasks", params=params).json()
        seen += [t["id"] for t in page["items"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == ids
    failed = client.get("/v1/tasks", params={"status": "failed"}).json()["items"]
    assert [t["id"] for t in failed] == [failing]
    assert failed[0]["reason"] == "the checks failed"
    bad = client.get("/v1/tasks", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "validation_error"  # the spec's pattern refuses it
    # Base64 of "after:xyz": the right alphabet and prefix, still not a cursor this API makes.
    forged = client.get("/v1/tasks", params={"cursor": "YWZ0ZXI6eHl6"})
    assert forged.status_code == 422
    assert forged.json()["error"]["code"] == "validation_error"
    assert client.get("/v1/tasks", params={"status": "sleeping"}).status_code == 422


def test_list_items_are_the_task_views_a_token_may_see(
    serve_api: Callable[..., ServedApi], make_settings: SettingsFactory, fake: FakeExecutor
) -> None:
    """Every list item equals GET /v1/tasks/{id} (running, queued, failed), per token's repositories."""
    settings = make_settings(max_concurrent_tasks=1)
    api = serve_api(settings)
    failed = submit(api, task_body("FAIL-9", repository="beta"), "kf")["body"]["id"]
    wait_status(api, failed, "failed")
    held = submit(api, task_body("HOLD-9"), "kh")["body"]["id"]
    wait_status(api, held, "running")
    queued = [submit(api, task_body(f"BE-{n}"), f"kq{n}")["body"]["id"] for n in range(3)]
    # A reason naming a host path (as an old or careless writer could have stored it).
    secret = f"{settings.runs_dir}/run-1/log.txt"
    store = api.service.store
    with store._lock:
        store._conn.execute("UPDATE tasks SET reason = ? WHERE id = ?", (f"see {secret}", failed))
    client = api.client()
    statements: list[tuple[int, str]] = []
    store._conn.set_trace_callback(lambda sql: statements.append((threading.get_ident(), sql)))
    try:
        listed = client.get("/v1/tasks")
    finally:
        store._conn.set_trace_callback(None)
    # The request's thread ran one query (and read the version its page is kept under): no
    # per-task query, no transaction around it.
    (lister,) = {ident for ident, sql in statements if "json_object" in sql}
    ran = [sql.split()[0] for ident, sql in statements if ident == lister]
    assert ran == ["PRAGMA", "SELECT"], ran
    assert listed.status_code == 200
    assert listed.headers["content-type"] == "application/json"
    items = listed.json()["items"]
    assert [t["id"] for t in items] == [failed, held, *queued]
    for item in items:
        assert item == client.get(f"/v1/tasks/{item['id']}").json()
    assert [t["queuePosition"] for t in items] == [None, None, 1, 2, 3]
    page = TaskPage(items=[TaskView.model_validate(t) for t in items], next_cursor=None)
    assert listed.content == page.model_dump_json(by_alias=True).encode()
    assert str(settings.runs_dir) not in listed.text
    assert items[0]["reason"] == "see <host path>"
    alpha = api.client(TOKEN_ALPHA).get("/v1/tasks").json()["items"]
    assert [t["id"] for t in alpha] == [held, *queued]
    beta = api.client(TOKEN_BETA).get("/v1/tasks").json()["items"]
    assert [t["id"] for t in beta] == [failed]
    assert (
        api.client(TOKEN_BETA).get("/v1/tasks", params={"repository": "alpha"}).status_code == 403
    )
    fake.release("HOLD-9")


def test_audit_comes_from_the_executor(api: ServedApi, fake: FakeExecutor) -> None:
    """The audit is the executor's record of the latest run; 404 before any run."""
    held = submit(api, task_body("HOLD-9"), "k1")
    task_id = held["body"]["id"]
    wait_status(api, task_id, "running")
    audit = api.client().get(f"/v1/tasks/{task_id}/audit")
    assert audit.status_code == 200
    run_id = api.client().get(f"/v1/tasks/{task_id}").json()["runId"]
    assert run_id.startswith("HOLD-9-")
    assert audit.json()["runId"] == run_id
    assert audit.json()["audit"]["policyDigest"] == "sha256:fake"
    fake.release()


def test_audit_is_404_before_a_run(
    serve_api: Callable[..., ServedApi], make_settings: SettingsFactory
) -> None:
    """A queued task has no run, so no audit: 404 audit_not_found."""
    api = serve_api(make_settings(max_concurrent_tasks=1))
    submit(api, task_body("HOLD-X"), "k1")
    queued = submit(api, task_body("BE-Y"), "k2")["body"]
    response = api.client().get(f"/v1/tasks/{queued['id']}/audit")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "audit_not_found"


def test_executor_errors_become_error_results_without_leaks(
    api: ServedApi, fake: FakeExecutor
) -> None:
    """An executor crash ends the task as error with a neutral reason; the crash text stays in the log."""
    boom = submit(api, task_body("BOOM-1"), "k1")["body"]
    sandbox = submit(api, task_body("SBX-1"), "k2")["body"]
    boom_view = wait_status(api, boom["id"], "error")
    sandbox_view = wait_status(api, sandbox["id"], "error")
    assert LEAKED_TEXT not in str(boom_view)
    assert "internal error in the executor" in boom_view["reason"]
    assert sandbox_view["reason"].startswith("sandbox_error:")
    result = api.client().get(f"/v1/tasks/{boom['id']}/result")
    assert LEAKED_TEXT not in result.text
    events = api.client().get(f"/v1/tasks/{boom['id']}/events")
    assert LEAKED_TEXT not in events.text


def test_shutting_down_refuses_new_tasks(api: ServedApi, fake: FakeExecutor) -> None:
    """Once the service stops accepting work, a submission answers 503 shutting_down."""
    api.service.stop_accepting()
    answer = submit(api, task_body(), "k")
    assert answer["status"] == 503
    assert answer["body"]["error"]["code"] == "shutting_down"
    assert answer["headers"]["Retry-After"]
    ready = api.client(None).get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["error"]["code"] == "not_ready"
    assert fake.calls() == []


def test_queue_full_is_503(
    serve_api: Callable[..., ServedApi], make_settings: SettingsFactory
) -> None:
    """Beyond max_queued_tasks waiting tasks, a submission answers 503 queue_full."""
    api = serve_api(make_settings(max_concurrent_tasks=1, max_queued_tasks=1))
    first = submit(api, task_body("HOLD-Q"), "k1")["body"]
    wait_status(api, first["id"], "running")
    assert submit(api, task_body("BE-Q1"), "k2")["status"] == 202
    full = submit(api, task_body("BE-Q2"), "k3")
    assert full["status"] == 503
    assert full["body"]["error"]["code"] == "queue_full"


def test_body_over_the_limit_is_413(
    serve_api: Callable[..., ServedApi], make_settings: SettingsFactory
) -> None:
    """A body over max_request_bytes answers 413 request_too_large, declared or streamed."""
    api = serve_api(make_settings(max_request_bytes=2048))
    body = task_body(description="x" * 4000)
    declared = api.client().post("/v1/tasks", json=body, headers={"Idempotency-Key": "k"})
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "request_too_large"

    def chunks() -> object:
        yield b'{"task": {"description": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}}'

    streamed = api.client().post(
        "/v1/tasks",
        content=chunks(),  # type: ignore[arg-type]
        headers={"Idempotency-Key": "k2", "Content-Type": "application/json"},
    )
    assert streamed.status_code == 413
    assert streamed.json()["error"]["code"] == "request_too_large"
