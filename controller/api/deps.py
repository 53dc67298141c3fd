"""Dependencies of the routes, as ``Annotated`` aliases: the app context, the service, the caller."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from controller.api.auth import Principal, TokenRegistry
from controller.api.errors import RepositoryForbiddenError, UnauthenticatedError
from controller.api.metrics import TaskMetrics  # noqa: TC001 - FastAPI resolves these at runtime
from controller.api.redact import HostPathRedactor
from controller.errors import ShuttingDownError, TaskNotFoundError
from controller.service import TaskService
from controller.settings import Settings  # noqa: TC001 - FastAPI resolves these at runtime
from controller.store import TaskRecord  # noqa: TC001 - FastAPI resolves these at runtime

#: A readiness check: returns when fine, raises (any exception) when not.
ReadinessProbe = Callable[[], None]


@dataclass
class AppContext:
    """Everything the routes share; one per app, on ``app.state.taskbox``."""

    settings: Settings
    tokens: TokenRegistry
    metrics: TaskMetrics
    probes: Mapping[str, ReadinessProbe]
    redactor: HostPathRedactor = field(default_factory=lambda: HostPathRedactor(()))
    """Takes host paths out of what the API returns (audit, events, results)."""
    service: TaskService | None = field(default=None)


async def get_context(request: Request) -> AppContext:
    """The app's context (no I/O: run on the event loop, not in the thread pool)."""
    context: AppContext = request.app.state.taskbox
    return context


ContextDep = Annotated[AppContext, Depends(get_context)]


async def get_service(context: ContextDep) -> TaskService:
    """The running task service (503 ``shutting_down`` before start-up or after shutdown)."""
    if context.service is None:
        raise ShuttingDownError("the controller is not running its task service")
    return context.service


ServiceDep = Annotated[TaskService, Depends(get_service)]

_bearer = HTTPBearer(
    auto_error=False,
    description="A token from the controller's `TASKBOX_API_TOKENS` setting.",
)


async def authenticate(
    context: ContextDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from ``Authorization: Bearer <token>``; 401 ``unauthenticated`` otherwise."""
    if credentials is None or not credentials.credentials:
        raise UnauthenticatedError("send 'Authorization: Bearer <token>'")
    principal = context.tokens.authenticate(credentials.credentials)
    if principal is None:
        raise UnauthenticatedError("the bearer token is not valid")
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticate)]


def require_repository(principal: Principal, repository: str) -> None:
    """403 ``repository_forbidden`` unless the caller may use ``repository``."""
    if not principal.may_use(repository):
        raise RepositoryForbiddenError(f"this token may not use repository {repository!r}")


def visible_task(principal: Principal, record: TaskRecord) -> TaskRecord:
    """The task, if the caller may see its repository; otherwise 404, as if it did not exist.

    Answering 403 would confirm that the id exists and name the repository it
    belongs to; the message is the one an unknown id gets, word for word.
    """
    if not principal.may_use(record.repository):
        raise TaskNotFoundError(f"no task {record.id!r}")
    return record
