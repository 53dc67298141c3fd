"""``taskbox serve``: run the controller API on uvicorn until SIGTERM (graceful) or SIGKILL (recovered).

The task executor comes from ``settings.executor_module`` (``controller.runs``
by default): its ``make_executor(settings)`` builds the executor and its
optional ``make_readiness_probes(settings)`` the engine and image checks of
``/readyz``. Only tests point the setting at a fake.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Literal, cast

import click
import uvicorn
from pydantic import ValidationError

from controller.api import create_app
from controller.api.logs import configure_logging
from controller.cli.common import CliError, describe_validation_error
from controller.display import escape_log_handlers
from controller.hostcheck import Level
from controller.preflight import run_preflight
from controller.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import FrameType

    from controller.api.deps import AppContext
    from controller.service import TaskExecutor

logger = logging.getLogger(__name__)

#: How long uvicorn waits for open HTTP connections (event streams) before the drain starts.
HTTP_DRAIN_SECONDS = 10


class DrainingServer(uvicorn.Server):
    """uvicorn's server that tells the task service to refuse new work the moment a signal arrives."""

    def __init__(self, config: uvicorn.Config, on_signal: Callable[[], None]) -> None:
        """``on_signal`` runs in the signal handler, before uvicorn starts its own shutdown."""
        super().__init__(config)
        self._on_signal = on_signal

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Stop taking tasks, then let uvicorn (and the app's lifespan) shut down."""
        self._on_signal()
        super().handle_exit(sig, frame)


def load_executor(settings: Settings) -> tuple[TaskExecutor, Mapping[str, Callable[[], None]]]:
    """The executor and readiness probes from ``settings.executor_module``; CliError if it is missing."""
    name = settings.executor_module
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and name.startswith(exc.name):
            raise CliError(
                f"the task executor module {name!r} is not available: it must provide "
                "make_executor(settings); the Docker executor (controller.runs) is not installed yet"
            ) from exc
        raise
    make_executor = getattr(module, "make_executor", None)
    if not callable(make_executor):
        raise CliError(f"module {name!r} has no make_executor(settings)")
    make_probes = getattr(module, "make_readiness_probes", None)
    probes = dict(make_probes(settings)) if callable(make_probes) else {}
    if not probes:
        logger.warning("no engine or image readiness probes", extra={"executor_module": name})
    return cast("TaskExecutor", make_executor(settings)), probes


DOCKER_EXECUTOR = "controller.runs"


def _preflight_or_refuse(settings: Settings) -> None:
    """Refuse to serve on an unsafe host; warnings are logged (``taskbox preflight`` shows all)."""
    report = run_preflight(settings, probe=False)  # logs each warning itself
    if report.refused:
        refused = "; ".join(
            f"{c.name}: {c.summary}" for c in report.checks if c.level is Level.REFUSE
        )
        raise CliError(f"this host is not safe for sandboxes: {refused} (see `taskbox preflight`)")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="TCP port."
)
@click.option(
    "--log-format",
    type=click.Choice(["json", "text"]),
    default="json",
    show_default=True,
    help="JSON lines for log pipelines, or key=value text for a terminal.",
)
def serve(host: str, port: int, log_format: str) -> None:
    """Run the controller API (FastAPI on uvicorn) until SIGTERM."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise CliError(f"invalid settings: {describe_validation_error(exc)}") from exc
    if not settings.api_tokens:
        raise CliError(
            "no API tokens configured: set TASKBOX_API_TOKENS='TOKEN=repo1,repo2;TOKEN2=*'"
        )
    configure_logging(cast("Literal['json', 'text']", log_format))
    # The text format writes messages as they are; they quote tasks and sandboxes.
    escape_log_handlers()
    if settings.executor_module == DOCKER_EXECUTOR:
        _preflight_or_refuse(settings)
    executor, probes = load_executor(settings)
    app = create_app(settings, executor, readiness_probes=probes)
    context: AppContext = app.state.taskbox

    def stop_accepting() -> None:
        if context.service is not None:
            context.service.stop_accepting()

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # our handlers (configure_logging) format uvicorn's records too
        access_log=False,  # the request middleware logs each request once, with its id
        lifespan="on",
        timeout_graceful_shutdown=HTTP_DRAIN_SECONDS,
        server_header=False,
    )
    DrainingServer(config, on_signal=stop_accepting).run()
