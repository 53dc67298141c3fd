"""One error shape for every failure, ``{"error": {"code", "message", "requestId"}}``, and its codes.

Codes are stable: a caller branches on ``code``, never on ``message``.
:data:`ERROR_CODES` lists them with their status; the OpenAPI description is
rendered from it. Any other :class:`~controller.errors.TaskboxError` answers
500 with its own ``code``.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from controller.api.models import ErrorDetail, ErrorResponse
from controller.errors import (
    AuditNotFoundError,
    BaseRefError,
    BranchExistsError,
    IdempotencyConflictError,
    InvalidTaskError,
    PolicyUnavailableError,
    QueueFullError,
    RepositoryUnavailableError,
    ShuttingDownError,
    TaskboxError,
    TaskFinishedError,
    TaskKeyTakenError,
    TaskNotFinishedError,
    TaskNotFoundError,
    UnknownRepositoryError,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from fastapi import FastAPI, Request

logger = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 2000
#: Control, bidi and zero-width characters: shown escaped in messages (they may quote task text).
_UNSAFE_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")

#: Every code the API answers with: (HTTP status, code, when).
ERROR_CODES: tuple[tuple[int, str, str], ...] = (
    (400, "bad_request", "the body could not be read"),
    (401, "unauthenticated", "no bearer token, or not a valid one"),
    (403, "repository_forbidden", "the token may not use that repository"),
    (404, "not_found", "no such route"),
    (404, "task_not_found", "no task with that id that this token may see"),
    (404, "repository_not_found", "no repository of that name in the settings"),
    (404, "audit_not_found", "the task has not started a run, or the run left no record"),
    (405, "method_not_allowed", "the route exists, the method does not"),
    (409, "idempotency_conflict", "the Idempotency-Key was used with another body"),
    (409, "task_not_finished", "the result was asked for while the task is queued or running"),
    (409, "task_already_finished", "cancel was asked for after the task finished"),
    (
        409,
        "task_key_taken",
        "another token used this `taskKey` in the repository, or a task of it is queued or running",
    ),
    (409, "branch_exists", "the repository already has the branch `taskbox/<taskKey>`"),
    (413, "request_too_large", "the body is over the controller's `max_request_bytes`"),
    (422, "validation_error", "the request does not match the schema (the message says where)"),
    (422, "invalid_task", "admission refused the task (the message gives the plan's reasons)"),
    (422, "invalid_base_ref", "`baseRef` names no commit of the repository"),
    (422, "invalid_cursor", "the `cursor` is not one this API handed out"),
    (500, "internal_error", "a bug; the body has the request id, the server log the rest"),
    (503, "shutting_down", "the controller is draining; retry once it is back"),
    (503, "queue_full", "the queue is at the controller's `max_queued_tasks`; retry later"),
    (503, "policy_unavailable", "the policy the task would run under is broken on the controller"),
    (
        503,
        "repository_unavailable",
        "the repository's folder is missing or broken on the controller",
    ),
    (503, "not_ready", "a readiness check failed (`/readyz` only)"),
)


def error_code_table() -> str:
    """:data:`ERROR_CODES` as a Markdown table."""
    rows = [f"| {status} | `{code}` | {when} |" for status, code, when in ERROR_CODES]
    return "\n".join(["| status | code | when |", "|---|---|---|", *rows])


class UnauthenticatedError(TaskboxError):
    """No bearer token, or one that no setting knows."""

    code = "unauthenticated"


class RepositoryForbiddenError(TaskboxError):
    """The token is valid but not for this repository."""

    code = "repository_forbidden"


class InvalidCursorError(TaskboxError, ValueError):
    """The pagination cursor was not made by this API."""

    code = "invalid_cursor"


class NotReadyError(TaskboxError):
    """A readiness check failed."""

    code = "not_ready"


class RequestTooLargeError(StarletteHTTPException):
    """The request body is over the limit (raised while the body is being read)."""

    def __init__(self, limit: int) -> None:
        """Say what the limit is."""
        super().__init__(413, f"the request body is over {limit} bytes")


#: HTTP status of each error class; the first match in this order wins.
STATUS_BY_ERROR: tuple[tuple[type[TaskboxError], int], ...] = (
    (UnauthenticatedError, 401),
    (RepositoryForbiddenError, 403),
    (TaskNotFoundError, 404),
    (UnknownRepositoryError, 404),
    (AuditNotFoundError, 404),
    (IdempotencyConflictError, 409),
    (TaskNotFinishedError, 409),
    (TaskFinishedError, 409),
    (TaskKeyTakenError, 409),
    (BranchExistsError, 409),
    (InvalidTaskError, 422),
    (BaseRefError, 422),
    (InvalidCursorError, 422),
    (ShuttingDownError, 503),
    (QueueFullError, 503),
    (RepositoryUnavailableError, 503),
    (PolicyUnavailableError, 503),
    (NotReadyError, 503),
)

#: Codes of the plain HTTP errors that routing and body parsing raise.
CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthenticated",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    422: "validation_error",
}


def status_for(exc: TaskboxError) -> int:
    """The HTTP status that answers ``exc``."""
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 500


def request_id_of(request: Request) -> str | None:
    """The id the request middleware gave this request."""
    value = request.scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else None


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The JSON error body, with the request id in the body and in ``X-Request-ID``."""
    request_id = request_id_of(request)
    # Messages quote what the caller sent (a refused path): its control characters come back escaped.
    shown = _UNSAFE_CHARS.sub(lambda m: f"\\u{ord(m.group()):04x}", message)
    body = ErrorResponse(
        error=ErrorDetail(code=code, message=shown[:MAX_MESSAGE_CHARS], request_id=request_id)
    )
    all_headers = dict(headers or {})
    if request_id is not None:
        all_headers["X-Request-ID"] = request_id
    return JSONResponse(
        body.model_dump(mode="json", by_alias=True), status_code=status, headers=all_headers
    )


def describe_validation(errors: Any) -> str:
    """``where: why`` for each problem; the input values are never echoed back."""
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ())) or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request is not valid"


async def _taskbox_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TaskboxError)  # noqa: S101 - registered for this class only
    status = status_for(exc)
    if status >= 500:  # noqa: PLR2004 - server errors are logged, client errors are not
        logger.error(
            "request failed",
            extra={"code": exc.code, "error": str(exc), "request_id": request_id_of(request)},
        )
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None  # noqa: PLR2004
    if isinstance(exc, ShuttingDownError | QueueFullError):
        headers = {"Retry-After": "5"}
    return error_response(request, status, exc.code, str(exc), headers)


def route_methods(routes: Iterable[object]) -> list[tuple[re.Pattern[str], frozenset[str]]]:
    """(path pattern, methods) of every route, for the ``Allow`` header of a 405."""
    return [
        (route.path_regex, frozenset(route.methods))
        for route in routes
        if isinstance(route, APIRoute) and route.methods
    ]


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers on this request's path, sorted.

    Starlette's 405 names only the methods of the first route whose path matched,
    while FastAPI makes one route per method: ``/v1/tasks`` would say ``POST`` alone.
    The table comes from ``app.state.route_methods`` (set by the app factory).
    """
    table = getattr(request.app.state, "route_methods", [])
    path = request.url.path
    return sorted({m for pattern, methods in table if pattern.match(path) for m in methods})


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101 - registered for this class only
    code = CODE_BY_STATUS.get(exc.status_code, f"http_{exc.status_code}")
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    headers = dict(exc.headers or {})
    if exc.status_code == 405:  # noqa: PLR2004 - Method Not Allowed
        allowed = allowed_methods(request)
        if allowed:
            headers["Allow"] = ", ".join(allowed)
            message = f"{request.method} is not allowed here; use {', '.join(allowed)}"
    return error_response(request, exc.status_code, code, message, headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for this class only
    return error_response(request, 422, "validation_error", describe_validation(exc.errors()))


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    request_id = request_id_of(request)
    logger.error(
        "unhandled error", exc_info=exc, extra={"request_id": request_id, "path": request.url.path}
    )
    return error_response(
        request,
        500,
        "internal_error",
        f"internal error; quote request id {request_id} to the operator",
    )


def install_error_handlers(app: FastAPI) -> None:
    """Route every failure, expected or not, to the JSON error shape."""
    app.add_exception_handler(TaskboxError, _taskbox_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error statuses, all with :class:`ErrorResponse`."""
    descriptions = {
        400: "The body could not be read (`bad_request`), e.g. it is not UTF-8.",
        401: "No or invalid bearer token (`unauthenticated`).",
        403: "The token may not use this repository (`repository_forbidden`).",
        404: (
            "Not found (`task_not_found`, `repository_not_found`, `audit_not_found`); "
            "a task of a repository the token may not use is `task_not_found` too."
        ),
        409: (
            "Conflict (`idempotency_conflict`, `task_key_taken`, `branch_exists`, "
            "`task_not_finished`, `task_already_finished`)."
        ),
        413: "Body too large (`request_too_large`).",
        422: (
            "Invalid request (`validation_error`, `invalid_task`, `invalid_base_ref`, "
            "`invalid_cursor`)."
        ),
        500: "Internal error (`internal_error`); the log has the details under the request id.",
        503: (
            "Unavailable (`shutting_down`, `queue_full`, `repository_unavailable`, "
            "`policy_unavailable`, `not_ready`)."
        ),
    }
    return {
        status: {"model": ErrorResponse, "description": descriptions[status]} for status in statuses
    }
