"""B2: where the time of one whole task goes, from admission to the checked commit.

A trivial task on the example project (the scripted model creates one owned
test file, then ends its turn) runs through ``TaskRunner.execute`` with the real
engine, gateway, runner, verification and ingestion. Each stage's time comes
from the run's events (stamped as they arrive) and the backend's calls.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bench.harness import (
    CONTROLLER_ID,
    BenchBackend,
    BenchContext,
    BenchResult,
    Budget,
    Marks,
    Stats,
    Table,
    expect,
    fmt_ms,
    iter_with_budget,
    to_json,
)
from bench.projects import example_repo, trivial_script, trivial_task
from bench.specs import HardenedSpecs
from controller.runs import TaskRunner, new_run_id
from controller.sandbox.docker import DockerImages

if TYPE_CHECKING:
    from controller.events import RunEvent

log = logging.getLogger("bench.b2")

#: Runner log lines (substring -> mark): they carry the inside's timeline whatever the image's version.
LOG_MARKS = {
    "taskbox_runner: run ": "runner:started",
    "model call 1:": "runner:model-1",
    "verifying /work": "runner:verify-begin",
    "taskbox_runner.loop: checks ": "runner:verify-end",
    "wrote /out/result.json": "runner:result",
}

#: (stage, from mark, to mark); consecutive, so together they cover the whole execute call.
STAGES: list[tuple[str, str, str]] = [
    ("admission + staging (git plan, files, run.json)", "execute:begin", "staged"),
    ("container spec + gateway start", "staged", "create:begin"),
    ("container create + inspect record", "create:begin", "start:begin"),
    ("container start", "start:begin", "start:end"),
    ("runner boot: interpreter + imports", "start:end", "runner:started"),
    (
        "runner setup: scratch git, base configs, first model reply",
        "runner:started",
        "runner:model-1",
    ),
    ("model turns + tools (scripted)", "runner:model-1", "runner:verify-begin"),
    ("verification (ruff, pytest+coverage, 10 checks)", "runner:verify-begin", "runner:verify-end"),
    ("work commit, bundle, result.json", "runner:verify-end", "runner:result"),
    ("runner exit → engine reports the exit", "runner:result", "wait:end"),
    ("collect output", "wait:end", "collect:end"),
    ("remove container", "collect:end", "remove:end"),
    ("gateway stop + ingestion + record", "remove:end", "execute:end"),
]
VERIFY_STAGE = STAGES[7][0]
BOOT_STAGE = STAGES[4][0]
#: Summary rows: the container's part and the controller's own part of the whole.
CONTAINER_RUN = ("container run (start → exit)", "start:end", "wait:end")
TOTAL = ("total TaskRunner.execute", "execute:begin", "execute:end")


def _span(marks: Marks, begin: str, end: str) -> float | None:
    """From the first ``begin`` to the last ``end``."""
    t0, t1 = marks.first(begin), marks.last(end)
    return None if t0 is None or t1 is None else t1 - t0


#: Boot and exit of the runner's interpreter, isolated: each prints (import seconds, wall clock).
PROBES = {
    "python, nothing imported": "import time; print(0.0, time.time(), flush=True)",
    "import anthropic, normal exit": (
        "import time; t = time.perf_counter(); import anthropic; "
        "print(time.perf_counter() - t, time.time(), flush=True)"
    ),
    "import anthropic, os._exit(0) after flush": (
        "import os, time; t = time.perf_counter(); import anthropic; "
        "print(time.perf_counter() - t, time.time(), flush=True); os._exit(0)"
    ),
}


def _probe_boot_and_exit(
    ctx: BenchContext, repetitions: int, budget: Budget
) -> tuple[Table, dict[str, dict[str, float]]]:
    """How long importing the model SDK takes, and how long the interpreter then takes to exit."""
    specs = HardenedSpecs(ctx, "b2-probe", ["true"])
    backend = BenchBackend(ctx.client)
    imports: dict[str, list[float]] = {label: [] for label in PROBES}
    lags: dict[str, list[float]] = {label: [] for label in PROBES}
    for _ in iter_with_budget(repetitions, budget):
        for label, code in PROBES.items():
            handle = backend.create(specs.spec(["python", "-c", code]))
            try:
                backend.start(handle)
                outcome = backend.wait(handle, timeout_seconds=60)
                exited = time.time()
            finally:
                backend.remove(handle)
            fields = outcome.log_tail.split()
            expect(outcome.exit_code == 0 and len(fields) == 2, f"{label}: {outcome.log_tail!r}")
            imports[label].append(float(fields[0]))
            lags[label].append(exited - float(fields[1]))
    rows = []
    data: dict[str, dict[str, float]] = {}
    for label in PROBES:
        imported, lag = Stats.of_seconds(imports[label]), Stats.of_seconds(lags[label])
        data[label] = {"import_median_ms": imported.median_ms, "exit_lag_median_ms": lag.median_ms}
        rows.append(
            [
                label,
                str(lag.n),
                fmt_ms(imported.median_ms),
                fmt_ms(lag.median_ms),
                fmt_ms(lag.p95_ms),
            ]
        )
    table = Table(
        title="The runner's interpreter in the hardened sandbox, isolated",
        headers=["probe", "n", "import median ms", "last print → exit seen, median ms", "p95 ms"],
        rows=rows,
    )
    return table, data


def run(ctx: BenchContext) -> BenchResult:
    """N trivial tasks end to end; the per-stage table and the controller's share."""
    started_at, budget = datetime.now(UTC), Budget(120)
    repetitions, warmup = ctx.reps(5, 1), ctx.reps(1, 0)
    root = ctx.folder("b2")
    repo = example_repo(root / "repo")
    script = trivial_script(root / "script.jsonl")
    settings = ctx.settings.model_copy(update={"runs_dir": root / "runs"})
    backend = BenchBackend(ctx.client, log_marks=LOG_MARKS)
    runner = TaskRunner(
        settings,
        backend,
        DockerImages(ctx.client),
        model=f"scripted:{script}",
        controller_id=CONTROLLER_ID,
    )
    runs: list[Marks] = []
    statuses: list[str] = []
    for index in iter_with_budget(warmup + repetitions, budget):
        marks = backend.marks = Marks()
        task = trivial_task(f"BENCH-{index}")

        def emit(event: RunEvent, marks: Marks = marks) -> None:
            from_sandbox = event.data.get("from") == "sandbox"
            marks.mark(f"sandbox:{event.stage}" if from_sandbox else event.stage)

        marks.mark("execute:begin")
        result = runner.execute(
            run_id=new_run_id(task.task_key), task=task, repo=repo, base_ref="HEAD", emit=emit
        )
        marks.mark("execute:end")
        backend.marks = None
        expect(
            result.status == "succeeded", f"the trivial task ended {result.status}: {result.reason}"
        )
        statuses.append(result.status)
        if index >= warmup:
            runs.append(marks)

    rows: list[list[str]] = []
    data: dict[str, dict[str, float]] = {}
    totals = [_span(m, *TOTAL[1:]) or math.nan for m in runs]
    total_median = Stats.of_seconds(totals).median_ms
    missing: list[str] = []
    for label, begin, end in [*STAGES, CONTAINER_RUN, TOTAL]:
        spans = [s for s in (_span(m, begin, end) for m in runs) if s is not None]
        if not spans:
            missing.append(label)
            continue
        stats = Stats.of_seconds(spans)
        share = stats.median_ms / total_median * 100 if total_median else math.nan
        rows.append([label, fmt_ms(stats.median_ms), fmt_ms(stats.p95_ms), f"{share:.0f}%"])
        data[label] = {
            "median_ms": stats.median_ms,
            "p95_ms": stats.p95_ms,
            "share_percent": round(share, 1),
        }
    probe_table, probes = _probe_boot_and_exit(ctx, ctx.reps(5, 1), budget)
    table = Table(
        title=f"One trivial task through TaskRunner.execute, N={len(runs)} (stages are consecutive)",
        headers=["stage", "median ms", "p95 ms", "share of median total"],
        rows=rows,
    )
    container = data.get(CONTAINER_RUN[0], {}).get("median_ms", math.nan)
    controller = total_median - container
    notes = [
        (
            f"The container runs for {container:.0f} ms of the {total_median:.0f} ms median; the controller's own "
            f"work around it (admission, staging, gateway, create/start, collect, remove, ingestion) is {controller:.0f} ms "
            f"({controller / total_median * 100:.0f}%)."
        ),
    ]
    for label in (VERIFY_STAGE, BOOT_STAGE):
        stage = data.get(label)
        if stage is not None:
            notes.append(
                f"{label}: {stage['median_ms']:.0f} ms ({stage['share_percent']:.0f}% of the task)."
            )
    normal = probes["import anthropic, normal exit"]
    quick = probes["import anthropic, os._exit(0) after flush"]
    notes.append(
        f"Importing the model SDK (anthropic) alone takes {normal['import_median_ms']:.0f} ms in the sandbox; "
        f"after it, the interpreter needs {normal['exit_lag_median_ms']:.0f} ms to exit (tearing down the "
        f"imported modules) against {quick['exit_lag_median_ms']:.0f} ms with os._exit(0) after flushing."
    )
    if missing:
        notes.append("No mark for: " + "; ".join(missing) + " (the runner's log lines changed?).")
    return BenchResult(
        key="B2",
        title="controller overhead of one whole task",
        started_at=started_at,
        duration_seconds=round(budget.elapsed(), 1),
        tables=[table, probe_table],
        notes=notes,
        data={
            "stages": to_json(data),
            "interpreter_probes": to_json(probes),
            "statuses": list(statuses),
            "repetitions": len(runs),
        },
    )
