"""Constraint 4: line coverage of the owned, non-test code, from coverage's JSON totals.

The number is coverage's own ``totals.percent_covered`` for the run, measured
over exactly the owned source (unimported owned files count as unrun); the
findings list the lines each file left unrun. Only the harness's exclusion
rules apply (see ``pytest_run.write_harness_rcfile``): a ``# pragma: no cover``
or ``# pragma: no branch`` the model wrote excludes nothing and is listed in the
evidence (:func:`model_pragmas`), which the static phase can already say.
"""

from __future__ import annotations

import io
import re
import tokenize
from typing import TYPE_CHECKING

from taskbox_runner.verify.models import CheckOutcome, Finding

if TYPE_CHECKING:
    from taskbox_runner.verify.pytest_run import PytestRun
    from taskbox_runner.verify.workspace import Workspace

RULE_UNCOVERED = "TB0401"
RULE_NOT_MEASURED = "TB0402"

#: Coverage's own default pragmas (``exclude_lines``/``partial_branches``), matched the way it does.
_PRAGMA = re.compile(r"#\s*(?:pragma|PRAGMA)[:\s]?\s*(?:no|NO)\s*(?:cover|COVER|branch|BRANCH)")


def model_pragmas(space: Workspace) -> list[str]:
    """``path:line: ...`` notes for every coverage pragma in an owned source file the model wrote."""
    changed = set(space.changed_files)
    notes = []
    for rel in space.owned_source:
        if rel not in changed:
            continue
        try:
            tokens = list(tokenize.generate_tokens(io.StringIO(space.text(rel)).readline))
        except (tokenize.TokenError, SyntaxError):
            continue
        notes += [
            f"{rel}:{tok.start[0]}: '{match.group(0)}' ignored: the harness counts the line anyway"
            for tok in tokens
            if tok.type == tokenize.COMMENT and (match := _PRAGMA.search(tok.string))
        ]
    return notes


def static_coverage(space: Workspace, threshold: float) -> CheckOutcome:
    """What the static phase can say about constraint 4: the pragmas it will not honour."""
    name = f"Test coverage >= {threshold:g}%"
    notes = model_pragmas(space)
    verdict = "measured by the test run; statically: " + (
        f"{len(notes)} coverage pragma(s) written by the model, which exclude nothing"
        if notes
        else "no coverage pragma written by the model"
    )
    return CheckOutcome(4, verdict, name=name, notes=notes)


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
    name = f"Test coverage >= {threshold:g}%"
    source = space.owned_source
    if not source:
        return CheckOutcome(
            4, "not applicable: the task owns no Python source besides tests", name=name
        )
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
            name=name,
        )
    percent = report.percent_covered
    below = percent < threshold
    findings = []
    if below:
        findings = [
            Finding(
                rel,
                missing[0],
                RULE_UNCOVERED,
                f"{report.percent_by_file.get(rel, 0.0):.2f}% covered; lines never run: {line_ranges(missing)}",
            )
            for rel, missing in sorted(report.missing.items())
            if missing
        ] or [Finding(source[0], 1, RULE_UNCOVERED, f"total coverage {percent:.2f}%")]
    # A never-imported module in a folder without __init__.py escapes coverage's totals.
    unmeasured = [
        Finding(rel, 1, RULE_NOT_MEASURED, "owned source file missing from the coverage report")
        for rel in source
        if rel not in report.missing and space.text(rel).strip() and not rel.endswith("__init__.py")
    ]
    verdict = (
        f"{percent:.2f}% {'<' if below else '>='} {threshold:.2f}% line coverage of owned source "
        f"({report.num_statements} statements, coverage JSON totals)"
    )
    if unmeasured:
        verdict += f"; {len(unmeasured)} owned file(s) never imported or measured"
    notes = model_pragmas(space)
    if notes:
        verdict += f"; {len(notes)} coverage pragma(s) written by the model were ignored"
    return CheckOutcome(4, verdict, findings + unmeasured, name=name, notes=notes)
