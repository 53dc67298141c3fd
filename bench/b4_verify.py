"""B4: the runner's verification of the finished example project, in a fresh sandbox vs on the host.

The project is examples/hello-api with the greetings task done (the example
script's edits applied and committed). In the sandbox it runs exactly as a task
would see it (planned files only, read-only root, limits) through
``run_in_task_sandbox``; on the host the same script runs with the project's
venv on a copy of that staged tree, on both cores and pinned to one (``taskset``,
the fair floor for the sandbox's one CPU). Both are fresh processes, so both pay
the interpreter start and the imports; the script reports those apart, and the
CPU time of verify() with its subprocesses, which a loaded machine does not stretch.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bench.harness import (
    CONTROLLER_ID,
    BenchBackend,
    BenchContext,
    BenchError,
    BenchResult,
    Budget,
    Stats,
    expect,
    iter_with_budget,
    timing_table,
)
from bench.projects import example_task, finished_example_repo
from controller.sandbox.task_sandbox import run_in_task_sandbox

if TYPE_CHECKING:
    from pathlib import Path

    from taskbox_wire.contract import Task

log = logging.getLogger("bench.b4")

RESULT_PREFIX = "BENCH-RESULT "
#: Runs in the sandbox (``python -c``) and on the host alike; argv: scratch, owns (JSON), changed (JSON).
VERIFY_SCRIPT = """
import json, os, pathlib, shutil, sys, time
t0 = time.perf_counter()
from taskbox_runner.verify import VerifyContext, verify
t1 = time.perf_counter()
work, scratch = pathlib.Path.cwd(), pathlib.Path(sys.argv[1])
(scratch / "base-config").mkdir(parents=True)
(scratch / "verify").mkdir()
shutil.copy(work / "pyproject.toml", scratch / "base-config" / "pyproject.toml")
c1 = os.times()
report = verify(VerifyContext(
    workdir=work, owns_paths=json.loads(sys.argv[2]), openapi_path="contracts/openapi.json",
    base_config_dir=scratch / "base-config", scratch_dir=scratch / "verify",
    changed_files=json.loads(sys.argv[3]),
))
t2 = time.perf_counter()
c2 = os.times()
cpu = sum(getattr(c2, f) - getattr(c1, f) for f in ("user", "system", "children_user", "children_system"))
print("BENCH-RESULT " + json.dumps({
    "import_s": t1 - t0, "verify_s": t2 - t1, "verify_cpu_s": cpu, "passed": report.passed,
    "tests_passed": report.test_results.passed, "coverage": report.test_results.coverage_percent,
}), flush=True)
"""

SANDBOX_TOTAL = "sandbox: plan + stage + container + verify + remove"
SANDBOX_CONTAINER = "sandbox: container start → exit"
SANDBOX_IMPORT = "sandbox: import taskbox_runner.verify"
SANDBOX_VERIFY = "sandbox: verify()"
#: CPU seconds of verify(), its subprocesses included: what a shared machine's load does not stretch.
SANDBOX_CPU = "sandbox: verify() CPU time"
#: The same with the task asking for 2 CPUs (the be-python policy's max; its default is 1).
TWO_CPUS = "sandbox, cpus=2: "
HOST_TOTAL = "host: python process"
HOST_IMPORT = "host: import taskbox_runner.verify"
HOST_VERIFY = "host: verify()"
HOST_CPU = "host: verify() CPU time"
#: The host pinned to one core (``taskset``): the fair floor for the sandbox's one CPU.
HOST_ONE_CORE = "host, 1 core: "


def _parse(output: str) -> dict[str, Any]:
    line = next((x for x in output.splitlines() if x.startswith(RESULT_PREFIX)), None)
    expect(line is not None, f"the verify script printed no result: {output[-800:]}")
    answer: dict[str, Any] = json.loads(str(line)[len(RESULT_PREFIX) :])
    expect(answer["passed"], f"verification of the finished example failed: {answer}")
    return answer


class _Verifier:
    """Runs the verify script in a fresh sandbox or on the host, recording each time."""

    def __init__(self, ctx: BenchContext, root: Path) -> None:
        self.ctx = ctx
        self.repo, changed = finished_example_repo(root / "repo")
        self.task: Task = example_task()
        self.task_two_cpus: Task = example_task(resources={"cpus": 2.0})
        self.args = [json.dumps(self.task.owns_paths), json.dumps(changed)]
        self.backend = BenchBackend(ctx.client)
        self.runs_dir = root / "runs"
        self.host_root = root / "host"
        self.host_work = self.host_root / "work"
        self.series: dict[str, list[float]] = {}
        self.results: list[dict[str, Any]] = []
        self.count = 0

    def _add(self, label: str, seconds: float, record: bool) -> None:
        if record:
            self.series.setdefault(label, []).append(seconds)

    def sandbox(self, record: bool, keep: bool = False, two_cpus: bool = False) -> Path | None:
        started = time.perf_counter()
        done = run_in_task_sandbox(
            self.task_two_cpus if two_cpus else self.task,
            repo=self.repo,
            command=["python", "-c", VERIFY_SCRIPT, "/tmp/bench", *self.args],  # noqa: S108 - inside the sandbox
            backend=self.backend,
            policies_dir=self.ctx.settings.policies_dir,
            runs_dir=self.runs_dir,
            keep=keep,
            controller_id=CONTROLLER_ID,
        )
        total = time.perf_counter() - started
        outcome = done.run.outcome
        expect(
            outcome.exit_code == 0,
            f"the sandbox's verify ended: {outcome.describe()}: {outcome.log_tail[-800:]}",
        )
        answer = _parse(outcome.log_tail)
        if two_cpus:
            self._add(TWO_CPUS + "container start → exit", outcome.duration_seconds, record)
            self._add(TWO_CPUS + "verify()", answer["verify_s"], record)
        else:
            self._add(SANDBOX_TOTAL, total, record)
            self._add(SANDBOX_CONTAINER, outcome.duration_seconds, record)
            self._add(SANDBOX_IMPORT, answer["import_s"], record)
            self._add(SANDBOX_VERIFY, answer["verify_s"], record)
            self._add(SANDBOX_CPU, answer["verify_cpu_s"], record)
        if record:
            self.results.append({"where": "sandbox, cpus=2" if two_cpus else "sandbox", **answer})
        return done.staging_root

    def host(self, record: bool, one_core: bool = False) -> None:
        self.count += 1
        scratch = self.host_root / f"scratch-{self.count}"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(scratch),
            "LANG": "C.UTF-8",
            # The sandbox's environment (controller/sandbox/spec.py SANDBOX_ENV), host paths.
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "COVERAGE_FILE": str(scratch / ".coverage"),
        }
        pin = [shutil.which("taskset") or "taskset", "-c", "0"] if one_core else []
        started = time.perf_counter()
        done = subprocess.run(
            [*pin, sys.executable, "-c", VERIFY_SCRIPT, str(scratch), *self.args],
            cwd=self.host_work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        total = time.perf_counter() - started
        expect(done.returncode == 0, f"host verify failed: {done.stderr[-800:]}")
        answer = _parse(done.stdout)
        if one_core:
            self._add(HOST_ONE_CORE + "verify()", answer["verify_s"], record)
        else:
            self._add(HOST_TOTAL, total, record)
            self._add(HOST_IMPORT, answer["import_s"], record)
            self._add(HOST_VERIFY, answer["verify_s"], record)
            self._add(HOST_CPU, answer["verify_cpu_s"], record)
        if record:
            self.results.append({"where": "host, 1 core" if one_core else "host", **answer})


def run(ctx: BenchContext) -> BenchResult:
    """Warm both once, then N rounds of (sandbox, host)."""
    started_at, budget = datetime.now(UTC), Budget(240)
    repetitions = ctx.reps(5, 1)
    verifier = _Verifier(ctx, ctx.folder("b4"))
    # The first sandbox keeps its staging folder: the host verifies a copy of exactly that tree.
    staged = verifier.sandbox(record=False, keep=True)
    if staged is None:
        raise BenchError("run_in_task_sandbox(keep=True) returned no staging folder")
    shutil.copytree(staged / "work", verifier.host_work, symlinks=True)
    verifier.host(record=False)
    for _ in iter_with_budget(repetitions, budget):
        verifier.sandbox(record=True)
        verifier.sandbox(record=True, two_cpus=True)
        verifier.host(record=True)
        verifier.host(record=True, one_core=True)

    # Order the table: the default sandbox, the 2-CPU one, the host.
    order = [SANDBOX_TOTAL, SANDBOX_CONTAINER, SANDBOX_IMPORT, SANDBOX_VERIFY, SANDBOX_CPU]
    order += [label for label in verifier.series if label.startswith(TWO_CPUS)]
    order += [HOST_TOTAL, HOST_IMPORT, HOST_VERIFY, HOST_CPU, HOST_ONE_CORE + "verify()"]
    series = {label: verifier.series.get(label, []) for label in order}
    table, data = timing_table(
        f"Verification of the finished example (4 tests, 10 checks), N={repetitions}",
        series,
        floor=HOST_TOTAL,
    )
    median = {label: Stats.of_seconds(samples).median_ms for label, samples in series.items()}
    notes = [
        (
            f"A fresh sandbox costs {median[SANDBOX_TOTAL] / median[HOST_TOTAL]:.2f}x the host run "
            f"({median[SANDBOX_TOTAL]:.0f} vs {median[HOST_TOTAL]:.0f} ms); of the difference, "
            f"{median[SANDBOX_TOTAL] - median[SANDBOX_CONTAINER]:.0f} ms is outside the container "
            "(plan, stage, create, start, remove)."
        ),
        (
            f"verify() itself: {median[SANDBOX_VERIFY]:.0f} ms in the sandbox vs {median[HOST_VERIFY]:.0f} ms on the host "
            f"({median[SANDBOX_VERIFY] / median[HOST_VERIFY]:.2f}x); importing the verifier: "
            f"{median[SANDBOX_IMPORT]:.0f} vs {median[HOST_IMPORT]:.0f} ms."
        ),
        (
            f"CPU time of verify() with its subprocesses: {median[SANDBOX_CPU]:.0f} ms in the sandbox vs "
            f"{median[HOST_CPU]:.0f} ms on the host ({median[SANDBOX_CPU] / median[HOST_CPU]:.2f}x): "
            "the ratio the machine's other load does not stretch. On the host pinned to one core "
            f"(the fair floor for the sandbox's one CPU) verify() takes {median[HOST_ONE_CORE + 'verify()']:.0f} ms "
            f"({median[SANDBOX_VERIFY] / median[HOST_ONE_CORE + 'verify()']:.2f}x)."
        ),
        (
            f"With 2 CPUs instead of the policy's 1, verify() in the sandbox takes {median[TWO_CPUS + 'verify()']:.0f} ms "
            "(ruff, pytest and the contract dump run one after another: on one CPU running them at once "
            "saves nothing, since all three are CPU-bound)."
        ),
        (
            f"The sandbox runs the image's runner and Python ({ctx.image}); the host runs this checkout's runner "
            f"with Python {sys.version.split()[0]}: rebuild the image to compare the same code."
        ),
    ]
    return BenchResult(
        key="B4",
        title="verify stage: sandbox vs host",
        started_at=started_at,
        duration_seconds=round(budget.elapsed(), 1),
        tables=[table],
        notes=notes,
        data={"series": data, "runs": list(verifier.results)},
    )
