"""``taskbox runs list`` / ``taskbox runs show RUN``: find and read run records without opening files.

A record is ``<runs-dir>/<run-id>/record/`` (``run.json``, ``result.json``,
``events.jsonl``; see ``controller.runs.RunRecord``). Records are read leniently (an old
or half-written record still lists) and everything in them is shown as data: escaped,
never markup, never coloured.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import click
from pydantic import JsonValue, ValidationError
from rich.table import Table
from rich.text import Text

from controller.cli.common import CliError
from controller.cli.report import result_report
from controller.display import duration, escape_json, make_console, safe_text
from controller.settings import get_settings
from taskbox_wire.contract import TaskResult

#: A run id as ``new_run_id`` makes them; anything else given as RUN must be a folder path.
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")
#: Events shown by ``runs show`` before the rest are counted (the record keeps all).
MAX_EVENTS_SHOWN = 500
#: Largest record file read (a record is the controller's; this only bounds a mistake).
MAX_RECORD_FILE_BYTES = 16 * 1024 * 1024


def _read_json(path: Path) -> Any:
    """A record file's JSON, or None when it is absent, too large or not JSON."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_RECORD_FILE_BYTES:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _events(record: Path) -> list[dict[str, Any]]:
    path = record / "events.jsonl"
    events: list[dict[str, Any]] = []
    try:
        if path.stat().st_size > MAX_RECORD_FILE_BYTES:
            return events
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return events
    for line in lines:
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(item, dict):
            events.append(item)
    return events


class RunSummary:
    """What ``runs list`` shows of one record."""

    def __init__(self, root: Path) -> None:
        """Read ``root/record`` (run.json and result.json)."""
        self.root = root
        self.record = root / "record"
        meta = _read_json(self.record / "run.json")
        self.meta: dict[str, Any] = meta if isinstance(meta, dict) else {}
        result = _read_json(self.record / "result.json")
        self.result: dict[str, Any] = result if isinstance(result, dict) else {}
        self.started = _time(self.meta.get("started_at"))
        self.finished = _time(self.meta.get("finished_at"))

    @property
    def run_id(self) -> str:
        """The run's id (its folder's name)."""
        return self.root.name

    @property
    def status(self) -> str:
        """The run's final status, ``running?`` when the record has none (running, or crashed)."""
        return str(self.meta.get("status") or self.result.get("status") or "running?")

    @property
    def seconds(self) -> float | None:
        """Wall time from start to finish, when both are recorded."""
        if self.started is None or self.finished is None:
            return None
        return (self.finished - self.started).total_seconds()

    def as_json(self) -> dict[str, Any]:
        """The ``--json`` form of one list entry."""
        return {
            "run_id": self.run_id,
            "task_key": self.meta.get("task_key"),
            "status": self.status,
            "started_at": self.meta.get("started_at"),
            "finished_at": self.meta.get("finished_at"),
            "duration_seconds": self.seconds,
            "model": self.meta.get("model"),
            "policy": self.meta.get("policy"),
            "base_commit": self.meta.get("base_commit"),
            "git_commit": self.result.get("git_commit"),
            "record": str(self.record),
        }


def _runs_dir(runs_dir: Path | None) -> Path:
    return runs_dir.resolve() if runs_dir is not None else get_settings().runs_dir


def _all_runs(folder: Path) -> list[RunSummary]:
    if not folder.is_dir():
        return []
    found = [RunSummary(p) for p in folder.iterdir() if (p / "record").is_dir()]
    return sorted(found, key=lambda r: (r.meta.get("started_at") or "", r.run_id), reverse=True)


def _find_run(run: str, folder: Path) -> Path:
    """A run's folder from its id (under ``folder``) or a path to the run or its record."""
    given = Path(run)
    for candidate in (given, given.parent):
        if (candidate / "record").is_dir() and given.exists():
            return candidate
    if RUN_ID_PATTERN.fullmatch(run) and (folder / run / "record").is_dir():
        return folder / run
    raise CliError(f"no run record {run!r} (a run id under {folder}, or a run folder)")


runs_dir_option = click.option(
    "--runs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of run records (default: the settings' runs_dir).",
)


@click.group()
def runs() -> None:
    """Find and read run records (var/runs/<run-id>/record)."""


@runs.command("list")
@runs_dir_option
@click.option("--task", "task_key", default=None, help="Only runs of this task key.")
@click.option("--status", default=None, help="Only runs that ended with this status.")
@click.option("-n", "--limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def list_runs(
    runs_dir: Path | None, task_key: str | None, status: str | None, limit: int, as_json: bool
) -> None:
    """List run records, newest first."""
    found = [
        r
        for r in _all_runs(_runs_dir(runs_dir))
        if (task_key is None or r.meta.get("task_key") == task_key)
        and (status is None or r.status == status)
    ][:limit]
    if as_json:
        click.echo(json.dumps([r.as_json() for r in found], indent=2))
        return
    table = Table(title=f"Runs in {_runs_dir(runs_dir)}", title_justify="left", highlight=False)
    table.add_column("run", no_wrap=True)
    for column in ("task", "status", "started (UTC)", "took"):
        table.add_column(column, no_wrap=True)
    table.add_column("model", max_width=40, overflow="ellipsis")
    table.add_column("commit", no_wrap=True)
    for item in found:
        started = f"{item.started:%Y-%m-%d %H:%M:%S}" if item.started else "-"
        commit = item.result.get("git_commit")
        table.add_row(
            safe_text(item.run_id),
            safe_text(item.meta.get("task_key") or "-"),
            safe_text(item.status),
            started,
            duration(item.seconds),
            safe_text(item.meta.get("model") or "-"),
            safe_text(commit[:12] if isinstance(commit, str) else "-"),
        )
    console = make_console()
    console.print(table)
    if not found:
        console.print("no run records")


def _timeline(events: list[dict[str, Any]]) -> Table:
    """Each event with its time since the run started and how long until the next one."""
    table = Table(title="Events", title_justify="left", highlight=False)
    for column, justify in (
        ("at", "right"),
        ("took", "right"),
        ("stage", "left"),
        ("message", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]  # rich's Literal
    times = [_time(e.get("at")) for e in events]
    first = next((t for t in times if t is not None), None)
    for index, event in enumerate(events[:MAX_EVENTS_SHOWN]):
        at, following = times[index], times[index + 1] if index + 1 < len(times) else None
        offset = f"{(at - first).total_seconds():.1f}s" if at and first else "-"
        took = f"{(following - at).total_seconds():.1f}s" if at and following else ""
        table.add_row(
            offset, took, safe_text(event.get("stage", "")), safe_text(event.get("message", ""))
        )
    if len(events) > MAX_EVENTS_SHOWN:
        table.add_row("", "", "", f"(+{len(events) - MAX_EVENTS_SHOWN} more in events.jsonl)")
    return table


@runs.command("show")
@click.argument("run")
@runs_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print run.json, result.json and the events.")
def show_run(run: str, runs_dir: Path | None, as_json: bool) -> None:
    """Show one run: what it ran, its stage timeline and its report. RUN is a run id or folder."""
    summary = RunSummary(_find_run(run, _runs_dir(runs_dir)))
    events = _events(summary.record)
    if as_json:
        document = cast(
            "JsonValue",
            {"run": summary.meta, "result": summary.result or None, "events": events},
        )
        # JSON keeps escapes as they are; the record's text is escaped like any shown text.
        click.echo(json.dumps(escape_json(document), indent=2))
        return
    console = make_console()
    meta = summary.meta
    usage = meta.get("usage") if isinstance(meta.get("usage"), dict) else {}
    rows = [
        ("run", summary.run_id),
        ("task", meta.get("task_key")),
        ("repository", meta.get("repository")),
        ("base", f"{meta.get('base_ref')} = {meta.get('base_commit')}"),
        ("policy", f"{meta.get('policy')} ({meta.get('policy_digest')})"),
        ("image", f"{meta.get('image')} ({meta.get('image_id')})"),
        ("model", meta.get("model")),
        ("started", meta.get("started_at")),
        ("took", duration(summary.seconds)),
    ]
    if usage:
        tokens = f"{usage.get('input_tokens')} input and {usage.get('output_tokens')} output tokens"
        rows.append(("model use", f"{usage.get('requests')} requests, {tokens}"))
    for name, value in rows:
        console.print(Text.assemble((f"{name:<11}", "bold"), safe_text(value or "-")))
    console.print()
    console.print(_timeline(events))
    console.print()
    try:
        result = TaskResult.model_validate(summary.result)
    except ValidationError:
        console.print(Text("no readable result.json in this record", style="bold"))
        console.print(Text.assemble(("record    ", "bold"), safe_text(summary.record)))
        return
    console.print(result_report(result, summary.record))
