"""Pieces every CLI command shares: loading a task file, resolving a repository, error display."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click
from pydantic import ValidationError

from controller.display import escape_text
from controller.errors import InvalidTaskError
from taskbox_wire.contract import Task

if TYPE_CHECKING:
    from pathlib import Path


def load_task_file(path: Path) -> Task:
    """Read and validate a task JSON file; a clear InvalidTaskError when it is wrong."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidTaskError(f"{path}: cannot read: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise InvalidTaskError(f"{path}: not valid JSON: {exc.msg} (line {exc.lineno})") from exc
    try:
        return Task.model_validate(raw)
    except ValidationError as exc:
        raise InvalidTaskError(f"{path}: {describe_validation_error(exc)}") from exc


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, ``field.path: message``; no input values echoed back."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()
    )


class CliError(click.ClickException):
    """A failure shown to the user as ``error: message`` with exit status 2.

    The message often quotes a task, a repository or a sandbox (a path, a ref, a file
    name): it is shown escaped, on one line.
    """

    exit_code = 2

    def format_message(self) -> str:
        """The message with control, bidi and zero-width characters escaped."""
        return escape_text(self.message)


def echo_safe(text: str, *, err: bool = False, multiline: bool = False) -> None:
    """``click.echo`` for a line that quotes untrusted text: shown escaped (one line unless ``multiline``)."""
    click.echo(escape_text(text, multiline=multiline), err=err)


class InfrastructureError(CliError):
    """The engine, the image or the gateway failed, not the input: exit status 3."""

    exit_code = 3
