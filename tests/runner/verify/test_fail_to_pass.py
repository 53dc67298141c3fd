"""Fail-to-pass: the model's new tests run on the base tree, read-only; at least one must fail there."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

from taskbox_runner.verify import check_fail_to_pass
from taskbox_runner.verify.pytest_run import run_test_files

from tests.runner.verify.conftest import DATA, Stage

TESTS_THE_CHANGE = """from fastapi.testclient import TestClient

from app.main import app


def test_delete_removes_the_user() -> None:
    client = TestClient(app)
    created = client.post("/users", json={"name": "Ann", "email": "ann@example.com"})
    assert client.delete(f"/users/{created.json()['id']}").status_code == 204
"""

PASSES_ANYWAY = """from fastapi.testclient import TestClient

from app.main import app


def test_list_answers() -> None:
    assert TestClient(app).get("/users").status_code == 200


def test_unknown_is_404() -> None:
    assert TestClient(app).get("/users/4242").status_code == 404
"""


def _base_with(tmp_path: Path, files: dict[str, str]) -> Path:
    """The base project with the model's test files laid over it, then made read-only."""
    base = tmp_path / "base"
    shutil.copytree(DATA / "good_fastapi", base)
    for rel, text in files.items():
        (base / rel).write_text(text, encoding="utf-8")
    for path in [base, *base.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return base


def _listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_a_test_of_the_change_fails_on_the_base(stage: Stage, tmp_path: Path) -> None:
    """A new test of a DELETE endpoint the base lacks fails there: the check passes, and names it."""
    staged = stage()
    base = _base_with(tmp_path, {"tests/test_delete.py": TESTS_THE_CHANGE})
    before = _listing(base)
    outcome = check_fail_to_pass(
        staged.context(), base_workdir=base, test_files=["tests/test_delete.py"]
    )
    assert outcome.passed, outcome.findings
    assert outcome.verdict == (
        "fail-to-pass: 1 of 1 new or changed test(s) fail on the base: "
        "tests/test_delete.py::test_delete_removes_the_user"
    )
    assert _listing(base) == before


def test_tests_that_pass_on_the_base_too_are_named(stage: Stage, tmp_path: Path) -> None:
    """New tests that pass on the base as well do not test the change: a finding naming each test."""
    staged = stage()
    base = _base_with(tmp_path, {"tests/test_more.py": PASSES_ANYWAY})
    outcome = check_fail_to_pass(
        staged.context(), base_workdir=base, test_files=["tests/test_more.py"]
    )
    assert not outcome.passed
    assert [f.render() for f in outcome.findings] == [
        (
            "tests/test_more.py:1: TB0513 the tests pass on the base as well: they do not test the "
            "change (tests/test_more.py::test_list_answers, tests/test_more.py::test_unknown_is_404)"
        )
    ]


def test_no_new_test_is_a_finding(stage: Stage, tmp_path: Path) -> None:
    """Without a new or changed test file there is nothing to fail on the base: a finding."""
    staged = stage()
    base = _base_with(tmp_path, {})
    outcome = check_fail_to_pass(staged.context(), base_workdir=base, test_files=[])
    assert [f.render() for f in outcome.findings] == [".:1: TB0514 no new or changed test"]


def test_run_test_files_runs_only_the_named_files(stage: Stage, tmp_path: Path) -> None:
    """The reusable runner runs exactly the listed files, without coverage, and reads their cases."""
    staged = stage()
    base = _base_with(tmp_path, {"tests/test_more.py": PASSES_ANYWAY})
    run = run_test_files(
        base,
        ["tests/test_more.py"],
        base_config_dir=staged.base_config_dir,
        scratch_dir=staged.scratch_dir,
        timeout=120,
    )
    assert run.junit is not None
    assert sorted(c.name for c in run.junit.cases) == ["test_list_answers", "test_unknown_is_404"]
    assert run.coverage is None
    assert "pytest_cov" not in run.plugins
