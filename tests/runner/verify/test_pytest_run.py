"""The one pytest run: harness settings win over anything the model writes or the environment sets."""

from __future__ import annotations

from pathlib import Path

import pytest
from taskbox_runner.verify.pytest_run import (
    PytestRun,
    base_pytest_settings,
    installed_plugins,
    read_junit,
    run_pytest,
    write_harness_ini,
)

from tests.runner.verify.conftest import Stage, Staged


def _run(staged: Staged) -> PytestRun:
    return run_pytest(
        staged.space(),
        base_config_dir=staged.base_config_dir,
        scratch_dir=staged.scratch_dir,
        timeout=120,
    )


def test_model_pytest_config_cannot_switch_tests_or_coverage_off(
    stage: Stage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model pytest.ini/addopts, a .coveragerc omitting everything and PYTEST_ADDOPTS change nothing."""
    staged = stage()
    staged.write(
        "pytest.ini",
        "[pytest]\naddopts = --collect-only -p no:pytest_cov\npython_files = nothing_*.py\n",
    )
    staged.write(".coveragerc", "[run]\nomit = app/*\n[report]\nfail_under = 0\n")
    staged.write("setup.cfg", "[tool:pytest]\naddopts = -k nothing\n")
    monkeypatch.setenv("PYTEST_ADDOPTS", "--collect-only -q")
    monkeypatch.setenv("COVERAGE_RCFILE", str(staged.workdir / ".coveragerc"))
    run = _run(staged)
    assert run.junit is not None
    assert (run.junit.tests, run.junit.passed) == (5, 5)
    assert run.coverage is not None
    assert run.coverage.percent_covered > 90
    assert "app/api/users.py" in run.coverage.missing


def test_base_settings_carry_only_safe_keys(tmp_path: Path, stage: Stage) -> None:
    """Of the base [tool.pytest.ini_options], testpaths and asyncio_mode are used and addopts is dropped."""
    staged = stage()
    base = base_pytest_settings(staged.base_config_dir)
    assert base == {"testpaths": ["tests"], "asyncio_mode": "strict"}
    ini = tmp_path / "h.ini"
    write_harness_ini(ini, {**base, "addopts": "-x"}, staged.workdir, installed_plugins(), {})
    text = ini.read_text()
    assert "addopts" not in text
    assert f"pythonpath = \n    {staged.workdir}" in text


def test_plugins_are_an_allowlist() -> None:
    """Only allowlisted plugins are loaded, pytest-cov always among them on this machine."""
    plugins = installed_plugins()
    assert "pytest_cov" in plugins
    assert set(plugins) <= {"pytest_cov", "anyio", "asyncio", "django", "pytest_mock", "mock"}


def test_missing_junit_is_none(tmp_path: Path) -> None:
    """An absent or broken junit file reads as None, not as zero tests passed."""
    assert read_junit(tmp_path / "absent.xml") is None
    (tmp_path / "bad.xml").write_text("<testsuites><testsuite")
    assert read_junit(tmp_path / "bad.xml") is None


def test_a_pytest_module_in_the_repository_cannot_stand_in_for_pytest(stage: Stage) -> None:
    """A pytest.py (and coverage.py) at the repository root is not what runs the tests."""
    staged = stage()
    staged.write("pytest.py", "raise SystemExit(0)\n")
    staged.write("coverage.py", "raise SystemExit(0)\n")
    run = _run(staged)
    assert run.junit is not None
    assert run.junit.tests == 5
    assert run.coverage is not None
