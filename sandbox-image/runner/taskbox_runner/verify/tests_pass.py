"""Constraint 5: all tests pass, at least one ran, and none were quietly taken away.

Counts come from the junit file of the one pytest run. Besides failures and
errors it fails when no test ran, when a test is skipped (or xfailed) by a file
the model wrote (a conftest.py the model wrote makes every skip its own), when a
test defined in the files never appears in the report (deselected or not
collected), and when a test present at the base is gone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from taskbox_runner.verify.models import CheckOutcome, Finding

if TYPE_CHECKING:
    from collections.abc import Sequence

    from taskbox_runner.verify.pytest_run import JunitCase, JunitReport, PytestRun
    from taskbox_runner.verify.suite_index import TestLines

_PARAMS = re.compile(r"\[.*\]$")
#: pytest's exit code when it collected no test.
NO_TESTS_COLLECTED = 5


def model_conftests(changed_files: Sequence[str]) -> list[str]:
    """conftest.py files the model created or modified."""
    return sorted(f for f in changed_files if PurePosixPath(f).name == "conftest.py")


def locate_case(case: JunitCase, index: TestLines) -> tuple[str, str]:
    """``(test file, test id)`` for a junit case; the file is '' when it cannot be told."""
    name = _PARAMS.sub("", case.name)
    modules = {rel[:-3].replace("/", "."): rel for rel in index}
    if not case.classname:
        # A collection error or a module-level skip: the "name" is the module.
        return modules.get(name, name.replace(".", "/") + ".py"), ""
    best = ""
    for module in modules:
        if (case.classname == module or case.classname.startswith(f"{module}.")) and len(
            module
        ) > len(best):
            best = module
    if not best:
        return "", f"{case.classname}::{name}"
    chain = case.classname[len(best) + 1 :].replace(".", "::")
    return modules[best], f"{chain}::{name}" if chain else name


def _relative_location(location: str, workdir: str) -> str:
    path = location.rsplit(":", 1)[0]
    prefix = workdir.rstrip("/") + "/"
    return path.removeprefix(prefix)


@dataclass
class _CaseReview:
    """What the junit cases say: findings, which tests were reported, and the model's skips."""

    findings: list[Finding] = field(default_factory=list)
    seen: set[tuple[str, str]] = field(default_factory=set)
    broken_modules: set[str] = field(default_factory=set)
    own_skips: int = 0


def _review_cases(
    junit: JunitReport, now: TestLines, changed_files: Sequence[str], workdir: str
) -> _CaseReview:
    review = _CaseReview()
    changed = set(changed_files)
    conftests = model_conftests(changed_files)
    for case in junit.cases:
        rel, test_id = locate_case(case, now)
        line = now.get(rel, {}).get(test_id, 1)
        if not test_id:
            review.broken_modules.add(rel)
        review.seen.add((rel, test_id))
        shown = f"{rel}::{test_id}" if test_id else rel
        if case.outcome in ("failed", "error"):
            rule = "TB0501" if case.outcome == "failed" else "TB0502"
            review.findings.append(
                Finding(rel or ".", line, rule, f"{shown} {case.outcome}: {case.message}")
            )
        elif case.outcome == "skipped":
            where = _relative_location(case.skip_location or "", workdir)
            if conftests or rel in changed or where in changed:
                review.own_skips += 1
                cause = f" by {', '.join(conftests)}" if conftests else ""
                reason = case.message or "no reason"
                review.findings.append(
                    Finding(rel or ".", line, "TB0504", f"{shown} skipped{cause}: {reason}")
                )
    return review


def _unreported(now: TestLines, review: _CaseReview) -> list[Finding]:
    """Tests the files define that the report never mentions (deselected or not collected)."""
    return [
        Finding(
            rel,
            line,
            "TB0506",
            f"{test_id} is defined but was not run (deselected or not collected)",
        )
        for rel, ids in sorted(now.items())
        if rel not in review.broken_modules
        for test_id, line in sorted(ids.items())
        if (rel, test_id) not in review.seen
    ]


def removed_tests(now: TestLines, base: dict[str, list[str]] | None) -> list[Finding]:
    """Base tests pytest would no longer collect: deleted, renamed (``_test_x``, ``x_check.py``),
    or hidden (``__test__ = False``, a class that gained ``__init__``); found statically."""
    findings = []
    for rel, ids in sorted((base or {}).items()):
        for test_id in ids:
            if test_id in now.get(rel, {}):
                continue
            where = (
                "was removed or renamed so pytest no longer collects it"
                if rel in now
                else "is gone: its file was removed or renamed so pytest no longer collects it"
            )
            findings.append(Finding(rel, 1, "TB0505", f"{test_id} existed at the base and {where}"))
    return findings


def check_tests(
    tests: PytestRun,
    *,
    now: TestLines,
    base: dict[str, list[str]] | None,
    changed_files: Sequence[str],
    workdir: str,
    extra_findings: list[Finding] | None = None,
) -> CheckOutcome:
    """Constraint 5 from the junit report, the static test index now, and at the base."""
    findings: list[Finding] = list(extra_findings or [])
    junit = tests.junit
    if junit is None:
        why = tests.problem or "pytest produced no report"
        return CheckOutcome(
            5, f"tests did not run: {why}", [*findings, Finding(".", 1, "TB0507", why)]
        )
    review = _review_cases(junit, now, changed_files, workdir)
    findings += review.findings + _unreported(now, review) + removed_tests(now, base)
    ran = junit.tests - junit.skipped
    if ran <= 0:
        findings.append(
            Finding(".", 1, "TB0503", "no test ran; at least one test must run and pass")
        )
    code = tests.completed.returncode if tests.completed else None
    # 0: all passed, 1: some failed (reported above), 5: nothing collected (TB0503 above).
    if code not in (0, 1) and not (code == NO_TESTS_COLLECTED and ran <= 0):
        last = tests.completed.last_line() if tests.completed else ""
        findings.append(Finding(".", 1, "TB0507", f"pytest exited with code {code}: {last}"))
    if code == 1 and junit.failed == 0:
        # pytest says tests failed; a report that shows none was rewritten after pytest wrote it.
        findings.append(
            Finding(
                ".",
                1,
                "TB0507",
                "pytest exited with code 1 (tests failed) but its report shows no failure: "
                "the report is not believed",
            )
        )
    verdict = (
        f"{junit.tests} tests: {junit.passed} passed, {junit.failures} failed, {junit.errors} errors, "
        f"{junit.skipped} skipped ({review.own_skips} by the model's files)"
    )
    return CheckOutcome(5, verdict, findings)
