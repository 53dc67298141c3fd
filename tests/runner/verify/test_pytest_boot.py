"""Warm pytest interpreters: started ahead, they run exactly the run a cold start would, or nothing.

Real interpreters and a real pytest on the host; the judge's use of them in its
sandbox is covered by the real-engine tests (its log names the warm run).
"""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from taskbox_runner.verify.process import Completed, harness_env, run_bounded
from taskbox_runner.verify.pytest_boot import PYTEST_PREFIX, TESTS_LABEL, WarmPytest
from taskbox_runner.verify.pytest_run import read_junit, run_pytest

from tests.runner.verify.conftest import Stage

if TYPE_CHECKING:
    from pathlib import Path

#: A test module that checks what the run was handed: its working folder and environment.
ENV_TEST = """import os
from pathlib import Path


def test_the_order_was_applied() -> None:
    assert os.environ["TASKBOX_WARM_PROBE"] == "handed-at-the-run"
    assert "TASKBOX_WARM_STALE" not in os.environ
    assert Path.cwd().name == "repo"
"""


def _argv(repo: Path, junit: Path) -> list[str]:
    return [
        *PYTEST_PREFIX,
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(repo),
        "--junitxml",
        str(junit),
        "-q",
        str(repo),
    ]


def _run_tests(
    warm: WarmPytest,
    repo: Path,
    tmp_path: Path,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> Completed:
    """The harness's pytest on ``repo`` through ``warm``, as the tests run (scratch, label)."""
    return warm.run(
        _argv(repo, tmp_path / "junit.xml"),
        cwd=repo,
        env=harness_env() if env is None else env,
        timeout=timeout,
        output_dir=tmp_path / "scratch",
        label=TESTS_LABEL,
    )


def _repo(tmp_path: Path, test: str) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "test_probe.py").write_text(test)
    return repo


def test_a_warm_run_gets_the_argv_cwd_and_environment_of_its_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment is the one handed with the run, not the one the interpreter started with."""
    monkeypatch.setenv("TASKBOX_WARM_STALE", "1")
    with WarmPytest() as warm:
        warm.start(tmp_path / "scratch", TESTS_LABEL)
        monkeypatch.delenv("TASKBOX_WARM_STALE")
        repo = _repo(tmp_path, ENV_TEST)
        env = harness_env({"TASKBOX_WARM_PROBE": "handed-at-the-run"})
        done = _run_tests(warm, repo, tmp_path, env=env)

    assert done.returncode == 0, done.stdout + done.stderr
    junit = read_junit(tmp_path / "junit.xml")
    assert junit is not None
    assert (junit.tests, junit.passed) == (1, 1)
    assert warm.used == [TESTS_LABEL]
    assert "1 passed" in (tmp_path / "scratch" / f"{TESTS_LABEL}.stdout").read_text()
    assert not list(repo.rglob("__pycache__")), (
        "PYTHONDONTWRITEBYTECODE of the order was not applied"
    )


def test_a_warm_interpreter_imports_nothing_from_the_repository_before_its_run(
    tmp_path: Path,
) -> None:
    """A repository ``pytest.py``/``coverage.py`` never stands in: both were imported ahead, from site-packages."""
    repo = _repo(tmp_path, "def test_one() -> None:\n    assert True\n")
    marker = tmp_path / "imported"
    for name in ("pytest.py", "coverage.py"):
        (repo / name).write_text(
            f"open({str(marker)!r}, 'a').write({name!r})\nraise SystemExit(3)\n"
        )
    with WarmPytest() as warm:
        warm.start(tmp_path / "scratch", TESTS_LABEL)
        done = _run_tests(warm, repo, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not marker.exists()


def test_a_warm_run_past_its_deadline_is_killed_with_its_group(tmp_path: Path) -> None:
    """The deadline counts from the order, and the whole process group goes at it."""
    repo = _repo(
        tmp_path,
        "import subprocess, sys, time\n\n\ndef test_slow() -> None:\n"
        "    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "    time.sleep(600)\n",
    )
    with WarmPytest() as warm:
        warm.start(tmp_path / "scratch", TESTS_LABEL)
        done = _run_tests(warm, repo, tmp_path, timeout=3)
    assert done.timed_out
    assert read_junit(tmp_path / "junit.xml") is None


def test_an_interpreter_no_run_took_ends_on_close(tmp_path: Path) -> None:
    """Closing the pool ends a waiting interpreter: end of input, and it exits on its own."""
    warm = WarmPytest()
    warm.start(tmp_path / "scratch", TESTS_LABEL)
    process = warm._waiting[(tmp_path / "scratch", TESTS_LABEL)]
    warm.close()
    assert process.returncode == 0
    assert warm.used == []


def test_a_run_with_no_warm_interpreter_or_not_pytest_starts_cold(tmp_path: Path) -> None:
    """Another label, or a command line that is not the harness's pytest, goes to run_bounded."""
    scratch = tmp_path / "scratch"
    with WarmPytest() as warm:
        warm.start(scratch, TESTS_LABEL)
        waiting = warm._waiting[(scratch, TESTS_LABEL)]
        other = warm.run(
            [sys.executable, "-c", "print('cold')"],
            cwd=tmp_path,
            env=harness_env(),
            timeout=60,
            output_dir=scratch,
            label=TESTS_LABEL,
        )
        unknown = warm.run(
            [sys.executable, "-c", "print('also cold')"],
            cwd=tmp_path,
            env=harness_env(),
            timeout=60,
            output_dir=scratch,
            label="another",
        )
    assert (other.returncode, other.stdout.strip()) == (0, "cold")
    assert (unknown.returncode, unknown.stdout.strip()) == (0, "also cold")
    assert waiting.returncode == 0, "the warm interpreter passed over was not ended"
    assert warm.used == []


def test_run_pytest_through_a_warm_interpreter_reports_what_a_cold_run_does(
    stage: Stage,
) -> None:
    """The harness's own pytest run (ini, plugins, coverage) gives the same counts warm as cold."""
    staged = stage()
    for name in ("cold", "warm"):
        (staged.scratch_dir / name).mkdir(parents=True)
    cold = run_pytest(
        staged.space(),
        base_config_dir=staged.base_config_dir,
        scratch_dir=staged.scratch_dir / "cold",
        timeout=120,
        launch=run_bounded,
    )
    with WarmPytest() as warm:
        warm.start(staged.scratch_dir / "warm", TESTS_LABEL)
        hot = run_pytest(
            staged.space(),
            base_config_dir=staged.base_config_dir,
            scratch_dir=staged.scratch_dir / "warm",
            timeout=120,
            launch=warm.run,
        )
    assert warm.used == [TESTS_LABEL]
    assert cold.junit is not None
    assert hot.junit is not None
    assert (hot.junit.tests, hot.junit.passed) == (cold.junit.tests, cold.junit.passed) == (5, 5)
    assert cold.coverage is not None
    assert hot.coverage is not None
    assert hot.coverage.percent_covered == cold.coverage.percent_covered


def test_when_no_warm_interpreter_can_start_the_run_starts_cold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed start (no process, e.g. out of pids) is logged and the run goes to run_bounded."""

    def refuse(*args: object, **kwargs: object) -> object:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    with WarmPytest() as warm:
        with monkeypatch.context() as patched:
            patched.setattr(subprocess, "Popen", refuse)
            warm.start(tmp_path / "scratch", TESTS_LABEL)
        repo = _repo(tmp_path, "def test_one() -> None:\n    assert True\n")
        done = _run_tests(warm, repo, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert warm.used == []
    junit = read_junit(tmp_path / "junit.xml")
    assert junit is not None
    assert junit.passed == 1
