"""Constraint 5, fail-to-pass: the model's new and changed tests must fail on the base code.

The judge stages the base tree with the model's new and changed test files laid
over it (read-only) and calls :func:`check_fail_to_pass`; those files run there
under the harness's pytest settings (:func:`pytest_run.run_test_files`). A test
that fails or errors there (an import of code the base lacks included) shows
that the suite tests the change; when every one of them passes, or none is
collected, the tests do not test the change and the check fails, naming them.
"""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from taskbox_runner.verify.django_project import find_manage_py, settings_module
from taskbox_runner.verify.models import CheckOutcome, Finding
from taskbox_runner.verify.process import run_bounded
from taskbox_runner.verify.pytest_boot import BASE_RUN_LABEL
from taskbox_runner.verify.pytest_run import python_file_patterns, run_test_files
from taskbox_runner.verify.tests_pass import locate_case
from taskbox_runner.verify.workspace import Workspace

if TYPE_CHECKING:
    from taskbox_runner.verify.models import VerifyContext
    from taskbox_runner.verify.process import Launch
    from taskbox_runner.verify.pytest_run import JunitCase
    from taskbox_runner.verify.suite_index import TestLines

logger = logging.getLogger(__name__)

RULE_PASSES_ON_BASE = "TB0513"
RULE_NO_NEW_TEST = "TB0514"
RULE_NOT_DECIDED = "TB0515"

#: Test ids named in one finding before the rest are counted.
NAMES_IN_A_FINDING = 10


def check_fail_to_pass(
    ctx: VerifyContext,
    *,
    base_workdir: Path,
    test_files: list[str],
    launch: Launch = run_bounded,
) -> CheckOutcome:
    """Run ``test_files`` in ``base_workdir``; at least one must fail there."""
    name = "All tests pass (fail-to-pass on the base)"
    patterns = python_file_patterns(ctx.base_config_dir)
    runnable = sorted(
        {
            rel
            for rel in test_files
            if any(fnmatch.fnmatch(PurePosixPath(rel).name, p) for p in patterns)
            and (base_workdir / rel).is_file()
            and not (base_workdir / rel).is_symlink()
        }
    )
    if not runnable:
        left = f" ({', '.join(sorted(test_files))} are not test modules)" if test_files else ""
        return CheckOutcome(
            5,
            "fail-to-pass: no new or changed test",
            [Finding(".", 1, RULE_NO_NEW_TEST, f"no new or changed test{left}")],
            name=name,
        )
    scratch = ctx.scratch_dir
    scratch.mkdir(parents=True, exist_ok=True)
    run = run_test_files(
        base_workdir,
        runnable,
        base_config_dir=ctx.base_config_dir,
        scratch_dir=scratch,
        timeout=ctx.test_timeout_seconds,
        label=BASE_RUN_LABEL,
        django_settings=_django_settings(base_workdir, ctx),
        launch=launch,
    )
    shown = ", ".join(runnable)
    if run.completed is None or run.completed.timed_out:
        why = run.problem or "pytest did not run"
        return CheckOutcome(
            5,
            f"fail-to-pass: not decided on the base ({shown})",
            [Finding(runnable[0], 1, RULE_NOT_DECIDED, why)],
            name=name,
        )
    junit = run.junit
    if junit is None:
        # pytest stopped before writing a report (a conftest that cannot import on the base):
        # the new tests did not pass there.
        return CheckOutcome(
            5,
            f"fail-to-pass: the new tests do not run on the base ({run.problem}): {shown}",
            name=name,
        )
    index: TestLines = {rel: {} for rel in runnable}
    failing = [c for c in junit.cases if c.outcome in ("failed", "error")]
    if failing:
        names = [_shown(c, index) for c in failing]
        return CheckOutcome(
            5,
            f"fail-to-pass: {len(failing)} of {junit.tests} new or changed test(s) fail on the "
            f"base: {_listed(names)}",
            name=name,
        )
    passing = [_shown(c, index) for c in junit.cases if c.outcome == "passed"]
    message = (
        f"the tests pass on the base as well: they do not test the change ({_listed(passing)})"
        if passing
        else f"no test of {shown} ran on the base (none collected, or all skipped)"
    )
    return CheckOutcome(
        5,
        f"fail-to-pass: none of {junit.tests} new or changed test(s) fails on the base",
        [Finding(runnable[0], 1, RULE_PASSES_ON_BASE, message)],
        name=name,
    )


def _django_settings(base_workdir: Path, ctx: VerifyContext) -> str | None:
    """The settings module the base's manage.py names, as the full run uses (None elsewhere)."""
    space = Workspace.load(base_workdir, [], [], ctx.base_config_dir)
    manage_py = find_manage_py(space)
    return settings_module(space, manage_py) if manage_py else None


def _shown(case: JunitCase, index: TestLines) -> str:
    rel, test_id = locate_case(case, index)
    return f"{rel}::{test_id}" if test_id else rel or PurePosixPath(case.name).as_posix()


def _listed(names: list[str]) -> str:
    more = len(names) - NAMES_IN_A_FINDING
    return ", ".join(names[:NAMES_IN_A_FINDING]) + (f" and {more} more" if more > 0 else "")
