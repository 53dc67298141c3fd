"""Constraint 5: all tests pass, at least one ran, and none were quietly taken away.

Counts come from the junit file of the one pytest run. Besides failures and
errors it fails when no test ran, when a test is skipped (or xfailed) by a file
the model wrote (a conftest.py the model wrote makes every skip its own), when a
test defined in the files never appears in the report (deselected or not
collected), and when a test present at the base is gone.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from taskbox_runner.verify.models import CheckOutcome, Finding

if TYPE_CHECKING:
    from taskbox_runner.verify.pytest_run import JunitCase, PytestRun
    from taskbox_runner.verify.suite_index import TestLines

_PARAMS = re.compile(r"\[.*\]$")


def model_conftests(changed_files: list[str] | tuple[str, ...]) -> list[str]:
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


def check_tests(
    tests: PytestRun,
    *,
    now: TestLines,
    base: dict[str, list[str]] | None,
    changed_files: list[str] | tuple[str, ...],
    workdir: str,
    extra_findings: list[Finding] | None = None,
) -> CheckOutcome:
    """Constraint 5 from the junit report, the static test index now, and at the base."""
    findings: list[Finding] = list(extra_findings or [])
    junit = tests.junit
    if junit is None:
        why = tests.problem or "pytest produced no report"
        return CheckOutcome(
            5,
            f"tests did not run: {why}", [*findings, Finding(".", 1, "TB0507", why)]
        )
    changed = set(changed_files)
    conftests = model_conftests(changed_files)
    seen: set[tuple[str, str]] = set()
    broken_modules: set[str] = set()
    own_skips = 0
    for case in junit.cases:
        rel, test_id = locate_case(case, now)
        line = now.get(rel, {}).get(test_id, 1)
        if not test_id:
            broken_modules.add(rel)
        seen.add((rel, test_id))
        shown = f"{rel}::{test_id}" if test_id else rel
        if case.outcome == "failed":
            findings.append(Finding(rel or ".", line, "TB0501", f"{shown} failed: {case.message}"))
        elif case.outcome == "error":
            findings.append(Finding(rel or ".", line, "TB0502", f"{shown} error: {case.message}"))
        elif case.outcome == "skipped":
            where = _relative_location(case.skip_location or "", workdir)
            if conftests or rel in changed or where in changed:
                own_skips += 1
                cause = f" by {', '.join(conftests)}" if conftests else ""
                findings.append(
                    Finding(
                        rel or ".",
                        line,
                        "TB0504",
                        f"{shown} skipped{cause}: {case.message or 'no reason'}",
                    )
                )
    for rel, ids in sorted(now.items()):
        if rel in broken_modules:
            continue
        for test_id, line in sorted(ids.items()):
            if (rel, test_id) not in seen:
                findings.append(
                    Finding(
                        rel,
                        line,
                        "TB0506",
                        f"{test_id} is defined but was not run (deselected or not collected)",
                    )
                )
    for rel, ids in sorted((base or {}).items()):
        for test_id in ids:
            if test_id not in now.get(rel, {}):
                findings.append(
                    Finding(rel, 1, "TB0505", f"{test_id} existed at the base and was removed")
                )
    ran = junit.tests - junit.skipped
    if ran <= 0:
        findings.append(
            Finding(".", 1, "TB0503", "no test ran; at least one test must run and pass")
        )
    code = tests.completed.returncode if tests.completed else None
    if code not in (0, 1) and not (code == 5 and ran <= 0):
        last = tests.completed.last_line() if tests.completed else ""
        findings.append(Finding(".", 1, "TB0507", f"pytest exited with code {code}: {last}"))
    verdict = (
        f"{junit.tests} tests: {junit.passed} passed, {junit.failures} failed, {junit.errors} errors, "
        f"{junit.skipped} skipped ({own_skips} by the model's files)"
    )
    return CheckOutcome(5, verdict, findings)
