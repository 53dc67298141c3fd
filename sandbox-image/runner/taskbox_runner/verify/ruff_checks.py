"""Constraints 3, 8 and 9, read from the one ruff run.

3 (type hints) and 8 (no print) cover owned non-test code: test functions and
fixtures return nothing worth annotating and may print, and the worker brief's
rules are about production code; the project's own config still governs tests
through 9. 9 counts every rule the project's base ruff config selects (or the
harness default) over all owned Python files, tests included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskbox_runner.verify.models import CheckOutcome, Finding
from taskbox_runner.verify.ruff_run import ALL_HARNESS_RULES, HARNESS_RULES, RuffRun, noqa_codes

if TYPE_CHECKING:
    from taskbox_runner.verify.workspace import Workspace


def _from_ruff(ruff: RuffRun, codes: tuple[str, ...], files: list[str]) -> list[Finding]:
    return [Finding(d.path, d.line, d.code, d.message) for d in ruff.for_rules(codes, set(files))]


def _ruff_error(ruff: RuffRun, rule: str) -> list[Finding]:
    return [Finding(".", 1, rule, ruff.error)] if ruff.error else []


def check_type_hints(space: Workspace, ruff: RuffRun) -> CheckOutcome:
    """Constraint 3: every parameter and return of owned non-test functions is annotated."""
    files = space.owned_source
    findings = _from_ruff(ruff, HARNESS_RULES[3], files) + _ruff_error(ruff, "TB0301")
    verdict = (
        f"every signature annotated in {len(files)} owned source files (ruff ANN)"
        if not findings
        else f"{len(findings)} missing annotation(s)"
    )
    return CheckOutcome(3, verdict, findings)


def check_no_print(space: Workspace, ruff: RuffRun) -> CheckOutcome:
    """Constraint 8: no ``print``/``pprint`` in owned non-test code."""
    files = space.owned_source
    findings = _from_ruff(ruff, HARNESS_RULES[8], files) + _ruff_error(ruff, "TB0801")
    verdict = (
        f"no print() in {len(files)} owned source files (ruff T201/T203)"
        if not findings
        else f"{len(findings)} print call(s); use logging.getLogger(__name__)"
    )
    return CheckOutcome(8, verdict, findings)


def check_ruff_clean(space: Workspace, ruff: RuffRun) -> CheckOutcome:
    """Constraint 9: ``ruff check`` clean under the project's rules, ``# noqa: CODE`` honoured."""
    files = set(space.owned_python)
    selection = ruff.selection
    findings = []
    for diagnostic in ruff.diagnostics:
        if diagnostic.path not in files:
            continue
        if diagnostic.code in ALL_HARNESS_RULES and not (
            selection is not None and selection.enables(diagnostic.code)
        ):
            continue  # added by the harness for another constraint; not the project's rule
        lines = space.text(diagnostic.path).splitlines()
        noqa_line = (
            lines[diagnostic.noqa_line - 1] if 0 < diagnostic.noqa_line <= len(lines) else ""
        )
        codes = noqa_codes(noqa_line)
        if codes and diagnostic.code in codes:
            continue
        findings.append(
            Finding(diagnostic.path, diagnostic.line, diagnostic.code, diagnostic.message)
        )
    findings += _ruff_error(ruff, "TB0901")
    verdict = (
        f"ruff check clean over {len(files)} owned Python files ({ruff.config_source})"
        if not findings
        else f"{len(findings)} ruff finding(s) under {ruff.config_source}"
    )
    return CheckOutcome(9, verdict, findings)


def noqa_warnings(space: Workspace, ruff: RuffRun) -> list[str]:
    """Lines where a ``# noqa`` tried to hide a harness rule (it does not)."""
    warnings = []
    files = set(space.owned_source)
    for diagnostic in ruff.diagnostics:
        if diagnostic.code not in ALL_HARNESS_RULES or diagnostic.path not in files:
            continue
        lines = space.text(diagnostic.path).splitlines()
        if (
            0 < diagnostic.noqa_line <= len(lines)
            and noqa_codes(lines[diagnostic.noqa_line - 1]) is not None
        ):
            warnings.append(
                f"{diagnostic.path}:{diagnostic.line}: a '# noqa' does not silence {diagnostic.code} "
                "for the harness"
            )
    return sorted(set(warnings))
