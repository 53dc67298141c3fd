"""Constraint 5: failures, no test run, model skips, deselected and removed tests all fail."""

from __future__ import annotations

from taskbox_runner.verify.models import CheckOutcome
from taskbox_runner.verify.pytest_run import JunitCase, run_pytest
from taskbox_runner.verify.suite_index import index_test_lines
from taskbox_runner.verify.tests_pass import check_tests, locate_case

from tests.runner.verify.conftest import Stage, Staged

SKIP_ALL = """

def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.skip(reason="flaky, will fix later"))
"""

DESELECT_ALL = """

def pytest_collection_modifyitems(config, items):
    config.hook.pytest_deselected(items=list(items))
    items[:] = []
"""


def _check(staged: Staged) -> CheckOutcome:
    space = staged.space()
    tests = run_pytest(
        space, base_config_dir=staged.base_config_dir, scratch_dir=staged.scratch_dir, timeout=120
    )
    return check_tests(
        tests,
        now=index_test_lines(staged.workdir),
        base=staged.base_tests,
        changed_files=staged.changed,
        workdir=str(space.workdir),
    )


def test_good_project_passes(stage: Stage) -> None:
    """All five tests of the known-good project run and pass."""
    outcome = _check(stage())
    assert outcome.passed, outcome.findings
    assert (
        outcome.verdict
        == "5 tests: 5 passed, 0 failed, 0 errors, 0 skipped (0 by the model's files)"
    )


def test_failing_test_is_reported_at_its_definition(stage: Stage) -> None:
    """A failing test is reported with file, line, test id and the assertion."""
    outcome = _check(stage(overlay="bad_05_tests"))
    assert not outcome.passed
    assert [f.render() for f in outcome.findings] == [
        "tests/test_broken.py:4: TB0501 tests/test_broken.py::test_arithmetic_is_wrong failed: assert (1 + 1) == 3"
    ]


def test_conftest_that_skips_everything_fails(stage: Stage) -> None:
    """A conftest.py the model edits to skip every test fails: no test ran, and each skip is the model's."""
    staged = stage()
    conftest = staged.workdir / "tests/conftest.py"
    staged.write("tests/conftest.py", conftest.read_text() + SKIP_ALL)
    outcome = _check(staged)
    assert not outcome.passed
    rules = [f.rule for f in outcome.findings]
    assert rules.count("TB0504") == 5
    assert "TB0503" in rules
    assert (
        "tests/test_users.py:9: TB0504 tests/test_users.py::test_create_then_read skipped by tests/conftest.py: flaky, will fix later"
        in {f.render() for f in outcome.findings}
    )


def test_conftest_that_deselects_everything_fails(stage: Stage) -> None:
    """Deselecting every test leaves them 'defined but not run', and no test ran."""
    staged = stage()
    conftest = staged.workdir / "tests/conftest.py"
    staged.write("tests/conftest.py", conftest.read_text() + DESELECT_ALL)
    outcome = _check(staged)
    assert not outcome.passed
    rules = [f.rule for f in outcome.findings]
    assert rules.count("TB0506") == 5
    assert "TB0503" in rules


def test_skip_in_a_test_the_model_wrote_fails(stage: Stage) -> None:
    """A skip marker in a test file the model changed is the model's skip."""
    staged = stage()
    staged.write(
        "tests/test_later.py",
        "import pytest\n\n\n@pytest.mark.skip(reason='todo')\ndef test_later() -> None:\n    assert False\n",
    )
    outcome = _check(staged)
    assert not outcome.passed
    assert [f.render() for f in outcome.findings] == [
        "tests/test_later.py:5: TB0504 tests/test_later.py::test_later skipped: todo"
    ]


def test_removed_test_fails(stage: Stage) -> None:
    """A test present at the base and gone now is reported as removed."""
    staged = stage()
    path = staged.workdir / "tests/test_users.py"
    text = path.read_text()
    staged.write("tests/test_users.py", text[: text.index("def test_unknown_user_is_404")])
    outcome = _check(staged)
    assert not outcome.passed
    removed = sorted(f.render() for f in outcome.findings if f.rule == "TB0505")
    assert removed == [
        "tests/test_users.py:1: TB0505 test_async_client_lists_users existed at the base and was removed or renamed so pytest no longer collects it",
        "tests/test_users.py:1: TB0505 test_invalid_body_is_422 existed at the base and was removed or renamed so pytest no longer collects it",
        "tests/test_users.py:1: TB0505 test_list_is_limited existed at the base and was removed or renamed so pytest no longer collects it",
        "tests/test_users.py:1: TB0505 test_unknown_user_is_404 existed at the base and was removed or renamed so pytest no longer collects it",
    ]


def test_junit_cases_map_to_files_and_ids() -> None:
    """Junit classnames (dotted modules and classes) map back to test files and ids."""
    index = {"tests/test_a.py": {"test_x": 3, "TestB::test_y": 9}, "pkg/test_c.py": {}}
    assert locate_case(JunitCase("tests.test_a", "test_x[1-2]", "passed"), index) == (
        "tests/test_a.py",
        "test_x",
    )
    assert locate_case(JunitCase("tests.test_a.TestB", "test_y", "passed"), index) == (
        "tests/test_a.py",
        "TestB::test_y",
    )
    assert locate_case(JunitCase("", "pkg.test_c", "error"), index) == ("pkg/test_c.py", "")
