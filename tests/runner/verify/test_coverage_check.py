"""Constraint 4: coverage of the owned source, from the one pytest run's coverage JSON."""

from __future__ import annotations

import pytest
from taskbox_runner.verify.coverage_check import check_coverage, line_ranges, static_coverage
from taskbox_runner.verify.pytest_run import PytestRun, run_pytest
from taskbox_runner.verify.workspace import Workspace

from tests.runner.verify.conftest import Stage, Staged


def _run(staged: Staged) -> tuple[Workspace, PytestRun]:
    space = staged.space()
    tests = run_pytest(
        space, base_config_dir=staged.base_config_dir, scratch_dir=staged.scratch_dir, timeout=120
    )
    return space, tests


def test_good_project_passes(stage: Stage) -> None:
    """The known-good project's tests cover well over 80% of app/."""
    space, tests = _run(stage())
    outcome = check_coverage(space, tests, 80.0)
    assert outcome.passed, outcome.verdict
    assert tests.coverage is not None
    assert outcome.verdict.startswith(f"{tests.coverage.percent_covered:.2f}% >= 80.00%")


def test_untested_module_pulls_coverage_under_the_threshold(stage: Stage) -> None:
    """A module no test imports still counts (as unrun), and its unrun lines are listed."""
    space, tests = _run(stage(overlay="bad_04_coverage"))
    outcome = check_coverage(space, tests, 80.0)
    assert not outcome.passed
    assert tests.coverage is not None
    assert tests.coverage.percent_covered < 80.0
    assert [f.render() for f in outcome.findings if f.path == "app/billing.py"] == [
        "app/billing.py:3: TB0401 0.00% covered; lines never run: 3, 5, 8, 10, 13, 15-22, 25, 27-32, 35, 37-42"
    ]


def test_no_owned_source_is_not_applicable(stage: Stage) -> None:
    """A task that owns only tests has nothing to measure: passed, and it says why."""
    staged = stage()
    space = staged.space(owns=("tests/",))
    tests = run_pytest(
        space, base_config_dir=staged.base_config_dir, scratch_dir=staged.scratch_dir, timeout=120
    )
    outcome = check_coverage(space, tests, 80.0)
    assert outcome.passed
    assert outcome.verdict.startswith("not applicable")


@pytest.mark.parametrize(
    ("lines", "text"),
    [([], ""), ([4], "4"), ([1, 2, 3, 7], "1-3, 7"), ([9, 8, 10, 12], "8-10, 12")],
)
def test_line_ranges(lines: list[int], text: str) -> None:
    """Unrun lines are shown as compact ranges."""
    assert line_ranges(lines) == text


PRAGMA_MODULE = '''"""Discounts."""


def discount(total: int) -> int:
    """A tenth off large orders."""
    if total > 100:  # pragma: no cover
        return total - total // 10
    return total


def refund(total: int) -> int:  # pragma: no cover
    """Never tested."""
    if total < 0:
        raise ValueError(total)
    return -total
'''

PRAGMA_IN_A_STRING = '''"""Discounts."""

NOTE = "# pragma: no cover is only text here"


def discount(total: int) -> int:
    """A tenth off large orders."""
    return total - total // 10 if total > 100 else total
'''

PRAGMA_TEST = """from app.discounts import discount


def test_small_order_pays_full_price() -> None:
    assert discount(50) == 50
"""


def test_model_pragmas_exclude_nothing_and_are_listed(stage: Stage) -> None:
    """Lines under a model-written '# pragma: no cover' still count as unrun, and each pragma is listed."""
    staged = stage()
    staged.write("app/discounts.py", PRAGMA_MODULE)
    staged.write("tests/test_discounts.py", PRAGMA_TEST)
    space, tests = _run(staged)
    assert tests.coverage is not None
    assert tests.coverage.missing["app/discounts.py"] == [7, 13, 14, 15]
    outcome = check_coverage(space, tests, 99.0)
    report = outcome.to_report()
    assert not outcome.passed
    assert report.evidence[-2:] == [
        "app/discounts.py:6: '# pragma: no cover' ignored: the harness counts the line anyway",
        "app/discounts.py:11: '# pragma: no cover' ignored: the harness counts the line anyway",
    ]
    assert report.evidence[0].endswith("; 2 coverage pragma(s) written by the model were ignored")


def test_pragma_text_outside_a_comment_is_not_listed(stage: Stage) -> None:
    """The clean look-alike: the words in a string constant are not a pragma, and nothing is listed."""
    staged = stage()
    staged.write("app/discounts.py", PRAGMA_IN_A_STRING)
    staged.write("tests/test_discounts.py", PRAGMA_TEST)
    space, tests = _run(staged)
    outcome = check_coverage(space, tests, 80.0)
    assert outcome.passed, outcome.findings
    assert outcome.notes == []
    assert static_coverage(space, 80.0).verdict == (
        "measured by the test run; statically: no coverage pragma written by the model"
    )
