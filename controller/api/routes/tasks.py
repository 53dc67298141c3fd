"""``/v1/tasks``: submit, list, read, follow, cancel and audit tasks.

Routes only translate HTTP to service calls and back; the checks that need
the caller (which repositories a token may use) happen here, the rest in
:class:`~controller.service.TaskService`. Handlers are plain ``def``: the
service blocks (SQLite, git), so FastAPI runs them in its thread pool.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response

from controller.api.deps import (
    ContextDep,
    PrincipalDep,
    ServiceDep,
    require_repository,
    visible_task,
)
from controller.api.errors import InvalidCursorError, error_responses
from controller.api.events import EventStreamResponse, task_event_stream
from controller.api.models import (
    CURSOR_PATTERN,
    IDEMPOTENCY_KEY_PATTERN,
    TASK_ID_PATTERN,
    AuditView,
    EventView,
    RepositoryName,
    SubmitTaskRequest,
    TaskPage,
    TaskView,
)
from controller.api.redact import HostPathRedactor  # noqa: TC001 - used at runtime
from controller.service import TaskService  # noqa: TC001 - used in annotations FastAPI never sees
from controller.store import PageQuery, TaskRecord, TaskState
from taskbox_wire.contract import TaskResult

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])

TaskId = Annotated[str, Path(pattern=TASK_ID_PATTERN, description="Task id (32 hex characters).")]

#: Sequence numbers are SQLite integers (64-bit); anything larger is refused up front.
MAX_EVENT_SEQ = 2**63 - 1

_CURSOR = re.compile(r"^after:(\d{1,18})$")


def encode_cursor(seq: int) -> str:
    """An opaque cursor that resumes a listing after ``seq``."""
    return base64.urlsafe_b64encode(f"after:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The ``seq`` a cursor resumes after; InvalidCursorError for anything this API did not make."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidCursorError("cursor is not one this API handed out") from exc
    match = _CURSOR.match(text)
    if match is None:
        raise InvalidCursorError("cursor is not one this API handed out")
    return int(match.group(1))


def task_view(service: TaskService, record: TaskRecord, redactor: HostPathRedactor) -> TaskView:
    """The API form of a task (host paths in its reason redacted)."""
    return TaskView(
        id=record.id,
        task_key=record.task_key,
        repository=record.repository,
        base_ref=record.base_ref,
        base_commit=record.base_commit,
        status=record.status,
        queue_position=service.store.queue_position(record),
        attempts=record.attempts,
        run_id=record.run_id,
        cancel_requested=record.cancel_requested,
        reason=None if record.reason is None else redactor.redact_text(record.reason),
        created_by=record.principal,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
    )


#: OpenAPI links from a submitted task to the routes that take its id (clients and stateful tests).
_TASK_LINKS = {
    name: {"operationId": operation, "parameters": {"task_id": "$response.body#/id"}}
    for name, operation in (
        ("GetTask", "get_task"),
        ("GetResult", "get_result"),
        ("FollowEvents", "follow_events"),
        ("CancelTask", "cancel_task"),
        ("GetAudit", "get_audit"),
    )
}


@router.post(
    "",
    status_code=202,
    summary="Submit a task",
    operation_id="submit_task",
    responses={
        202: {
            "description": (
                "The task was admitted and queued (or replayed). Admission already checked "
                "the mount plan, the policy's maximum and the branch `taskbox/<taskKey>`."
            ),
            "links": _TASK_LINKS,
        },
        **error_responses(400, 401, 403, 404, 409, 413, 422, 500, 503),
    },
)
def submit_task(
    *,
    body: SubmitTaskRequest,
    idempotency_key: Annotated[
        str,
        Header(
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description=(
                "Required. The same key with the same body returns the same task (no second run); "
                "with another body it is a 409 `idempotency_conflict`. Keys are per token."
            ),
        ),
    ],
    principal: PrincipalDep,
    service: ServiceDep,
    context: ContextDep,
    response: Response,
) -> TaskView:
    """Queue a task on a repository (by name). Answers 202 with the task; follow it with its events.

    The task is admitted first, as its run would be: an owned path the mount plan
    refuses (``..``, absolute, a control character, a deny rule such as ``.env``, a
    symlink) or resources above the policy's maximum answer 422 ``invalid_task``
    with the plan's reasons. A ``taskKey`` whose branch ``taskbox/<taskKey>`` exists
    answers 409 ``branch_exists``; a ``taskKey`` another token used in the repository,
    or one already queued or running, answers 409 ``task_key_taken``.

    A retry with the same ``Idempotency-Key`` and body answers the same task
    (header ``Idempotent-Replayed: true``) and never starts a second run.
    """
    require_repository(principal, body.repository)
    submission = service.submit(
        principal=principal.id,
        idempotency_key=idempotency_key,
        task=body.task,
        repository=body.repository,
        base_ref=body.base_ref,
    )
    response.headers["Location"] = f"/v1/tasks/{submission.task.id}"
    if submission.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return task_view(service, visible_task(principal, submission.task), context.redactor)


@router.get(
    "",
    summary="List tasks",
    operation_id="list_tasks",
    response_model=TaskPage,
    responses=error_responses(401, 403, 422, 500, 503),
)
async def list_tasks(
    *,
    principal: PrincipalDep,
    service: ServiceDep,
    context: ContextDep,
    status: Annotated[TaskState | None, Query(description="Only tasks in this state.")] = None,
    repository: Annotated[
        RepositoryName | None, Query(description="Only tasks of this repository.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size.")] = 50,
    cursor: Annotated[
        str | None,
        Query(
            max_length=64,
            pattern=CURSOR_PATTERN,
            description="`nextCursor` of the previous page (opaque; any other value is 422).",
        ),
    ] = None,
) -> Response:
    """Tasks the token may see, in submission order, one page at a time."""
    # The page is one keyset query in which SQLite writes each task's TaskView JSON (queue
    # position and redacted reason included); the body is those strings joined and sent as is.
    # A record and a model per task, then FastAPI's validate, walk and encode of the page, cost
    # several times the query (issue 15). response_model keeps the documented schema.
    # An orchestrator polls: while no task changed, the page last built for the same query is
    # answered on the event loop; otherwise the query runs in a worker thread (the service).
    repositories = principal.visible()
    if repository is not None:
        require_repository(principal, repository)
        repositories = [repository]
    after = 0 if cursor is None else decode_cursor(cursor)
    query = PageQuery(
        status=status,
        repositories=None if repositories is None else tuple(repositories),
        after_seq=after,
        limit=limit + 1,
    )
    views = await service.list_task_views(query, redact=context.redactor.redact_text)
    shown = views[:limit]
    next_cursor = encode_cursor(shown[-1][0]) if len(views) > limit else None
    # The same bytes TaskPage.model_dump_json would write (test_tasks.py compares them).
    body = "".join(
        (
            '{"items":[',
            ",".join(view for _, view in shown),
            '],"nextCursor":',
            json.dumps(next_cursor),
            "}",
        )
    )
    return Response(content=body, media_type="application/json")


@router.get(
    "/{task_id}",
    summary="Get a task",
    operation_id="get_task",
    responses=error_responses(401, 404, 422, 500),
)
def get_task(
    task_id: TaskId, principal: PrincipalDep, service: ServiceDep, context: ContextDep
) -> TaskView:
    """The task's state (404 for a task of a repository this token may not use)."""
    return task_view(service, visible_task(principal, service.get(task_id)), context.redactor)


@router.get(
    "/{task_id}/result",
    summary="Get a task's result",
    operation_id="get_result",
    responses=error_responses(401, 404, 409, 422, 500),
)
def get_result(
    task_id: TaskId, principal: PrincipalDep, service: ServiceDep, context: ContextDep
) -> TaskResult:
    """The result as the controller checked it; 409 ``task_not_finished`` while queued or running."""
    visible_task(principal, service.get(task_id))
    result = service.result(task_id)
    return TaskResult.model_validate(context.redactor.redact(result.model_dump(mode="json")))


@router.get(
    "/{task_id}/events",
    summary="Follow a task's events (server-sent events)",
    operation_id="follow_events",
    response_class=EventStreamResponse,
    responses={
        200: {
            "model": EventView,
            "description": (
                "A `text/event-stream`: each event has `id` = its sequence number, "
                "`event` = its stage and `data` = the JSON below. The stream ends after "
                "the `finished` event."
            ),
        },
        204: {"description": "The task is finished and every event was already delivered."},
        **error_responses(401, 404, 422, 500),
    },
)
def follow_events(
    *,
    task_id: TaskId,
    principal: PrincipalDep,
    service: ServiceDep,
    context: ContextDep,
    last_event_id: Annotated[
        int | None,
        Header(
            ge=0,
            le=MAX_EVENT_SEQ,
            description="Resume after this event (EventSource sends it on reconnect).",
        ),
    ] = None,
    after: Annotated[
        int | None,
        Query(
            ge=0, le=MAX_EVENT_SEQ, description="Like `Last-Event-ID`, for clients without headers."
        ),
    ] = None,
) -> Response:
    """Every event of the task from the start (or after ``Last-Event-ID``), live, until it ends."""
    visible_task(principal, service.get(task_id))
    resume = last_event_id if last_event_id is not None else (after or 0)
    pending, complete = service.events_after(task_id, resume)
    if complete and not pending:
        # 204 tells an EventSource to stop reconnecting.
        return Response(status_code=204)
    return EventStreamResponse(task_event_stream(service, task_id, resume, context.redactor))


@router.post(
    "/{task_id}/cancel",
    summary="Cancel a task",
    operation_id="cancel_task",
    status_code=202,
    responses={
        200: {"model": TaskView, "description": "The task was queued and is now cancelled."},
        **error_responses(401, 404, 409, 422, 500),
    },
)
def cancel_task(
    task_id: TaskId,
    principal: PrincipalDep,
    service: ServiceDep,
    context: ContextDep,
    response: Response,
) -> TaskView:
    """A queued task is cancelled at once (200); a running one is stopped (202, then ``cancelled``)."""
    visible_task(principal, service.get(task_id))
    record = service.cancel(task_id)
    if record.finished:
        response.status_code = 200
    return task_view(service, record, context.redactor)


@router.get(
    "/{task_id}/audit",
    summary="Audit a task's run",
    operation_id="get_audit",
    responses=error_responses(401, 404, 422, 500),
)
def get_audit(
    task_id: TaskId, principal: PrincipalDep, service: ServiceDep, context: ContextDep
) -> AuditView:
    """What the latest run really got: mounts, effective policy and digest, image, container settings.

    Host paths are shown as ``<host path>``; the run record on the controller keeps them.
    """
    record = visible_task(principal, service.get(task_id))
    run_id, audit = service.audit(task_id)
    redacted = context.redactor.redact(audit)
    if not isinstance(redacted, dict):  # pragma: no cover - redaction keeps the shape
        raise TypeError("redaction changed the audit's shape")
    return AuditView(task_id=task_id, run_id=run_id, created_by=record.principal, audit=redacted)
