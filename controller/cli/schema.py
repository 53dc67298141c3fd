"""``taskbox schema export``: write the task and result JSON Schemas (committed under schemas/)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from taskbox_wire.contract import json_schemas


def render_schemas() -> dict[str, str]:
    """File name → exact file content of every exported schema."""
    return {
        name: json.dumps(body, indent=2, sort_keys=True) + "\n"
        for name, body in json_schemas().items()
    }


@click.group()
def schema() -> None:
    """The task and result JSON Schemas."""


@schema.command("export")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("schemas"),
    show_default=True,
)
def export(out: Path) -> None:
    """Write task.schema.json and result.schema.json into OUT."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render_schemas().items():
        (out / name).write_text(text, encoding="utf-8")
        click.echo(f"wrote {out / name}")
