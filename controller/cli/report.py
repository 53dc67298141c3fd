"""The human forms of a run: live event lines with elapsed time, and the compact report at the end.

Everything shown here that came from a task, a repository or a sandbox (messages, paths,
evidence, the summary) is data: escaped, never parsed as markup, never coloured. The only
styles are the report's own labels and the status, which is one of five fixed words.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from controller.display import escape_text, safe_text
from controller.ingest import BRANCH_PREFIX

if TYPE_CHECKING:
    from datetime import datetime
    from pathlib import Path

    from rich.console import RenderableType

    from controller.events import RunEvent
    from taskbox_wire.contract import TaskResult

#: Evidence lines shown for a failed check (the record keeps them all).
EVIDENCE_LINES = 3
#: Longest evidence line shown; the rest is cut with an ellipsis.
EVIDENCE_CHARS = 200
#: Files listed by name before the report says "and N more".
FILES_SHOWN = 10

_STATUS_STYLE = {
    "succeeded": "bold green",
    "failed": "bold red",
    "timeout": "bold red",
    "cancelled": "bold yellow",
    "error": "bold red",
}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def event_line(event: RunEvent, started: datetime) -> Text:
    """``[  12.3s]        staged  5 files staged``: seconds since the run started, stage, message."""
    elapsed = max(0.0, (event.at - started).total_seconds())
    return Text.assemble(
        (f"[{elapsed:7.1f}s] ", "dim"),
        safe_text(f"{event.stage:>15}", "dim"),
        "  ",
        safe_text(event.message),
    )


def _fields(rows: list[tuple[str, Text]]) -> Table:
    """Label and value in two columns, so that a long value wraps under itself."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", min_width=9, no_wrap=True)
    grid.add_column(overflow="fold")
    for name, value in rows:
        grid.add_row(name, value)
    return grid


def _tests(result: TaskResult) -> Text:
    counts = result.test_results
    coverage = (
        "coverage not measured"
        if counts.coverage_percent is None
        else f"coverage {counts.coverage_percent:.1f}%"
    )
    return Text(
        f"{counts.passed} passed, {counts.failed} failed, {counts.skipped} skipped"
        f" of {counts.total}; {coverage}"
    )


def checks_table(result: TaskResult) -> Table:
    """The ten checks: id, name, pass/fail and, for failures, the first evidence lines."""
    table = Table(title="Checks", title_justify="left", highlight=False, show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("check")
    table.add_column("result")
    table.add_column("evidence (failures)")
    for check in sorted(result.constraints, key=lambda c: c.id):
        if check.passed:
            verdict, evidence = Text("pass", style="green"), Text("")
        else:
            # Each evidence line is escaped on its own: a newline inside one cannot add rows.
            lines = [
                escape_text(_cut(line, EVIDENCE_CHARS)) for line in check.evidence[:EVIDENCE_LINES]
            ]
            if len(check.evidence) > EVIDENCE_LINES:
                lines.append(f"(+{len(check.evidence) - EVIDENCE_LINES} more in the record)")
            verdict = Text("FAIL", style="bold red")
            evidence = Text("\n".join(lines) or "(no evidence)")
        table.add_row(str(check.id), safe_text(check.name), verdict, evidence)
    return table


def _files(paths: list[str]) -> Text:
    shown = ", ".join(paths[:FILES_SHOWN])
    more = f" and {len(paths) - FILES_SHOWN} more" if len(paths) > FILES_SHOWN else ""
    return Text.assemble(f"{len(paths)}: ", safe_text(shown), more)


def _agent_claim(result: TaskResult) -> Text | None:
    """The agent's own claim, when the record has one that differs from the verdict."""
    # Read loosely: the claim is recorded beside the verdict, and older records lack it.
    claim: Any = getattr(result, "agent", None)
    if claim is None or getattr(claim, "status", result.status) == result.status:
        return None
    counts = claim.test_results
    said = f"claimed {claim.status}; its tests {counts.passed}/{counts.total} passed"
    if claim.failed_constraints:
        said += "; it saw checks " + ", ".join(map(str, claim.failed_constraints)) + " fail"
    return Text.assemble(said, " (the verdict above is the judge's)")


def _summary_rows(result: TaskResult) -> list[tuple[str, Text]]:
    """The labelled lines at the top of the report."""
    status = Text.assemble(
        Text(result.status, style=_STATUS_STYLE.get(result.status, "bold")),
        "  task ",
        safe_text(result.task_key),
    )
    rows: list[tuple[str, Text]] = [("status", status)]
    if result.reason:
        rows.append(("reason", safe_text(result.reason)))
    if result.git_commit:
        branch = Text.assemble(
            safe_text(f"{BRANCH_PREFIX}{result.task_key}"), f" at {result.git_commit}"
        )
        rows.append(("branch", branch))
    else:
        rows.append(("branch", Text("none written")))
    rows.append(("tests", _tests(result)))
    if result.rounds is not None:
        rows.append(("rounds", Text(str(result.rounds))))
    if result.files_created:
        rows.append(("created", _files(result.files_created)))
    if result.files_modified:
        rows.append(("modified", _files(result.files_modified)))
    if result.summary and result.summary != result.reason:
        rows.append(("summary", safe_text(_cut(result.summary, 2000))))
    claim = _agent_claim(result)
    if claim is not None:
        rows.append(("agent", claim))
    return rows


def result_report(result: TaskResult, record_dir: Path | None) -> RenderableType:
    """The compact report ``taskbox run`` ends with (``--json`` prints the result instead)."""
    parts: list[RenderableType] = [_fields(_summary_rows(result))]
    if result.constraints:
        failed = sum(not c.passed for c in result.constraints)
        parts.append(Text(""))
        parts.append(checks_table(result))
        parts.append(
            Text(f"{len(result.constraints) - failed} of {len(result.constraints)} checks pass")
        )
    if result.missing_context:
        parts.append(Text(""))
        parts.append(Text("Missing context (not mounted):", style="bold"))
        parts.extend(Text.assemble("  - ", safe_text(item)) for item in result.missing_context)
    if record_dir is not None:
        parts.append(Text(""))
        parts.append(_fields([("record", safe_text(record_dir))]))
    return Group(*parts)
