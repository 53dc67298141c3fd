"""The one pytest run: harness settings win over anything the model writes or the environment sets."""

from __future__ import annotations

import sys
from pathlib import Path

import coverage
import pytest
from taskbox_runner.verify import pytest_run
from taskbox_runner.verify.process import harness_env
from taskbox_runner.verify.pytest_run import (
    PytestRun,
    base_pytest_settings,
    coverage_core,
    installed_plugins,
    read_junit,
    run_pytest,
    write_harness_ini,
    write_harness_rcfile,
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


@pytest.mark.parametrize(
    ("version", "core"),
    [((3, 11, 7), None), ((3, 12, 1), "sysmon"), ((3, 13, 0), "sysmon"), ((3, 14, 2), "sysmon")],
)
def test_coverage_core_is_sysmon_from_python_3_12(
    version: tuple[int, ...], core: str | None
) -> None:
    """The harness asks for sys.monitoring exactly where Python has it (3.12 on), else the default."""
    assert coverage_core(version) == core


@pytest.mark.parametrize("core", [None, "sysmon"])
def test_coverage_reads_the_harness_core_from_its_rcfile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, core: str | None
) -> None:
    """The rcfile's ``[run] core`` is what coverage itself loads, and the environment cannot change it."""
    monkeypatch.setattr(pytest_run, "coverage_core", lambda: core)
    monkeypatch.delenv("COVERAGE_CORE", raising=False)
    rcfile = tmp_path / "harness-coveragerc"
    write_harness_rcfile(rcfile, tmp_path / ".coverage", [str(tmp_path / "app.py")])
    config = coverage.Coverage(config_file=str(rcfile)).config
    assert config.core == core
    assert config.branch is False
    # The pytest run's environment never carries COVERAGE_CORE (harness_env drops COVERAGE_*).
    monkeypatch.setenv("COVERAGE_CORE", "pytrace")
    assert "COVERAGE_CORE" not in harness_env({})


def test_this_interpreter_gets_its_core_in_the_rcfile(tmp_path: Path) -> None:
    """On this interpreter the rcfile names sysmon from 3.12 and no core before (3.11's coverage has none)."""
    rcfile = tmp_path / "harness-coveragerc"
    write_harness_rcfile(rcfile, tmp_path / ".coverage", [])
    text = rcfile.read_text(encoding="utf-8")
    assert ("core = sysmon" in text) == (sys.version_info >= (3, 12))
