"""The ``taskbox`` command line: one group per area, each in its own module."""

from __future__ import annotations

import logging

import click

from controller import __version__
from controller.cli.api import api
from controller.cli.image import image
from controller.cli.policy import policy
from controller.cli.preflight import preflight
from controller.cli.reproduce import reproduce
from controller.cli.run import run
from controller.cli.runs import runs
from controller.cli.sandbox import sandbox
from controller.cli.schema import schema
from controller.cli.serve import serve
from controller.display import escape_log_handlers


@click.group()
@click.version_option(__version__, prog_name="taskbox")
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
def cli(verbose: int) -> None:
    """Taskbox: run each agent task in a locked-down container and check what comes out."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Log lines quote sandboxes and tasks (event messages, file names): escaped, one line each.
    escape_log_handlers()


cli.add_command(policy)
cli.add_command(run)
cli.add_command(runs)
cli.add_command(schema)
cli.add_command(serve)
cli.add_command(api)
cli.add_command(image)
cli.add_command(sandbox)
cli.add_command(preflight)
cli.add_command(reproduce)


def main() -> None:
    """Console-script entry point."""
    cli()
