"""``verify_static()`` and ``verify()``: one ruff run, one pytest run, the ten checks, one report.

The static phase reads files and runs ruff and detect-secrets only; ``verify``
adds what needs the code to run (tests with coverage, the contract run, Django
migrations) and merges both per constraint.

Tool failures (a crash, a timeout, unreadable output) become failed checks
with evidence, never exceptions: the loop always gets a report to show the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from taskbox_runner.verify.async_endpoints import check_async
from taskbox_runner.verify.contract import check_contract, static_contract
from taskbox_runner.verify.coverage_check import check_coverage, static_coverage
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
from taskbox_runner.verify.process import run_bounded
from taskbox_runner.verify.pydantic_bodies import check_request_validation
from taskbox_runner.verify.pytest_run import PytestRun, python_file_patterns, run_pytest
from taskbox_runner.verify.ruff_checks import (
    check_no_print,
    check_ruff_clean,
    check_type_hints,
    noqa_warnings,
)
from taskbox_runner.verify.ruff_run import run_ruff
from taskbox_runner.verify.sql_injection import check_sql_injection
from taskbox_runner.verify.suite_index import TestLines, index_test_lines
from taskbox_runner.verify.test_integrity import (
    cannot_fail,
    not_collected,
    scan_evasions,
    scan_hooks,
)
from taskbox_runner.verify.tests_pass import check_tests, model_conftests, removed_tests
from taskbox_runner.verify.workspace import Workspace
from taskbox_wire.contract import TestResults

if TYPE_CHECKING:
    from taskbox_runner.verify.process import Launch

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


def verify_static(ctx: VerifyContext) -> VerificationReport:
    """The ten constraints as far as reading the files can decide them: nothing is imported or run.

    ruff and detect-secrets run as tools; every other check reads ASTs. Constraints 4, 5 and 6
    report only what is static (pragmas listed, hook scan, tests that cannot fail, tests removed
    or renamed out of collection, hidden routes) and pass when that finds nothing; the judge
    ANDs this report with the dynamic one.
    """
    return static_report(ctx, static_checks(ctx))


def static_checks(ctx: VerifyContext) -> StaticPhase:
    """Run the static checks; what they looked at and found, for :func:`static_report` and
    :func:`verify_dynamic` (the judge runs both on one :class:`StaticPhase`)."""
    return _static_phase(ctx)


def static_report(ctx: VerifyContext, static: StaticPhase) -> VerificationReport:
    """The static checks' findings as a report of the ten constraints (no test counts)."""
    return _report(ctx, static, None, static.outcomes, [])


def verify(ctx: VerifyContext) -> VerificationReport:
    """Check the repository at ``ctx.workdir`` against the ten constraints (static and dynamic)."""
    static = _static_phase(ctx)
    tests, dynamic = _dynamic_checks(ctx, static)
    outcomes = [merge_outcomes(dynamic[o.id], o) if o.id in dynamic else o for o in static.outcomes]
    return _report(ctx, static, tests, outcomes, test_warnings(tests))


def verify_dynamic(
    ctx: VerifyContext, static: StaticPhase, *, launch: Launch = run_bounded
) -> VerificationReport:
    """Only what needs the code to run (tests with coverage, the contract run, Django migrations).

    The judge's second report: constraints 4, 5 and 6 carry the dynamic verdicts alone, and the
    others pass with no evidence, since the static report (sealed before this runs) decides
    them; the controller ANDs the two per constraint, so nothing here can pass a static failure.
    ``launch`` starts the pytest run (the judge hands it to an interpreter started ahead).
    """
    tests, dynamic = _dynamic_checks(ctx, static, launch)
    outcomes = [
        dynamic.get(o.id) or CheckOutcome(o.id, "decided by the static checks", name=o.name)
        for o in static.outcomes
    ]
    report = _report(
        ctx,
        static,
        tests,
        outcomes,
        test_warnings(tests),
        static_warnings=False,
    )
    constraints = [
        c if c.id in dynamic else c.model_copy(update={"passed": True, "evidence": []})
        for c in report.constraints
    ]
    return report.model_copy(update={"constraints": constraints})


def _dynamic_checks(
    ctx: VerifyContext, static: StaticPhase, launch: Launch = run_bounded
) -> tuple[PytestRun, dict[int, CheckOutcome]]:
    """One pytest run (tests and coverage), Django's migration check, the contract run."""
    space = static.space
    manage_py = find_manage_py(space) if static.framework == "django" else None
    django_settings = settings_module(space, manage_py) if manage_py else None
    tests = run_pytest(
        space,
        base_config_dir=ctx.base_config_dir,
        scratch_dir=ctx.scratch_dir,
        timeout=ctx.test_timeout_seconds,
        django_settings=django_settings,
        launch=launch,
    )
    extra: list[Finding] = []
    if manage_py:
        extra = check_migrations(space, manage_py, django_settings, ctx.scratch_dir)
    contract = check_contract(space, static.framework, ctx.openapi_path, ctx.scratch_dir)
    dynamic: dict[int, CheckOutcome] = {
        4: check_coverage(space, tests, ctx.coverage_threshold),
        5: check_tests(
            tests,
            now=static.now,
            base=ctx.base_tests,
            changed_files=space.changed_files,
            workdir=str(space.workdir),
            extra_findings=extra,
        ),
        6: contract,
    }
    return tests, dynamic


@dataclass
class StaticPhase:
    """What the static phase looked at and found, reused by the full verification."""

    space: Workspace
    framework: Framework
    now: TestLines
    outcomes: list[CheckOutcome]
    warnings: list[str]


def _static_phase(ctx: VerifyContext) -> StaticPhase:
    ctx.scratch_dir.mkdir(parents=True, exist_ok=True)
    space = Workspace.load(ctx.workdir, ctx.owns_paths, ctx.changed_files, ctx.base_config_dir)
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
    now = index_test_lines(space.workdir)
    outcomes: list[CheckOutcome] = [
        check_sql_injection(space, ruff),
        check_secrets(space, ruff),
        check_type_hints(space, ruff),
        static_coverage(space, ctx.coverage_threshold),
        static_tests(space, now, ctx.base_tests, python_file_patterns(ctx.base_config_dir)),
        static_contract(space, ctx.openapi_path),
        check_request_validation(space, framework, types),
        check_no_print(space, ruff),
        check_ruff_clean(space, ruff),
        check_async(space, types),
    ]
    warnings = collect_warnings(ctx, space, framework, now) + noqa_warnings(space, ruff)
    return StaticPhase(space, framework, now, outcomes, warnings)


def static_tests(
    space: Workspace,
    now: TestLines,
    base: dict[str, list[str]] | None,
    patterns: tuple[str, ...],
) -> CheckOutcome:
    """Constraint 5 without running anything: hooks, tests that cannot fail, tests gone or hidden."""
    hooks = scan_hooks(space) + scan_evasions(space)
    weak = cannot_fail(space, patterns)
    hidden = not_collected(space, patterns)
    gone = removed_tests(now, base)
    verdict = (
        f"statically: {len(hooks)} pytest hook statement(s) that can change the verdict, "
        f"{len(weak)} test(s) or assertion(s) that cannot fail, "
        f"{len(gone) + len(hidden)} test(s) removed or not collected "
        f"(in {len([f for f in space.changed_files if f.endswith('.py')])} model-written Python file(s))"
    )
    return CheckOutcome(5, verdict, hooks + weak + hidden + gone)


def merge_outcomes(dynamic: CheckOutcome, static: CheckOutcome) -> CheckOutcome:
    """One constraint from both phases: the dynamic verdict first, every finding once.

    A static finding on a line the dynamic check already reported for this constraint is the same
    statement seen twice (a hidden route, a removed test) and is dropped.
    """
    seen = {(f.path, f.line, f.rule) for f in dynamic.findings}
    seen_lines = {(f.path, f.line) for f in dynamic.findings}
    extra = [
        f
        for f in static.findings
        if (f.path, f.line, f.rule) not in seen and (f.path, f.line) not in seen_lines
    ]
    verdict = dynamic.verdict
    if static.findings:
        verdict += f"; {static.verdict}"
    return CheckOutcome(
        dynamic.id,
        verdict,
        dynamic.findings + extra,
        name=dynamic.name or static.name,
        notes=list(dict.fromkeys(dynamic.notes + static.notes)),
        warnings=list(dict.fromkeys(dynamic.warnings + static.warnings)),
    )


def _report(
    ctx: VerifyContext,
    static: StaticPhase,
    tests: PytestRun | None,
    outcomes: list[CheckOutcome],
    warnings: list[str],
    *,
    static_warnings: bool = True,
) -> VerificationReport:
    scrub = (
        str(ctx.scratch_dir.resolve()),
        str(ctx.scratch_dir),
        str(static.space.workdir),
        str(ctx.workdir),
    )
    return VerificationReport(
        framework=static.framework,
        test_results=results_of(tests) if tests is not None else TestResults(),
        constraints=[outcome.to_report(scrub) for outcome in outcomes],
        warnings=list(
            dict.fromkeys(
                scrub_text(w, scrub)
                for w in (static.warnings if static_warnings else [])
                + warnings
                + [w for o in outcomes for w in o.warnings]
            )
        ),
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
    ctx: VerifyContext, space: Workspace, framework: Framework, now: TestLines
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
        f"{f.path}::{f.message.split(' ', 1)[0]}" for f in removed_tests(now, ctx.base_tests)
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
    return warnings


def test_warnings(tests: PytestRun) -> list[str]:
    """What the test run adds to the warnings."""
    junit = tests.junit
    if junit is not None and junit.skipped:
        return [f"{junit.skipped} test(s) skipped or xfailed"]
    return []
