"""Constraint 4: coverage of the owned source, from the one pytest run's coverage JSON."""

from __future__ import annotations

import pytest
from taskbox_runner.verify.coverage_check import check_coverage, line_ranges
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
