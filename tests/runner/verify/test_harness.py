"""verify() end to end: ten verdicts, numbers equal to pytest's and coverage's, honest feedback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from taskbox_runner.verify import verify, verify_static
from taskbox_runner.verify.harness import results_of
from taskbox_runner.verify.pytest_run import JunitReport, PytestRun

from tests.runner.verify.conftest import Stage

DATA = Path(__file__).parent / "data"

SKIP_ALL = """

def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.skip(reason="later"))
"""


def _junit_counts(path: Path) -> dict[str, int]:
    suite = ET.parse(path).getroot().find("testsuite")  # noqa: S314 - pytest's junit in tmp_path
    assert suite is not None
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def test_good_project_passes_all_ten(stage: Stage) -> None:
    """The known-good project passes every constraint; the counts are junit's and coverage's own."""
    staged = stage()
    report = verify(staged.context())
    assert report.passed, report.feedback()
    assert report.framework == "fastapi"
    assert [c.id for c in report.constraints] == list(range(1, 11))
    junit = _junit_counts(staged.scratch_dir / "junit.xml")
    totals = json.loads((staged.scratch_dir / "coverage.json").read_text())["totals"]
    results = report.test_results
    assert (results.total, results.failed, results.skipped) == (
        junit["tests"],
        junit["failures"] + junit["errors"],
        junit["skipped"],
    )
    assert results.passed == 5
    assert results.coverage_percent == totals["percent_covered"]
    assert report.warnings == []


@pytest.mark.parametrize(
    "case",
    [
        ("public_fastapi", "app_b_an/", "app_b_an", "*/test_main.py"),
        ("good_fastapi", "app/", "app", "*/tests/*"),
    ],
    ids=["public_fastapi", "good_fastapi"],
)
def test_numbers_equal_pytest_and_coverage_run_by_hand(
    stage: Stage, tmp_path: Path, case: tuple[str, str, str, str]
) -> None:
    """On a project nobody here wrote (and on ours), test and coverage numbers equal a plain pytest --cov run."""
    project, owns, package, omit = case
    staged = stage(project)
    report = verify(staged.context(owns=[owns, "tests/"], openapi_path=None))
    by_hand = tmp_path / "by-hand"
    shutil.copytree(DATA / project, by_hand)
    (by_hand / ".coveragerc").write_text(f"[run]\nomit = {omit}\n")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "COV_CORE_", "COVERAGE_"))
    }
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--cov={package}",
            "--cov-report=json:cov.json",
            "--junitxml=junit.xml",
        ],
        cwd=by_hand,
        env={**env, "PYTHONDONTWRITEBYTECODE": "1"},
        check=True,
        capture_output=True,
    )
    junit = _junit_counts(by_hand / "junit.xml")
    percent = json.loads((by_hand / "cov.json").read_text())["totals"]["percent_covered"]
    results = report.test_results
    assert results.total == junit["tests"] > 0
    assert results.failed == junit["failures"] + junit["errors"]
    assert results.skipped == junit["skipped"]
    assert results.passed == junit["tests"] - junit["failures"] - junit["errors"] - junit["skipped"]
    assert results.coverage_percent == percent


def test_public_project_constraints(stage: Stage) -> None:
    """The public example passes its tests but hard-codes its token and leaves returns unannotated."""
    report = verify(stage("public_fastapi").context(owns=["app_b_an/"], openapi_path=None))
    failed = {c.id for c in report.constraints if not c.passed}
    assert failed == {2, 3, 9}
    secrets = report.constraints[1].evidence
    # One finding per statement: ruff's S105 leads, other detectors may be named after it.
    assert any(
        line.startswith(
            'app_b_an/main.py:8: S105 Possible hardcoded password assigned to: "fake_secret_token"'
        )
        for line in secrets
    )


def test_conftest_that_skips_every_test_is_not_a_pass(stage: Stage) -> None:
    """A model-edited conftest.py skipping every test fails the report and is named in the warnings."""
    staged = stage()
    staged.write("tests/conftest.py", (staged.workdir / "tests/conftest.py").read_text() + SKIP_ALL)
    report = verify(staged.context())
    assert not report.passed
    tests = report.constraints[4]
    assert not tests.passed
    assert tests.evidence[0].startswith(
        "5 tests: 0 passed, 0 failed, 0 errors, 5 skipped (5 by the model's files); "
        "statically: 1 pytest hook statement(s) that can change the verdict"
    )
    assert (
        "tests/conftest.py:20: TB0509 defines the pytest hook pytest_collection_modifyitems, "
        "which can change collection, outcomes or reports"
    ) in tests.evidence
    assert ".:1: TB0503 no test ran; at least one test must run and pass" in tests.evidence
    assert report.test_results.skipped == 5
    assert (
        "conftest.py written by the model: tests/conftest.py (it runs inside the test session; review it)"
        in report.warnings
    )


@pytest.mark.parametrize("overlay", [f"bad_{n:02d}_{name}" for n, name in [
    (1, "sql"), (2, "secrets"), (3, "hints"), (4, "coverage"), (5, "tests"),
    (6, "contract"), (7, "pydantic"), (8, "print"), (9, "ruff"), (10, "async"),
]])  # fmt: skip
def test_each_bad_project_fails_its_own_constraint(stage: Stage, overlay: str) -> None:
    """verify() fails constraint NN on the bad_NN overlay and says where in the evidence."""
    number = int(overlay.split("_")[1])
    report = verify(stage(overlay=overlay).context())
    constraint = report.constraints[number - 1]
    assert constraint.id == number
    assert not constraint.passed
    assert len(constraint.evidence) > 1
    assert all(":" in line for line in constraint.evidence[1:])


def test_feedback_is_deterministic_and_free_of_tmp_paths(stage: Stage) -> None:
    """Two runs give the same feedback; it names files relative to the repo and cuts at the limit."""
    staged = stage(overlay="bad_01_sql")
    first = verify(staged.context()).feedback()
    second = verify(staged.context()).feedback()
    assert first == second
    assert str(staged.workdir) not in first
    assert str(staged.scratch_dir) not in first
    assert "/tmp" not in first
    assert (
        "app/reports.py:17: TB0101 SQL built with string concatenation reaches execute()" in first
    )
    short = verify(staged.context()).feedback(limit=900)
    assert len(short) <= 900
    assert short.endswith("more lines not shown")


def test_missing_base_index_is_a_warning(stage: Stage) -> None:
    """Without base_tests the report warns that removed tests were not checked."""
    staged = stage()
    context = staged.context().model_copy(update={"base_tests": None})
    report = verify(context)
    assert "no base test index was given: removed tests were not checked" in report.warnings


def test_counts_stay_consistent_when_a_test_fails_twice() -> None:
    """A failure plus a teardown error on one test is capped so passed + failed + skipped <= total."""
    junit = JunitReport(tests=2, failures=1, errors=2, skipped=0)
    results = results_of(PytestRun(junit=junit))
    assert (results.total, results.passed, results.failed, results.skipped) == (2, 0, 2, 0)


def test_removed_tests_are_named_in_the_warnings(stage: Stage) -> None:
    """Deleting a base test fails constraint 5 and is listed among the warnings."""
    staged = stage()
    text = (staged.workdir / "tests/test_users.py").read_text()
    staged.write("tests/test_users.py", text.replace("def test_unknown_user_is_404", "def _gone"))
    report = verify(staged.context())
    assert not report.constraints[4].passed
    assert (
        "1 test(s) removed since the base: tests/test_users.py::test_unknown_user_is_404"
        in report.warnings
    )


def test_contract_run_warnings_reach_the_report(stage: Stage) -> None:
    """A request the app answers with 500 is not judged but named in the report's warnings."""
    staged = stage()
    users = staged.workdir / "app/api/users.py"
    staged.write(
        "app/api/users.py",
        users.read_text().replace(
            "    return await store.list(limit)\n",
            '    if limit == 20:\n        raise RuntimeError("the database is not reachable")\n'
            "    return await store.list(limit)\n",
        ),
    )
    report = verify(staged.context())
    assert report.constraints[5].passed, report.feedback()
    assert [w for w in report.warnings if w.startswith("contract: ")] == [
        "contract: GET /users: not judged: answered 500 (valid request): Internal Server Error"
    ]


def test_static_and_full_reports_agree_on_the_good_project(stage: Stage) -> None:
    """verify_static and verify both pass the known-good project; only verify has test counts."""
    staged = stage()
    static = verify_static(staged.context())
    full = verify(staged.context())
    assert static.passed
    assert full.passed
    assert static.test_results.total == 0
    assert full.test_results.total == 5
