"""``taskbox reproduce RUN_DIR``: run a recorded task again from its record and say what differs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click
from rich.table import Table

from controller.cli.common import CliError, InfrastructureError, echo_safe
from controller.cli.run import event_printer, make_runner
from controller.display import make_console, safe_text
from controller.errors import InvalidTaskError, PolicyError, RepositoryError, TaskboxError
from controller.reproduce import Reproduction
from controller.reproduce import reproduce as reproduce_run
from controller.settings import get_settings

log = logging.getLogger(__name__)

#: Exit status when the reproduction differs from the recording.
EXIT_DIFFERENT = 1


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--repo",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Repository (default: the recorded one).",
)
@click.option("--base", default=None, help="Base commit or ref (default: the recorded commit).")
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def reproduce(
    run_dir: Path, repo: Path | None, base: str | None, runs_dir: Path | None, as_json: bool
) -> None:
    """Run RUN_DIR's task again with its recorded model turns; exit 0 when identical, 1 when not.

    The task, base, policy and repository come from RUN_DIR/record; the model is the
    recorded transcript. Differences name the first model turn whose request no longer
    matches the recording.
    """
    settings = get_settings()
    if runs_dir is not None:
        settings = settings.model_copy(update={"runs_dir": runs_dir.resolve()})
    show = event_printer(quiet=as_json)

    try:
        found = reproduce_run(
            run_dir.resolve(), runner=make_runner(settings), repo=repo, base_ref=base, emit=show
        )
    except (InvalidTaskError, PolicyError, RepositoryError) as exc:
        raise CliError(str(exc)) from exc
    except TaskboxError as exc:
        raise InfrastructureError(str(exc)) from exc
    _show(found, as_json=as_json)
    if not found.identical:
        raise SystemExit(EXIT_DIFFERENT)


def _show(found: Reproduction, *, as_json: bool) -> None:
    """The comparison for people (a table of differences) or as JSON."""
    if as_json:
        click.echo(json.dumps(found.model_dump(mode="json"), indent=2))
    elif found.identical:
        echo_safe(
            f"identical: same commit {found.result.git_commit or '(none)'}, same files, "
            f"same test results; reproduced as {found.run_id}"
        )
    else:
        table = Table(title=f"{found.recorded_run} reproduced as {found.run_id}", highlight=False)
        for column in ("what", "recorded", "reproduced"):
            table.add_column(column)
        for difference in found.differences:
            table.add_row(
                safe_text(difference.what),
                safe_text(json.dumps(difference.recorded)),
                safe_text(json.dumps(difference.reproduced)),
            )
        make_console().print(table)
        if found.first_diverging_turn is not None:
            echo_safe(f"first diverging turn: {found.first_diverging_turn}")
