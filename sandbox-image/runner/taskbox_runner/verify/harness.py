"""``verify()``: one ruff run, one pytest run, the ten checks, one report.

Tool failures (a crash, a timeout, unreadable output) become failed checks
with evidence, never exceptions: the loop always gets a report to show the model.
"""

from __future__ import annotations

import logging
from pathlib import PurePosixPath

from controller.contract import TestResults
from taskbox_runner.verify.async_endpoints import check_async
from taskbox_runner.verify.contract import check_contract
from taskbox_runner.verify.coverage_check import check_coverage
from taskbox_runner.verify.django_project import check_migrations, find_manage_py, settings_module
from taskbox_runner.verify.endpoints import ProjectTypes
from taskbox_runner.verify.framework import detect_framework
from taskbox_runner.verify.hardcoded_secrets import check_secrets
from taskbox_runner.verify.models import (
    CheckOutcome,
    Finding,
    Framework,
    VerificationReport,
    VerifyContext,
    scrub_text,
)
from taskbox_runner.verify.pydantic_bodies import check_request_validation
from taskbox_runner.verify.pytest_run import PytestRun, run_pytest
from taskbox_runner.verify.ruff_checks import (
    check_no_print,
    check_ruff_clean,
    check_type_hints,
    noqa_warnings,
)
from taskbox_runner.verify.ruff_run import run_ruff
from taskbox_runner.verify.sql_injection import check_sql_injection
from taskbox_runner.verify.suite_index import TestLines, index_test_lines
from taskbox_runner.verify.tests_pass import check_tests, model_conftests
from taskbox_runner.verify.workspace import Workspace

logger = logging.getLogger(__name__)

#: Test ids named in one warning before the rest are only counted.
NAMES_IN_A_WARNING = 10

#: Config files the harness reads from the base copy only; a model edit to them is reported.
TOOL_CONFIG_FILES = frozenset(
    {
        "pytest.ini",
        "pyproject.toml",
        "setup.cfg",
        "tox.ini",
        "ruff.toml",
        ".ruff.toml",
        ".coveragerc",
        "requirements.txt",
    }
)


def verify(ctx: VerifyContext) -> VerificationReport:
    """Check the repository at ``ctx.workdir`` against the ten constraints."""
    ctx.scratch_dir.mkdir(parents=True, exist_ok=True)
    space = Workspace.load(ctx.workdir, ctx.owns_paths, ctx.changed_files)
    framework = detect_framework(ctx.base_config_dir, space)
    types = ProjectTypes.scan(space)
    logger.info(
        "verifying %s (%s): %d owned files", space.workdir, framework, len(space.owned_files)
    )

    ruff_files = sorted(
        set(space.owned_python)
        | {f for f in space.changed_files if f.endswith(".py") and f in space.all_python}
    )
    ruff = run_ruff(space, ruff_files, ctx.base_config_dir, ctx.scratch_dir)

    manage_py = find_manage_py(space) if framework == "django" else None
    django_settings = settings_module(space, manage_py) if manage_py else None
    tests = run_pytest(
        space,
        base_config_dir=ctx.base_config_dir,
        scratch_dir=ctx.scratch_dir,
        timeout=ctx.test_timeout_seconds,
        django_settings=django_settings,
    )
    extra: list[Finding] = []
    if manage_py:
        extra = check_migrations(space, manage_py, django_settings, ctx.scratch_dir)

    now = index_test_lines(space.workdir)
    outcomes: list[CheckOutcome] = [
        check_sql_injection(space, ruff),
        check_secrets(space, ruff),
        check_type_hints(space, ruff),
        check_coverage(space, tests, ctx.coverage_threshold),
        check_tests(
            tests,
            now=now,
            base=ctx.base_tests,
            changed_files=space.changed_files,
            workdir=str(space.workdir),
            extra_findings=extra,
        ),
        check_contract(space, framework, ctx.openapi_path, ctx.scratch_dir),
        check_request_validation(space, framework, types),
        check_no_print(space, ruff),
        check_ruff_clean(space, ruff),
        check_async(space, types),
    ]
    scrub = (
        str(ctx.scratch_dir.resolve()),
        str(ctx.scratch_dir),
        str(space.workdir),
        str(ctx.workdir),
    )
    return VerificationReport(
        framework=framework,
        test_results=results_of(tests),
        constraints=[outcome.to_report(scrub) for outcome in outcomes],
        warnings=[
            scrub_text(w, scrub)
            for w in collect_warnings(ctx, space, tests, framework, now)
            + noqa_warnings(space, ruff)
        ],
    )


def results_of(tests: PytestRun) -> TestResults:
    """The counts exactly as junit and coverage's JSON totals report them."""
    junit = tests.junit
    coverage = tests.coverage.percent_covered if tests.coverage is not None else None
    if junit is None:
        return TestResults(coverage_percent=coverage)
    # pytest counts a test that fails and then errors in teardown once in ``tests`` but in both
    # ``failures`` and ``errors``; cap so the contract's passed+failed+skipped <= total holds.
    skipped = min(junit.skipped, junit.tests)
    return TestResults(
        total=junit.tests,
        passed=junit.passed,
        failed=min(junit.failed, junit.tests - skipped),
        skipped=skipped,
        coverage_percent=coverage,
    )


def collect_warnings(
    ctx: VerifyContext, space: Workspace, tests: PytestRun, framework: Framework, now: TestLines
) -> list[str]:
    """What a reviewer should know that the verdicts do not say by themselves."""
    warnings = [
        f"conftest.py written by the model: {rel} (it runs inside the test session; review it)"
        for rel in model_conftests(space.changed_files)
    ]
    warnings += [
        f"{rel} changed by the model: the harness used the base configuration"
        for rel in space.changed_files
        if PurePosixPath(rel).name in TOOL_CONFIG_FILES
    ]
    outside = [f for f in space.changed_files if not space.is_owned(f)]
    if outside:
        warnings.append(f"files changed outside the owned paths: {', '.join(sorted(outside))}")
    if ctx.base_tests is None:
        warnings.append("no base test index was given: removed tests were not checked")
    removed = [
        f"{rel}::{test_id}"
        for rel, ids in sorted((ctx.base_tests or {}).items())
        for test_id in ids
        if test_id not in now.get(rel, {})
    ]
    if removed:
        more = len(removed) - NAMES_IN_A_WARNING
        shown = ", ".join(removed[:NAMES_IN_A_WARNING]) + (f" and {more} more" if more > 0 else "")
        warnings.append(f"{len(removed)} test(s) removed since the base: {shown}")
    if ctx.openapi_path and framework == "django":
        warnings.append(
            "the contract was not compared with the app: Django apps are not inspected yet"
        )
    if space.truncated:
        warnings.append("the repository has too many files: some were not checked")
    junit = tests.junit
    if junit is not None and junit.skipped:
        warnings.append(f"{junit.skipped} test(s) skipped or xfailed")
    return warnings
