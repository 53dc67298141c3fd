"""``taskbox run``: one task end to end on this machine, with the result printed."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from controller.cli.common import CliError, InfrastructureError, load_task_file
from controller.errors import InvalidTaskError, PolicyError, RepositoryError, TaskboxError
from controller.runs import TaskRunner, new_run_id
from controller.sandbox.docker import DockerBackend, DockerImages
from controller.settings import get_settings

if TYPE_CHECKING:
    from controller.events import RunEvent


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
@click.option("--json", "as_json", is_flag=True, help="Print only the result JSON.")
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

    Exit status: 0 the task succeeded; 1 it ran but did not succeed (checks failed, timeout,
    output refused); 2 invalid input (task, policy, repository); 3 the infrastructure failed
    (no engine, no image, the sandbox left no result).
    """
    settings = get_settings()
    if runs_dir is not None:
        settings = settings.model_copy(update={"runs_dir": runs_dir.resolve()})
    console = Console(stderr=True)
    try:
        task = load_task_file(task_file)
    except InvalidTaskError as exc:
        raise CliError(str(exc)) from exc
    run_id = new_run_id(task.task_key)

    def show(event: RunEvent) -> None:
        if not as_json:
            console.print(f"[dim]{event.stage:>15}[/]  {event.message}")

    try:
        runner = TaskRunner(
            settings, DockerBackend.from_settings(settings), DockerImages.from_settings(settings)
        )
        result = runner.execute(
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
    click.echo(json.dumps(result.model_dump(mode="json"), indent=2))
    if not as_json:
        console.print(f"run record: {settings.runs_dir / run_id / 'record'}")
    if result.status == "error":
        raise SystemExit(InfrastructureError.exit_code)
    if result.status != "succeeded":
        raise SystemExit(1)
