"""The app factory: settings + an executor in, a FastAPI app out; and the OpenAPI document.

The store and the task service live in the app's lifespan: start-up opens the
store, recovers what a dead controller left running and starts the workers;
shutdown drains them (``shutdown_grace_seconds``) and closes the store.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import anyio
from fastapi import FastAPI

from controller import __version__
from controller.api.auth import TokenRegistry
from controller.api.deps import AppContext, ReadinessProbe
from controller.api.errors import error_code_table, install_error_handlers, route_methods
from controller.api.metrics import TaskMetrics
from controller.api.middleware import BearerGate, RequestContextMiddleware
from controller.api.redact import HostPathRedactor
from controller.api.routes import system, tasks
from controller.api.ui import COOKIE_ACCESS
from controller.api.ui import PUBLIC_PATHS as UI_PUBLIC_PATHS
from controller.api.ui import router as ui_router
from controller.service import TaskService
from controller.settings import PROJECT_ROOT, Settings
from controller.store import TaskStore
from taskbox_wire.contract import context_object_schema, json_schemas

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from controller.service import TaskExecutor

DESCRIPTION = f"""\
Submit coding tasks to Taskbox, follow them, and read their checked results.

Authenticate with `Authorization: Bearer <token>` (every route but `/healthz` and `/readyz`).
Repositories are named, never given as paths. Submissions need an `Idempotency-Key`.

Every error has the body `{{"error": {{"code": ..., "message": ..., "requestId": ...}}}}`;
branch on `code`, never on `message`:

{error_code_table()}
"""


#: Paths answered without a token: liveness and readiness probes carry none; the web view's
#: sign-in form and stylesheet are how a browser gets one.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"}) | UI_PUBLIC_PATHS


def create_app(
    settings: Settings,
    executor: TaskExecutor,
    *,
    readiness_probes: Mapping[str, ReadinessProbe] | None = None,
) -> FastAPI:
    """The controller API over ``executor``; ``readiness_probes`` (e.g. engine, image) feed ``/readyz``."""
    context = AppContext(
        settings=settings,
        tokens=TokenRegistry(settings.api_tokens),
        metrics=TaskMetrics(),
        probes=dict(readiness_probes or {}),
        redactor=HostPathRedactor(host_roots(settings)),
    )
    context.metrics.watch_store(
        lambda: context.service.store.count_by_status() if context.service is not None else {}
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        store = await anyio.to_thread.run_sync(TaskStore, settings.database)
        service = TaskService(
            store=store,
            executor=executor,
            repositories=settings.repositories,
            max_concurrent=settings.max_concurrent_tasks,
            max_queued=settings.max_queued_tasks,
            observer=context.metrics,
            runs_dir=settings.runs_dir,
        )
        try:
            await anyio.to_thread.run_sync(service.start)
        except BaseException:
            store.close()
            raise
        context.service = service
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(service.shutdown, settings.shutdown_grace_seconds)
            context.service = None
            store.close()

    app = FastAPI(
        title="Taskbox controller API",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # The spec is committed as openapi.json; the server exposes no unauthenticated docs.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.taskbox = context
    install_error_handlers(app)
    # add_middleware wraps: the last added runs first. Order on the way in: request id and
    # body cap, then the token gate, then FastAPI's routing and body parsing.
    app.add_middleware(
        BearerGate, tokens=context.tokens, public_paths=PUBLIC_PATHS, cookie_access=COOKIE_ACCESS
    )
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_request_bytes)
    app.include_router(tasks.router)
    app.include_router(system.router)
    app.include_router(ui_router)
    app.state.route_methods = route_methods(
        [*tasks.router.routes, *system.router.routes, *ui_router.routes]
    )
    _tidy_openapi(app)
    return app


def host_roots(settings: Settings) -> list[Path]:
    """Host folders of this controller whose paths the API never shows (see controller.api.redact)."""
    roots = [
        settings.runs_dir,
        settings.policies_dir,
        settings.database,
        settings.database.parent,
        PROJECT_ROOT,
        *settings.repositories.values(),
        Path("/var/run/docker.sock"),
        Path("/run/docker.sock"),
    ]
    if settings.docker_host and settings.docker_host.startswith("unix://"):
        roots.append(Path(settings.docker_host.removeprefix("unix://")))
    return roots


def _tidy_openapi(app: FastAPI) -> None:
    """Fix two things FastAPI's generator gets wrong for non-JSON routes (SSE, metrics).

    It files every ``model`` response under the route's media type, so the error
    bodies of ``/metrics`` would be ``text/plain``; and it merges a model's
    ``$ref`` into ``{"type": "string"}`` for the SSE stream.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        _describe_context_keys(document)
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                for parameter in operation.get("parameters", []):
                    parameter["schema"] = _without_null(parameter["schema"])
                for status, response in operation.get("responses", {}).items():
                    if status.isdigit() and int(status) >= 400:  # noqa: PLR2004 - error statuses
                        response["content"] = {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ErrorResponse"}
                            }
                        }
                    for media_type, media in response.get("content", {}).items():
                        if "$ref" not in media.get("schema", {}):
                            continue
                        ref = media["schema"]["$ref"]
                        media["schema"] = (
                            _sse_event_schema(ref)
                            if media_type == "text/event-stream"
                            else {"$ref": ref}
                        )
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without the ``null`` branch that an optional Python type adds.

    A header or query value is a string on the wire; it is absent or present, never
    ``null``. Left in, the spec would tell clients (and fuzzers) that ``null`` is a value.
    """
    branches = schema.get("anyOf")
    if not isinstance(branches, list):
        return schema
    kept = [b for b in branches if b != {"type": "null"}]
    if len(kept) == len(branches):
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    if len(kept) == 1:
        return {**kept[0], **rest}
    return {**rest, "anyOf": kept}


def _describe_context_keys(document: dict[str, Any]) -> None:
    """Write the task contract's rules that its models do not export into the spec.

    ``contextJson`` needs ``<taskKey>-ctx`` and takes only the dependency suffixes;
    ``ownsPaths`` holds each path once.
    """
    task = document.get("components", {}).get("schemas", {}).get("Task")
    if task is None:
        return
    context = task["properties"]["contextJson"]
    context.pop("additionalProperties", None)
    # The task schema's description and rules (each dependency result has its own strict
    # shape, chosen by the key's suffix), in the spec's own components.
    description = json_schemas()["task.schema.json"]["properties"]["contextJson"]["description"]
    context["description"] = description + " Anything else is 422."
    context.update(
        context_object_schema(document["components"]["schemas"], "#/components/schemas/")
    )
    # The contract refuses a path listed twice; the spec says so in its own words.
    task["properties"]["ownsPaths"]["uniqueItems"] = True


def _sse_event_schema(data_ref: str) -> dict[str, Any]:
    """One server-sent event (OpenAPI 3.1 style: the schema describes each event of the stream)."""
    return {
        "type": "object",
        "required": ["id", "event", "data"],
        "properties": {
            "id": {"type": "string", "description": "The event's sequence number."},
            "event": {"type": "string", "description": "The stage."},
            "retry": {"type": "integer", "description": "Reconnect delay in ms (first event)."},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"$ref": data_ref},
            },
        },
    }


class _SpecOnlyExecutor:
    """Stands in for an executor where only the OpenAPI document is wanted."""

    def _refuse(self, *_args: object, **_kwargs: object) -> NoReturn:
        raise RuntimeError("this app was built only to render its OpenAPI document")

    admit = execute = container_ids_for = remove_run_containers = remove_staging = audit = _refuse


def render_openapi() -> str:
    """The exact text of the committed ``openapi.json``."""
    return json.dumps(openapi_document(), indent=2, ensure_ascii=False) + "\n"


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of the API (what ``openapi.json`` must hold)."""
    # model_construct: defaults only, so no environment or .env file shapes the document.
    app = create_app(Settings.model_construct(), _SpecOnlyExecutor())
    return app.openapi()
