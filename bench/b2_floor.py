"""B2's floor: the checks of both phases of the trivial task, run on the host on the same trees.

Each repetition is one fresh host process (the project's venv, the sandbox's
environment variables) that imports the verifier and times, in turn, what the
agent's last verification runs (``verify``) and what the judge's one container
runs: its static checks (``static_checks`` + ``static_report``), then its
dynamic checks with fail-to-pass alongside (``taskbox_runner.judge.run_dynamic``,
two pytest processes at once, as in the sandbox). With one hardened container
cycle per phase, that is the floor the whole task is compared with.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from bench.harness import Budget, expect, iter_with_budget
from bench.projects import (
    EXAMPLE_REPO,
    TRIVIAL_FILE,
    TRIVIAL_MODULE,
    TRIVIAL_MODULE_TEXT,
    TRIVIAL_TEST,
)

if TYPE_CHECKING:
    from pathlib import Path

RESULT_PREFIX = "BENCH-FLOOR "
#: argv: base, candidate, fail-to-pass tree, scratch, owns (JSON), changed (JSON), test files (JSON).
FLOOR_SCRIPT = """
import json, pathlib, sys, time
t0 = time.perf_counter()
from taskbox_runner.judge import run_dynamic
from taskbox_runner.verify import VerifyContext, index_tests, static_checks, static_report, verify
from taskbox_wire.config import JudgeConfig
t1 = time.perf_counter()
base, work, f2p, scratch = (pathlib.Path(a) for a in sys.argv[1:5])
owns, changed, test_files = (json.loads(a) for a in sys.argv[5:8])
def context(name):
    return VerifyContext(
        workdir=work, owns_paths=owns, openapi_path=None, base_config_dir=base,
        scratch_dir=scratch / name / "verify", changed_files=changed, base_tests=index_tests(base),
    )
times = {"import_s": t1 - t0}
t = time.perf_counter(); agent = verify(context("agent")); times["agent_verify_s"] = time.perf_counter() - t
ctx = context("judge")
t = time.perf_counter(); static = static_checks(ctx); sealed = static_report(ctx, static)
times["judge_static_s"] = time.perf_counter() - t
config = JudgeConfig(
    run_id="bench", owns_paths=owns, changed_files=changed, test_files=test_files,
    test_timeout_seconds=600, workdir=work, base_dir=base, fail_to_pass_dir=f2p, outdir=scratch,
)
t = time.perf_counter(); tests = run_dynamic(ctx, config, static)
times["judge_tests_s"] = time.perf_counter() - t
times["passed"] = [agent.passed, sealed.passed, tests.passed]
print("BENCH-FLOOR " + json.dumps(times), flush=True)
"""

AGENT_VERIFY = "agent's verification: verify()"
JUDGE_STATIC = "judge: static checks (static_checks + static_report)"
JUDGE_TESTS = "judge: dynamic checks + fail-to-pass at once (run_dynamic)"
IMPORT = "import the verifier (once per phase)"
FLOOR_SERIES = {
    AGENT_VERIFY: "agent_verify_s",
    JUDGE_STATIC: "judge_static_s",
    JUDGE_TESTS: "judge_tests_s",
    IMPORT: "import_s",
}


def _trees(root: Path) -> tuple[Path, Path, Path]:
    """The base tree, the candidate (base + the trivial task's files), and the base + its test only."""
    ignore = shutil.ignore_patterns(".ruff_cache", "__pycache__", ".pytest_cache", ".git")
    base, work, f2p = root / "base", root / "work", root / "f2p"
    for tree in (base, work, f2p):
        shutil.copytree(EXAMPLE_REPO, tree, ignore=ignore)
    (work / TRIVIAL_MODULE).write_text(TRIVIAL_MODULE_TEXT)
    for tree in (work, f2p):
        (tree / TRIVIAL_FILE).write_text(TRIVIAL_TEST)
    return base, work, f2p


def host_floor(root: Path, repetitions: int, budget: Budget) -> dict[str, list[float]]:
    """Seconds of each check of the trivial task on the host, one fresh process per repetition."""
    base, work, f2p = _trees(root)
    args = [
        json.dumps([TRIVIAL_MODULE, TRIVIAL_FILE]),
        json.dumps([TRIVIAL_MODULE, TRIVIAL_FILE]),
        json.dumps([TRIVIAL_FILE]),
    ]
    series: dict[str, list[float]] = {label: [] for label in FLOOR_SERIES}
    for index in iter_with_budget(repetitions + 1, budget):
        scratch = root / f"scratch-{index}"
        scratch.mkdir()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(scratch),
            "LANG": "C.UTF-8",
            # The sandbox's environment (controller/sandbox/spec.py), host paths.
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "COVERAGE_FILE": str(scratch / ".coverage"),
        }
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                FLOOR_SCRIPT,
                str(base),
                str(work),
                str(f2p),
                str(scratch),
                *args,
            ],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        expect(done.returncode == 0, f"the host floor failed: {done.stderr[-800:]}")
        line = next((x for x in done.stdout.splitlines() if x.startswith(RESULT_PREFIX)), "")
        expect(line, f"the host floor printed no result: {done.stdout[-800:]}")
        answer: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
        expect(all(answer["passed"]), f"the host's checks of the trivial task failed: {answer}")
        if index == 0:
            continue  # warm-up: the page cache and the venv's bytecode
        for label, key in FLOOR_SERIES.items():
            series[label].append(float(answer[key]))
    return series
