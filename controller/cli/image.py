"""``taskbox image build``: the sandbox image, or a repository's dependency layer on top of it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from controller.cli.common import CliError, echo_safe
from controller.display import escape_text
from controller.errors import TaskboxError
from controller.gitrepo import ensure_repository, resolve_commit
from controller.image import (
    CONTROLLER_IMAGE,
    SANDBOX_IMAGE,
    build_controller_image,
    build_repo_image,
    build_sandbox_image,
)
from controller.sandbox.engines import open_engine
from controller.settings import get_settings


@click.group()
def image() -> None:
    """Build the sandbox image (offline when no registry answers)."""


def _progress(text: str) -> None:
    # Build output quotes the repository's dependency declarations: escaped on a terminal.
    if sys.stderr.isatty():
        text = escape_text(text, multiline=True)
    click.echo(text, nl=False, err=True)


@image.command("build")
@click.option(
    "--repo",
    type=click.Path(path_type=Path, file_okay=False),
    help="Add a layer with this repository's declared dependencies on top of the sandbox image.",
)
@click.option(
    "--base",
    "base_ref",
    default="HEAD",
    show_default=True,
    help="Commit of --repo whose declarations count.",
)
@click.option(
    "--base-image",
    default=None,
    help="Image to build FROM (default: python:3.12-slim if it can be had, else a local Debian base).",
)
@click.option(
    "--tag",
    default=None,
    help=f"Tag of the sandbox image (default: the settings' image, {SANDBOX_IMAGE}).",
)
@click.option(
    "--controller",
    is_flag=True,
    help="Build the controller's own image (taskbox-controller:latest) for compose instead.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No build progress on stderr.")
def build(  # noqa: PLR0917 - click passes every option as a parameter
    repo: Path | None,
    base_ref: str,
    base_image: str | None,
    tag: str | None,
    controller: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Build the sandbox image and print its image ID (which every run records)."""
    settings = get_settings()
    on_output = None if quiet else _progress
    if controller and repo is not None:
        raise CliError("--controller and --repo build different images: give one")
    try:
        engine = open_engine(settings).images
        if controller:
            result = build_controller_image(
                engine, base_image=base_image, tag=tag or CONTROLLER_IMAGE, on_output=on_output
            )
        elif repo is None:
            result = build_sandbox_image(
                engine, base_image=base_image, tag=tag or settings.image, on_output=on_output
            )
        else:
            if base_image is not None:
                raise CliError("--base-image applies to the sandbox image, not to --repo layers")
            top = ensure_repository(repo)
            commit = resolve_commit(top, base_ref)
            built, deps = build_repo_image(
                engine, top, commit, sandbox_image=tag or settings.image, on_output=on_output
            )
            if built is None:
                message = f"{top} declares no dependencies at {commit[:12]}; its runs use {tag or settings.image}"
                if as_json:
                    click.echo(
                        json.dumps(
                            {
                                "tag": None,
                                "image_id": None,
                                "ignored": deps.ignored,
                                "message": message,
                            }
                        )
                    )
                else:
                    echo_safe(message)
                return
            result = built
    except TaskboxError as exc:
        raise CliError(str(exc)) from exc
    if as_json:
        click.echo(result.model_dump_json(indent=2))
        return
    note = " (cached)" if result.cached else ""
    click.echo(
        f"{result.tag}: Python {result.python} FROM {result.base_image}, {result.seconds:.1f} s{note}",
        err=True,
    )
    click.echo(result.image_id)
