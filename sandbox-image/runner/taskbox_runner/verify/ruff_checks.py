"""Constraints 3, 8 and 9, read from the one ruff run plus two AST passes.

3 (type hints) and 8 (no print) cover owned non-test code: test functions and
fixtures return nothing worth annotating and may print, and the worker brief's
rules are about production code; the project's own config still governs tests
through 9. 3 adds ``Any`` used as a parameter or return type
(:mod:`any_annotations`, with its documented ``# taskbox: any-ok <reason>``
escape); 8 adds writes to ``sys.stdout``/``sys.stderr`` and aliases of
``print``/``pprint`` (:mod:`print_writes`). 9 counts every rule the project's
base ruff config selects (or ruff's defaults) over all owned Python files,
tests included; no ``# noqa`` in owned files hides a finding, and each such
comment is listed.
"""

from __future__ import annotations

import io
import re
import tokenize
from typing import TYPE_CHECKING

from taskbox_runner.verify.any_annotations import find_any
from taskbox_runner.verify.models import CheckOutcome, Finding
from taskbox_runner.verify.print_writes import find_console_writes
from taskbox_runner.verify.ruff_run import ALL_HARNESS_RULES, HARNESS_RULES, RuffRun, noqa_codes
from taskbox_runner.verify.statements import one_per_statement

if TYPE_CHECKING:
    from taskbox_runner.verify.workspace import Workspace

#: A file-level exemption comment (ruff or flake8 followed by a colon and noqa, any codes).
FILE_NOQA = re.compile(r"#\s*(?:ruff|flake8)\s*:\s*noqa\b", re.IGNORECASE)
#: Files named in the noqa warning before the rest are only counted.
FILES_IN_A_WARNING = 5


def _from_ruff(ruff: RuffRun, codes: tuple[str, ...], files: list[str]) -> list[Finding]:
    return [Finding(d.path, d.line, d.code, d.message) for d in ruff.for_rules(codes, set(files))]


def _ruff_error(ruff: RuffRun, rule: str) -> list[Finding]:
    return [Finding(".", 1, rule, ruff.error)] if ruff.error else []


def check_type_hints(space: Workspace, ruff: RuffRun) -> CheckOutcome:
    """Constraint 3: every parameter and return of owned non-test functions has a real type."""
    files = space.owned_source
    findings = _from_ruff(ruff, HARNESS_RULES[3], files)
    accepted = []
    for rel, tree in space.trees(files):
        found, ok = find_any(rel, tree, space.text(rel))
        findings += found
        accepted += ok
    findings = one_per_statement(space, findings) + _ruff_error(ruff, "TB0301")
    verdict = (
        f"every signature annotated, none with Any, in {len(files)} owned source files "
        "(ruff ANN + Any check)"
        if not findings
        else f"{len(findings)} missing or Any annotation(s)"
    )
    notes = [
        f"{a.path}:{a.line}: Any accepted by '# taskbox: any-ok': {a.reason}" for a in accepted
    ]
    if accepted:
        verdict += f"; {len(accepted)} Any accepted by '# taskbox: any-ok' (reasons listed)"
    return CheckOutcome(3, verdict, findings, notes=notes)


def check_no_print(space: Workspace, ruff: RuffRun) -> CheckOutcome:
    """Constraint 8: no ``print``/``pprint``, aliases of them or console writes in owned non-test code."""
    files = space.owned_source
    findings = _from_ruff(ruff, HARNESS_RULES[8], files)
    for rel, tree in space.trees(files):
        findings += find_console_writes(rel, tree)
    findings = one_per_statement(space, findings) + _ruff_error(ruff, "TB0801")
    verdict = (
        f"no print(), print alias or sys.stdout/stderr write in {len(files)} owned source files "
        "(ruff T201/T203 + AST)"
        if not findings
        else f"{len(findings)} console write(s); use logging.getLogger(__name__)"
    )
    return CheckOutcome(8, verdict, findings)


def check_ruff_clean(space: Workspace, ruff: RuffRun) -> CheckOutcome:
    """Constraint 9: ``ruff check`` clean under the project's rules; no ``# noqa`` in owned code counts."""
    files = set(space.owned_python)
    selection = ruff.selection
    findings = []
    for diagnostic in ruff.diagnostics:
        if diagnostic.path not in files or diagnostic.path in ruff.project_excluded:
            continue
        if diagnostic.code in ALL_HARNESS_RULES and not (
            selection is not None and selection.enables(diagnostic.code)
        ):
            continue  # added by the harness for another constraint; not the project's rule
        lines = space.text(diagnostic.path).splitlines()
        noqa_line = (
            lines[diagnostic.noqa_line - 1] if 0 < diagnostic.noqa_line <= len(lines) else ""
        )
        message = diagnostic.message
        if noqa_codes(noqa_line) is not None:
            message += f" (a '# noqa' on line {diagnostic.noqa_line} does not hide it)"
        elif FILE_NOQA.search(space.text(diagnostic.path)):
            message += " (the file's '# ruff: noqa' does not hide it)"
        findings.append(Finding(diagnostic.path, diagnostic.line, diagnostic.code, message))
    findings = one_per_statement(space, findings) + _ruff_error(ruff, "TB0901")
    comments = noqa_comments(space, sorted(files))
    noted = (
        f"; {len(comments)} '# noqa' comment(s) in owned files not honoured (listed)"
        if comments
        else ""
    )
    excluded = files & ruff.project_excluded
    if excluded:
        noted += f"; {len(excluded)} owned file(s) excluded by the project's own ruff config"
    verdict = (
        f"ruff check clean over {len(files)} owned Python files ({ruff.config_source}){noted}"
        if not findings
        else f"{len(findings)} ruff finding(s) under {ruff.config_source}{noted}"
    )
    notes = [
        f"{rel}:{line}: '{comment}' not honoured: owned code gets no noqa"
        for rel, line, comment in comments
    ]
    return CheckOutcome(9, verdict, findings, notes=notes)


def noqa_comments(space: Workspace, files: list[str]) -> list[tuple[str, int, str]]:
    """``(path, line, comment)`` for every ``# noqa`` comment (not strings) in ``files``."""
    found = []
    for rel in files:
        try:
            tokens = list(tokenize.generate_tokens(io.StringIO(space.text(rel)).readline))
        except (tokenize.TokenError, SyntaxError):
            continue
        found += [
            (rel, token.start[0], token.string.strip())
            for token in tokens
            if token.type == tokenize.COMMENT
            and (noqa_codes(token.string) is not None or FILE_NOQA.search(token.string))
        ]
    return found


def noqa_warnings(space: Workspace, ruff: RuffRun) -> list[str]:
    """One line for the reviewer when owned files carry ``# noqa`` comments (none is honoured;
    constraint 9's evidence lists each)."""
    del ruff  # kept in the signature the harness calls
    comments = noqa_comments(space, space.owned_python)
    if not comments:
        return []
    files = sorted({rel for rel, _, _ in comments})
    more = len(files) - FILES_IN_A_WARNING
    shown = ", ".join(files[:FILES_IN_A_WARNING]) + (f" and {more} more" if more > 0 else "")
    note = f"{len(comments)} '# noqa' comment(s) in owned files ({shown}) were not honoured"
    return [f"{note}; constraint 9 lists them"]
