"""``taskbox run``: one task end to end on this machine, with the result printed."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from controller.cli.common import CliError, InfrastructureError, load_task_file
from controller.cli.report import event_line, result_report
from controller.display import make_console
from controller.errors import InvalidTaskError, PolicyError, RepositoryError, TaskboxError
from controller.runs import TaskRunner, new_run_id
from controller.sandbox.engines import open_engine
from controller.settings import get_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from controller.events import RunEvent
    from controller.settings import Settings
    from taskbox_wire.contract import TaskResult

log = logging.getLogger(__name__)


def event_printer(*, quiet: bool) -> Callable[[RunEvent], None]:
    """Live stages on stderr with the seconds since now (nothing when ``quiet``)."""
    console = make_console(stderr=True)
    started = datetime.now(UTC)

    def show(event: RunEvent) -> None:
        # Called from the sandbox's log-reading thread too: a display failure must not end it.
        if quiet:
            return
        try:
            console.print(event_line(event, started))
        except Exception:
            log.exception("cannot show an event")

    return show


def make_runner(settings: Settings) -> TaskRunner:
    """The runner a ``taskbox run`` uses, on the engine the settings name."""
    engine = open_engine(settings)
    return TaskRunner(settings, engine.backend, engine.images)


@click.command()
@click.argument("task_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--repo", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--base", default="HEAD", show_default=True, help="Base commit or ref.")
@click.option(
    "--model",
    default="anthropic",
    show_default=True,
    help="anthropic | scripted:FILE | replay:RUN_DIR",
)
@click.option("--policy", "policy_name", default=None, help="Policy name (default: the worker's).")
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print only the result JSON (no live events, no report).",
)
def run(  # click passes every option by keyword
    *,
    task_file: Path,
    repo: Path,
    base: str,
    model: str,
    policy_name: str | None,
    runs_dir: Path | None,
    as_json: bool,
) -> None:
    """Run TASK_FILE against the repository DIR and put the checked commit on taskbox/<taskKey>.

    Shows each stage as it happens (seconds since the start) on stderr, then a short
    report: status, branch and commit, tests, the ten checks, missing context, the record.

    Exit status: 0 the task succeeded; 1 it ran but did not succeed (checks failed, timeout,
    output refused); 2 invalid input (task, policy, repository); 3 the infrastructure failed
    (no engine, no image, the sandbox left no result).
    """
    settings = get_settings()
    if runs_dir is not None:
        settings = settings.model_copy(update={"runs_dir": runs_dir.resolve()})
    try:
        task = load_task_file(task_file)
    except InvalidTaskError as exc:
        raise CliError(str(exc)) from exc
    run_id = new_run_id(task.task_key)
    show = event_printer(quiet=as_json)

    try:
        result = make_runner(settings).execute(
            run_id=run_id,
            task=task,
            repo=repo,
            base_ref=base,
            emit=show,
            cancel=threading.Event(),
            model=model,
            policy_name=policy_name,
        )
    except (InvalidTaskError, PolicyError, RepositoryError) as exc:
        raise CliError(str(exc)) from exc
    except TaskboxError as exc:
        raise InfrastructureError(str(exc)) from exc
    _finish(result, settings.runs_dir / run_id / "record", as_json=as_json)


def _finish(result: TaskResult, record_dir: Path, *, as_json: bool) -> None:
    """Print the result (JSON, or the report for people) and exit with the run's status."""
    if as_json:
        click.echo(json.dumps(result.model_dump(mode="json"), indent=2))
    else:
        make_console().print(result_report(result, record_dir))
    if result.status == "error":
        raise SystemExit(InfrastructureError.exit_code)
    if result.status != "succeeded":
        raise SystemExit(1)
