"""``taskbox sandbox``: run a command in a task's exact sandbox; remove containers left behind."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from controller.cli.common import CliError, echo_safe, load_task_file
from controller.display import escape_text
from controller.errors import TaskboxError
from controller.sandbox.engines import open_engine
from controller.sandbox.task_sandbox import run_in_task_sandbox
from controller.settings import get_settings

#: Exit status when the deadline killed the command (as timeout(1) does).
EXIT_TIMED_OUT = 124
#: Exit status when the engine gave no status at all.
EXIT_UNKNOWN = 125


@click.group()
def sandbox() -> None:
    """Look inside a task's sandbox; clean up after a dead controller."""


def _echo_log(text: str) -> None:
    # A terminal gets the command's output escaped (it is the sandbox's text: no escape
    # sequence, bidi override or carriage return reaches it); a pipe or file gets it as is.
    if sys.stdout.isatty():
        text = escape_text(text, multiline=True)
    sys.stdout.write(text)
    sys.stdout.flush()


@sandbox.command("run")
@click.argument("task_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--repo", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--base", default="HEAD", show_default=True, help="Base commit or ref.")
@click.option("--policy", "policy_name", default=None, help="Policy name (default: the worker's).")
@click.option(
    "--keep",
    is_flag=True,
    help="Keep the staging folder (what the sandbox saw and wrote); the container is removed anyway.",
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    hidden=True,
    help="Extra container label KEY=VALUE (tests mark their containers with it).",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(  # noqa: PLR0917 - click passes every option as a parameter
    task_file: Path,
    repo: Path,
    base: str,
    policy_name: str | None,
    keep: bool,
    labels: tuple[str, ...],
    command: tuple[str, ...],
) -> None:
    """Run COMMAND in exactly the sandbox TASK_FILE would get; exit with its status.

    Write the command after `--`:  taskbox sandbox run task.json --repo . -- id
    Exit status: the command's; 124 when the wall-clock deadline killed it.
    """
    settings = get_settings()
    extra_labels = dict(item.partition("=")[::2] for item in labels)
    try:
        task = load_task_file(task_file)
        engine = open_engine(settings)
        result = run_in_task_sandbox(
            task,
            repo=repo,
            base=base,
            command=list(command),
            backend=engine.backend,
            images=engine.images,
            policies_dir=settings.policies_dir,
            policy_name=policy_name,
            runs_dir=settings.runs_dir,
            keep=keep,
            extra_labels=extra_labels,
            on_log=_echo_log,
            wiring=engine.wiring,
        )
    except TaskboxError as exc:
        raise CliError(str(exc)) from exc
    outcome = result.run.outcome
    for missing in result.plan.missing_context:
        echo_safe(f"taskbox: not mounted: {missing}", err=True)
    if outcome.log_truncated:
        click.echo("taskbox: output truncated at the policy's log cap", err=True)
    click.echo(
        f"taskbox: {result.run.handle.name} ({result.image}, {result.run.image_id[:19]}): "
        f"{outcome.describe()}",
        err=True,
    )
    if result.staging_root is not None:
        click.echo(f"taskbox: staging kept in {result.staging_root}", err=True)
    if outcome.timed_out:
        sys.exit(EXIT_TIMED_OUT)
    sys.exit(EXIT_UNKNOWN if outcome.exit_code is None else outcome.exit_code)


@sandbox.command()
@click.option(
    "--controller", "controller_id", default=None, help="Only containers of this controller id."
)
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def cleanup(controller_id: str | None, dry_run: bool, as_json: bool) -> None:
    """Remove every Taskbox container (label org.taskbox.managed=1) left by a dead controller.

    Run it while no controller is running tasks: it removes running sandboxes too.
    """
    try:
        backend = open_engine(get_settings()).backend
        found = (
            backend.find_orphans(controller_id)
            if dry_run
            else backend.remove_orphans(controller_id)
        )
    except TaskboxError as exc:
        raise CliError(str(exc)) from exc
    if as_json:
        click.echo(json.dumps([o.model_dump() for o in found], indent=2))
        return
    verb = "would remove" if dry_run else "removed"
    for orphan in found:
        echo_safe(
            f"{verb} {orphan.name} ({orphan.id[:12]}, {orphan.status or 'unknown'}; "
            f"run {orphan.run_id or '-'}, task {orphan.task_key or '-'}, controller {orphan.controller_id or '-'})"
        )
    click.echo(f"{len(found)} container(s) {verb}")
