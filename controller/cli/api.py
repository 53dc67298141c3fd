"""``taskbox api openapi``: print (or write) the controller API's OpenAPI document."""

from __future__ import annotations

from pathlib import Path

import click

from controller.api import render_openapi


@click.group()
def api() -> None:
    """The controller's HTTP API."""


@api.command("openapi")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file instead of standard output (the repository keeps openapi.json).",
)
def openapi(out: Path | None) -> None:
    """The OpenAPI document, as committed in openapi.json."""
    text = render_openapi()
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        click.echo(f"wrote {out}")
