"""``/out/result.json``: the TaskResult the runner reports, and how it is written.

The controller re-derives files and checks the commit itself; this file is
the runner's honest account, and it must be written whatever went wrong.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from pydantic import ValidationError

from taskbox_wire.contract import ConstraintReport, TaskResult, TestResults
from taskbox_wire.paths import RESULT_FILE

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from taskbox_runner.checks import VerificationOutcome
    from taskbox_runner.loop import LoopOutcome
    from taskbox_runner.scratch_git import WorkCommit

logger = logging.getLogger(__name__)

_MAX_TEXT = 19_000
_MAX_MISSING = 2000


def _clip(text: str, limit: int = _MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _tests_line(tests: TestResults) -> str:
    coverage = "" if tests.coverage_percent is None else f", coverage {tests.coverage_percent:.1f}%"
    return f"{tests.passed}/{tests.total} tests pass, {tests.failed} fail, {tests.skipped} skipped{coverage}"


def summarise(
    outcome: LoopOutcome, commit: WorkCommit | None, report: VerificationOutcome | None
) -> str:
    """A few sentences: what happened, the tests, the files, and the model's own closing note."""
    framework = "" if report is None or report.framework is None else f" ({report.framework})"
    head = (
        f"Checks passed after {outcome.rounds} round(s){framework}."
        if outcome.passed
        else f"Checks did not pass{framework}: {outcome.reason or 'unknown reason'}."
    )
    parts = [head]
    if report is not None:
        parts.append(_tests_line(report.test_results) + ".")
    if commit is None:
        parts.append("No file was changed.")
    else:
        parts.append(
            f"{len(commit.files_created)} file(s) created, {len(commit.files_modified)} modified."
        )
    parts.append(
        f"{outcome.model_calls} model call(s), {outcome.usage.total} tokens"
        f" ({outcome.usage.cache_read_input_tokens} read from cache)."
    )
    if outcome.final_text:
        parts.append(f"Model's note: {_clip(' '.join(outcome.final_text.split()), 1500)}")
    return _clip(" ".join(parts))


def merge_missing(planned: Sequence[str], reported: Sequence[str]) -> list[str]:
    """The plan's missing files, then the model's reports, without repeats."""
    merged: list[str] = []
    for line in (*planned, *reported):
        if line not in merged:
            merged.append(line)
    return [_clip(line, 2000) for line in merged[:_MAX_MISSING]]


def build_result(
    *,
    task_key: str,
    outcome: LoopOutcome,
    commit: WorkCommit | None,
    missing_context: list[str],
) -> TaskResult:
    """The TaskResult for a loop that ran to its end (passed or not)."""
    report = outcome.report
    passed = outcome.passed and commit is not None
    reason = outcome.reason
    if outcome.passed and commit is None:
        reason = "the checks passed but the model changed no file"
    if outcome.stale_report and reason is not None:
        reason += " (the test results predate the last edits: no time was left to check again)"
    fields: dict[str, object] = {
        "task_key": task_key,
        "status": "succeeded" if passed else "failed",
        "files_created": commit.files_created if commit else [],
        "files_modified": commit.files_modified if commit else [],
        "git_commit": commit.sha if commit else None,
        "summary": summarise(outcome, commit, report),
        "missing_context": missing_context,
        "reason": None if passed else _clip(reason or "the checks did not pass"),
        "rounds": outcome.rounds,
    }
    if report is not None:
        fields["test_results"] = report.test_results
        fields["constraints"] = list(report.constraints)
    try:
        return TaskResult.model_validate(fields)
    except ValidationError as exc:
        # The verifier's report did not fit the contract: keep the commit, drop the report.
        logger.warning(
            "verification report does not fit TaskResult: %s", exc.errors(include_input=False)
        )
        fields.pop("test_results", None)
        fields.pop("constraints", None)
        fields["status"] = "failed"
        fields["reason"] = (
            "the verification report could not be recorded (it does not fit the result schema)"
        )
        return TaskResult.model_validate(fields)


def failure_result(
    task_key: str,
    reason: str,
    *,
    missing_context: list[str] | None = None,
    commit: WorkCommit | None = None,
    test_results: TestResults | None = None,
    constraints: Sequence[ConstraintReport] = (),
) -> TaskResult:
    """A failed TaskResult for a run that could not finish its loop."""
    return TaskResult(
        task_key=task_key,
        status="failed",
        files_created=commit.files_created if commit else [],
        files_modified=commit.files_modified if commit else [],
        git_commit=commit.sha if commit else None,
        summary=_clip(f"The run failed: {reason}"),
        test_results=test_results or TestResults(),
        constraints=list(constraints),
        missing_context=missing_context or [],
        reason=_clip(reason),
    )


def write_result(outdir: Path, result: TaskResult) -> Path:
    """Write ``result.json`` atomically: a temporary file in ``outdir``, then a rename over the old one."""
    target = outdir / RESULT_FILE
    temp = outdir / f".{RESULT_FILE}.{os.getpid()}.tmp"
    data = result.model_dump_json(indent=2).encode("utf-8")
    temp.unlink(missing_ok=True)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    temp.replace(target)  # replaces a planted symlink itself, never its target
    logger.info("wrote %s: status %s", target, result.status)
    return target
