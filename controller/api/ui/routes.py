"""``/ui``: sign in, the task list with filters, one task's page; read-only, under the API's rules.

The list is the API's one-query page (:meth:`TaskStore.list_task_views`), with the
same filters and cursors; a task page gathers what the API answers in five places
(task, events, result, audit) plus the landed diff and the transcript. A task of a
repository the person's token may not use is "no task", word for word as the API
says it. Handlers are plain ``def``: SQLite, git and record files block.
"""

from __future__ import annotations

import importlib.resources
import logging
import re
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse
from pydantic import ValidationError
from starlette.responses import Response

from controller.api.deps import ContextDep, ServiceDep, visible_task
from controller.api.errors import RepositoryForbiddenError, status_for
from controller.api.events import event_view
from controller.api.routes.tasks import decode_cursor, encode_cursor
from controller.api.ui import views
from controller.api.ui.pages import render
from controller.api.ui.session import (
    PREFIX,
    SECURITY_HEADERS,
    SIGN_IN_PATH,
    UiPrincipalDep,
    clear_sign_in_cookie,
    from_this_site,
    set_sign_in_cookie,
)
from controller.display import duration
from controller.errors import AuditNotFoundError, TaskboxError, TaskNotFoundError
from controller.gateway.transcript import TRANSCRIPT_FILE, read_transcript
from controller.policy.planner import MountPlan
from controller.store import TASK_STATES, PageQuery
from taskbox_wire.contract import TaskResult

if TYPE_CHECKING:
    from pathlib import Path

    from controller.api.auth import Principal
    from controller.api.deps import AppContext
    from controller.api.models import EventView
    from controller.service import TaskService
    from controller.store import TaskRecord

logger = logging.getLogger(__name__)

router = APIRouter(prefix=PREFIX, include_in_schema=False)

#: Tasks per page of the list.
PAGE_SIZE = 50
#: Events read for one task page (a run has tens; this bounds a pathological one).
MAX_EVENTS = 2000
#: Largest sign-in form body read.
MAX_FORM_BYTES = 8192
#: Largest transcript read for a page (the gateway caps a run's transcript below this).
MAX_TRANSCRIPT_BYTES = 64 * 1024 * 1024
_TASK_ID = re.compile(r"^[0-9a-f]{32}$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")

_STYLESHEET = importlib.resources.files("controller.api.ui").joinpath("static/ui.css").read_bytes()


def _error_page(principal: Principal | None, exc: TaskboxError) -> Response:
    """The error as a page, with the status the API would answer."""
    status = status_for(exc)
    return render(
        "error.html", status_code=status, status=status, message=str(exc), signed_in=principal
    )


def _redirect(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303, headers=SECURITY_HEADERS)


# --------------------------------------------------------------------------- signing in


@router.get("")
def home() -> Response:
    """The task list is the home page."""
    return _redirect(f"{PREFIX}/tasks")


@router.get("/sign-in")
def sign_in_form() -> Response:
    """The sign-in form."""
    return render("sign_in.html", message=None, signed_in=None)


@router.post("/sign-in")
async def sign_in(request: Request, context: ContextDep) -> Response:
    """Check the posted token; on success set the cookie and go to the task list."""
    if not from_this_site(request):
        return render(
            "sign_in.html",
            status_code=403,
            message="sign-in from another site's page is refused",
            signed_in=None,
        )
    body = await request.body()
    fields = parse_qs(body[:MAX_FORM_BYTES].decode("utf-8", "replace"), max_num_fields=4)
    token = (fields.get("token") or [""])[0].strip()
    if not token or context.tokens.authenticate(token) is None:
        # The token is never echoed back or logged.
        return render(
            "sign_in.html", status_code=401, message="that token is not valid", signed_in=None
        )
    response = _redirect(f"{PREFIX}/tasks")
    set_sign_in_cookie(response, request, token)
    return response


@router.post("/sign-out")
def sign_out(request: Request) -> Response:
    """Drop the cookie and go back to the sign-in form (another site's page cannot sign anyone out)."""
    if not from_this_site(request):
        return render(
            "error.html",
            status_code=403,
            status=403,
            message="sign-out from another site's page is refused",
            signed_in=None,
        )
    response = _redirect(SIGN_IN_PATH)
    clear_sign_in_cookie(response)
    return response


@router.get("/static/ui.css")
def stylesheet() -> Response:
    """The one stylesheet (the only thing the pages load)."""
    return Response(_STYLESHEET, media_type="text/css", headers=SECURITY_HEADERS)


# --------------------------------------------------------------------------- the list


@router.get("/tasks")
async def task_list(
    *,
    principal: UiPrincipalDep,
    service: ServiceDep,
    context: ContextDep,
    status: Annotated[str, Query(max_length=32)] = "",
    repository: Annotated[str, Query(max_length=64)] = "",
    cursor: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    """Tasks this token may see, in submission order, filtered by status and repository."""
    if status and status not in TASK_STATES:
        return render(
            "error.html",
            status_code=422,
            status=422,
            message=f"no status {status!r}; one of {', '.join(TASK_STATES)}",
            signed_in=principal,
        )
    try:
        repositories = principal.visible()
        if repository:
            if not principal.may_use(repository):
                raise RepositoryForbiddenError(f"this token may not use repository {repository!r}")
            repositories = [repository]
        after = decode_cursor(cursor) if cursor else 0
        query = PageQuery(
            status=status or None,
            repositories=None if repositories is None else tuple(repositories),
            after_seq=after,
            limit=PAGE_SIZE + 1,
        )
        page = await service.list_task_views(query, redact=context.redactor.redact_text)
    except TaskboxError as exc:
        return _error_page(principal, exc)
    shown = page[:PAGE_SIZE]
    next_cursor = encode_cursor(shown[-1][0]) if len(page) > PAGE_SIZE else None
    choices = (
        sorted(context.settings.repositories)
        if principal.repositories is None
        else sorted(principal.repositories)
    )
    return render(
        "tasks.html",
        rows=views.task_rows(shown),
        statuses=TASK_STATES,
        repositories=choices,
        status=status,
        repository=repository,
        next_cursor=next_cursor,
        first_page=not cursor,
        signed_in=principal,
    )


# --------------------------------------------------------------------------- one task


@router.get("/tasks/{task_id}")
def task_page(
    task_id: str, principal: UiPrincipalDep, service: ServiceDep, context: ContextDep
) -> Response:
    """Everything about one task: state, timeline, checks, diff, transcript, mounts, container."""
    try:
        if not _TASK_ID.fullmatch(task_id):
            raise TaskNotFoundError(f"no task {task_id!r}")
        record = visible_task(principal, service.get(task_id))
    except TaskboxError as exc:
        return _error_page(principal, exc)
    return render("task.html", signed_in=principal, **_task_context(record, service, context))


def _task_context(record: TaskRecord, service: TaskService, context: AppContext) -> dict[str, Any]:
    redactor = context.redactor
    events = _events(service, record.id, context)
    result = _result(record, context)
    audit = _audit(service, record.id, context)
    plan = _plan(audit.get("plan"))
    container = audit.get("container") if isinstance(audit.get("container"), dict) else None
    policy = audit.get("policy") if isinstance(audit.get("policy"), dict) else None
    diff_text, diff_cut = None, False
    repo = context.settings.repositories.get(record.repository)
    if result is not None and result.git_commit and repo is not None:
        diff_text, diff_cut = views.landed_diff(repo, result.git_commit, redactor)
    started, finished = record.started_at, record.finished_at
    return {
        "task": record,
        "reason": None if record.reason is None else redactor.redact_text(record.reason),
        "created": views.clock(record.created_at),
        "started": views.clock(started),
        "finished": views.clock(finished),
        "took": duration((finished - started).total_seconds() if started and finished else None),
        "timeline": views.timeline(events),
        "result": result,
        "checks": sorted(result.constraints, key=lambda c: c.id) if result else [],
        "claim_differs": result is not None
        and result.agent is not None
        and result.agent.status != result.status,
        "diff": None if diff_text is None else views.diff_files(diff_text),
        "diff_cut": diff_cut,
        "turns": _turns(record, context),
        "plan": plan,
        "policy": policy,
        "image": audit.get("image"),
        "image_id": audit.get("image_id"),
        "container": None if container is None else views.container_settings(container),
        "container_json": None if container is None else views.pretty_json(container),
    }


def _events(service: TaskService, task_id: str, context: AppContext) -> list[EventView]:
    events: list[EventView] = []
    after = 0
    while len(events) < MAX_EVENTS:
        batch, complete = service.events_after(task_id, after)
        events.extend(event_view(e, context.redactor) for e in batch)
        if complete or not batch:
            break
        after = batch[-1].seq
    return events[:MAX_EVENTS]


def _result(record: TaskRecord, context: AppContext) -> TaskResult | None:
    """The checked result, redacted as ``GET /v1/tasks/{id}/result`` answers it."""
    if not record.finished or record.result_json is None:
        return None
    try:
        stored = TaskResult.model_validate_json(record.result_json)
        return TaskResult.model_validate(context.redactor.redact(stored.model_dump(mode="json")))
    except ValidationError:
        logger.warning("stored result unreadable", extra={"task_id": record.id})
        return None


def _audit(service: TaskService, task_id: str, context: AppContext) -> dict[str, Any]:
    """The audit record, redacted as ``GET /v1/tasks/{id}/audit`` answers it; empty when none."""
    try:
        _, audit = service.audit(task_id)
    except AuditNotFoundError:
        return {}
    redacted = context.redactor.redact(audit)
    return redacted if isinstance(redacted, dict) else {}


def _plan(value: object) -> dict[str, Any] | None:
    """The recorded mount plan, checked against its model (every field the page shows is there)."""
    if not isinstance(value, dict):
        return None
    try:
        return MountPlan.model_validate(value).model_dump(mode="json")
    except ValidationError:
        logger.warning("recorded mount plan unreadable")
        return None


def _turns(record: TaskRecord, context: AppContext) -> list[views.Turn] | None:
    """The latest run's model turns; ``None`` when it left no readable transcript."""
    if record.run_id is None or not _RUN_ID.fullmatch(record.run_id):
        return None
    # The run record's layout (controller.runs.RunRecord): <runs_dir>/<run_id>/record/.
    path: Path = context.settings.runs_dir / record.run_id / "record" / TRANSCRIPT_FILE
    try:
        if not path.is_file() or path.stat().st_size > MAX_TRANSCRIPT_BYTES:
            return None
        entries = read_transcript(path)
    except (OSError, ValueError, TaskboxError):
        logger.warning("transcript unreadable", extra={"run_id": record.run_id})
        return None
    return views.transcript_turns(entries, context.redactor)
