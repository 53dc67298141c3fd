"""Constraint 4: line coverage of the owned, non-test code, from coverage's JSON totals.

The number is coverage's own ``totals.percent_covered`` for the run, measured
over exactly the owned source (unimported owned files count as unrun); the
findings list the lines each file left unrun.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskbox_runner.verify.models import CheckOutcome, Finding

if TYPE_CHECKING:
    from taskbox_runner.verify.pytest_run import PytestRun
    from taskbox_runner.verify.workspace import Workspace

RULE_UNCOVERED = "TB0401"
RULE_NOT_MEASURED = "TB0402"


def line_ranges(lines: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``'1-3, 7'``."""
    parts: list[str] = []
    start = previous = None
    for line in [*sorted(lines), None]:
        if start is not None and previous is not None and (line is None or line != previous + 1):
            parts.append(str(start) if start == previous else f"{start}-{previous}")
            start = None
        if line is not None and start is None:
            start = line
        previous = line
    return ", ".join(parts)


def check_coverage(space: Workspace, tests: PytestRun, threshold: float) -> CheckOutcome:
    """Passed when the owned source's total line coverage is at least ``threshold``."""
    source = space.owned_source
    if not source:
        return CheckOutcome(4, "not applicable: the task owns no Python source besides tests")
    report = tests.coverage
    if report is None:
        why = (
            tests.problem
            or "pytest-cov wrote no coverage JSON (no test ran, or nothing was measured)"
        )
        return CheckOutcome(
            4,
            f"coverage not measured: {why}",
            [Finding(source[0], 1, RULE_NOT_MEASURED, why)],
        )
    percent = report.percent_covered
    passed = percent >= threshold
    findings = []
    if not passed:
        for rel, missing in sorted(report.missing.items()):
            if missing:
                findings.append(
                    Finding(
                        rel,
                        missing[0],
                        RULE_UNCOVERED,
                        f"{report.percent_by_file.get(rel, 0.0):.2f}% covered; lines never run: "
                        f"{line_ranges(missing)}",
                    )
                )
    measured = set(report.missing)
    findings += [
        Finding(rel, 1, RULE_NOT_MEASURED, "owned source file missing from the coverage report")
        for rel in source
        if rel not in measured and space.text(rel).strip() and not rel.endswith("__init__.py")
    ]
    comparison = ">=" if passed else "<"
    verdict = (
        f"{percent:.2f}% {comparison} {threshold:.2f}% line coverage of owned source "
        f"({report.num_statements} statements, coverage JSON totals)"
    )
    unmeasured = sum(f.rule == RULE_NOT_MEASURED for f in findings)
    if unmeasured:
        # A never-imported module outside a package escapes coverage's totals; it is not "covered".
        passed = False
        verdict += f"; {unmeasured} owned file(s) never imported or measured"
    return CheckOutcome(4, verdict, findings, name=f"Test coverage >= {threshold:g}%")
