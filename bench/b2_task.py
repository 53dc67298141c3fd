"""B2: where the time of one whole task goes, both phases, from admission to the landed commit.

A trivial task on the example project (the scripted model creates a small
module and its test, then ends its turn) runs through ``TaskRunner.execute``
with the real engine, gateway, runner, verification, ingestion and the judge's
container (static checks sealed on its output, then the tests with fail-to-pass
alongside). Each stage's time comes from the run's events, the backend's
calls and the containers' log lines, stamped as they arrive. The judge's cost is
a ratio per task to the agent's last verification of the same tree; the whole
task is compared with its floor (:mod:`bench.b2_floor`). With
``TASKBOX_BENCH_B2_BEFORE_IMAGE`` set to a tag of an older sandbox image, tasks
alternate between the two images, for a before/after of the runner's boot.
"""

from __future__ import annotations

import logging
import math
import os
import re
import statistics
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from taskbox_runner.model_sdk import PRELOAD_ENV

from bench import b2_floor
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
from controller.image import SANDBOX_IMAGE
from controller.runs import TaskRunner, new_run_id
from controller.sandbox.docker import DockerImages

if TYPE_CHECKING:
    from pathlib import Path

    import docker

    from controller.events import RunEvent

log = logging.getLogger("bench.b2")

#: Log lines (substring -> mark): the inside's timeline whatever the image's version. The backend
#: records each also with its container's phase (``agent/...``, ``judge/...``).
LOG_MARKS = {
    "taskbox_runner: run ": "runner:started",
    "model SDK ready": "runner:sdk-ready",
    "model call 1:": "runner:model-1",
    "verifying /work": "runner:verify-begin",
    "taskbox_runner.loop: checks ": "runner:verify-end",
    "wrote /out/result.json": "runner:result",
    "static checks sealed": "judge:sealed",
    " phase: ": "judge:done",
}

#: The runner's line when it joins the SDK's import (taskbox_runner.model_sdk).
SDK_WAIT = re.compile(r"model SDK ready \(waited (\d+) ms")

AGENT, JUDGE = "agent/", "judge/"

#: (stage, from mark, to mark); consecutive, so together they cover the whole execute call.
STAGES: list[tuple[str, str, str]] = [
    ("admission + staging (git plan, files, run.json)", "execute:begin", "staged"),
    ("container spec + gateway start", "staged", AGENT + "create:begin"),
    ("agent: container create + inspect record", AGENT + "create:begin", AGENT + "start:begin"),
    ("agent: container start", AGENT + "start:begin", AGENT + "start:end"),
    ("agent: runner boot (interpreter + imports)", AGENT + "start:end", AGENT + "runner:started"),
    (
        "agent: runner setup, SDK import joined, first model reply",
        AGENT + "runner:started",
        AGENT + "runner:model-1",
    ),
    (
        "agent: model turns + tools (scripted)",
        AGENT + "runner:model-1",
        AGENT + "runner:verify-begin",
    ),
    (
        "agent: verification (ruff, pytest+coverage, 10 checks)",
        AGENT + "runner:verify-begin",
        AGENT + "runner:verify-end",
    ),
    (
        "agent: work commit, bundle, result.json",
        AGENT + "runner:verify-end",
        AGENT + "runner:result",
    ),
    ("agent: runner exit → engine reports the exit", AGENT + "runner:result", AGENT + "wait:end"),
    ("agent: collect + remove", AGENT + "wait:end", AGENT + "remove:end"),
    ("gateway stop + ingestion + judge staging", AGENT + "remove:end", "judging"),
    ("judge: container create + start", "judging", JUDGE + "start:end"),
    (
        "judge: boot (interpreter + imports, key, base test index)",
        JUDGE + "start:end",
        JUDGE + "runner:verify-begin",
    ),
    (
        "judge: static checks, report sealed on the output",
        JUDGE + "runner:verify-begin",
        JUDGE + "judge:sealed",
    ),
    (
        "judge: tests + coverage + contract, fail-to-pass alongside",
        JUDGE + "judge:sealed",
        JUDGE + "judge:done",
    ),
    ("judge: exit → engine reports the exit", JUDGE + "judge:done", JUDGE + "wait:end"),
    ("judge: collect + remove", JUDGE + "wait:end", JUDGE + "remove:end"),
    ("verdict, landing, record", JUDGE + "remove:end", "execute:end"),
]
BOOT_STAGE = STAGES[4][0]
VERIFY_STAGE = STAGES[7][0]
#: Summary rows: the phases, and the parts the judge's cost is compared with.
AGENT_PHASE = (
    "= agent phase (admission → agent container removed)",
    "execute:begin",
    AGENT + "remove:end",
)
INGESTION = ("= ingestion + judge staging", AGENT + "remove:end", "judging")
JUDGE_PHASE = ("= judge phase (one container, create → remove)", "judging", JUDGE + "remove:end")
JUDGE_CONTAINER_RUN = (
    "= judge container run (start → exit)",
    JUDGE + "start:end",
    JUDGE + "wait:end",
)
JUDGE_CHECKS = (
    "  judge: checks inside (static, then tests with fail-to-pass)",
    JUDGE + "runner:verify-begin",
    JUDGE + "judge:done",
)
JUDGE_STATIC_CHECKS = (
    "  judge: static checks inside",
    JUDGE + "runner:verify-begin",
    JUDGE + "judge:sealed",
)
JUDGE_TESTS_CHECKS = (
    "  judge: tests + fail-to-pass inside",
    JUDGE + "judge:sealed",
    JUDGE + "judge:done",
)
AGENT_LAST_VERIFY = (
    "  agent: last verification",
    AGENT + "runner:verify-begin",
    AGENT + "runner:verify-end",
)
FIRST_REPLY = (
    "  agent: container start → first model reply",
    AGENT + "start:end",
    AGENT + "runner:model-1",
)
CONTAINER_RUN = ("= agent container run (start → exit)", AGENT + "start:end", AGENT + "wait:end")
TOTAL = ("total TaskRunner.execute", "execute:begin", "execute:end")
SUMMARY = [
    AGENT_PHASE,
    CONTAINER_RUN,
    FIRST_REPLY,
    AGENT_LAST_VERIFY,
    INGESTION,
    JUDGE_PHASE,
    JUDGE_CONTAINER_RUN,
    JUDGE_CHECKS,
    JUDGE_STATIC_CHECKS,
    JUDGE_TESTS_CHECKS,
    TOTAL,
]
#: (label, numerator, denominator): ratios taken per task, then their median.
RATIOS = [
    ("judge phase / agent's last verification", JUDGE_PHASE, AGENT_LAST_VERIFY),
    ("judge container run / agent's last verification", JUDGE_CONTAINER_RUN, AGENT_LAST_VERIFY),
    ("judge, checks inside / agent's last verification", JUDGE_CHECKS, AGENT_LAST_VERIFY),
    ("judge phase / agent phase", JUDGE_PHASE, AGENT_PHASE),
]


def _span(marks: Marks, begin: str, end: str) -> float | None:
    """From the last ``begin`` to the first ``end`` after it (the last verification of several)."""
    t0 = marks.last(begin)
    if t0 is None:
        return None
    t1 = next((t for n, t in marks.items if n == end and t >= t0), None)
    return None if t1 is None else t1 - t0


#: Boot and exit of the runner's interpreter, isolated: each prints (import seconds, wall clock,
#: whether the model SDK got loaded).
_SDK_LOADED = "'anthropic' in sys.modules"
PROBES = {
    "python, nothing imported": "import sys, time; print(0.0, time.time(), False, flush=True)",
    "import anthropic, normal exit": (
        "import sys, time; t = time.perf_counter(); import anthropic; "
        f"print(time.perf_counter() - t, time.time(), {_SDK_LOADED}, flush=True)"
    ),
    "import anthropic, os._exit(0) after flush": (
        "import os, sys, time; t = time.perf_counter(); import anthropic; "
        f"print(time.perf_counter() - t, time.time(), {_SDK_LOADED}, flush=True); os._exit(0)"
    ),
    "runner's boot path: import taskbox_runner.__main__": (
        "import os, sys, time; t = time.perf_counter(); import taskbox_runner.__main__; "
        f"print(time.perf_counter() - t, time.time(), {_SDK_LOADED}, flush=True); os._exit(0)"
    ),
    # The judge's module loads the verifier lazily (after starting its warm pytest), so its
    # boot path is the module, the verifier and the config model, all before the seal.
    "judge's boot path: taskbox_runner.judge, the verifier, its config": (
        "import os, sys, time; t = time.perf_counter(); import taskbox_runner.judge; "
        "import taskbox_runner.verify.harness, taskbox_wire.config; "
        f"print(time.perf_counter() - t, time.time(), {_SDK_LOADED}, flush=True); os._exit(0)"
    ),
}
CURRENT = "SDK imported on a thread (current)"
NO_PRELOAD = f"same image, {PRELOAD_ENV}=0 (SDK imported when the client is made)"
BEFORE = "before"
#: Probes also run on this image when set (a tag of the image before a change): before/after in one run.
BEFORE_IMAGE_ENV = "TASKBOX_BENCH_B2_BEFORE_IMAGE"
BEFORE_PROBES = ("runner's boot path: import taskbox_runner.__main__",)


def _probe_boot_and_exit(
    ctx: BenchContext, repetitions: int, budget: Budget
) -> tuple[Table, dict[str, dict[str, float | bool]]]:
    """How long the boot paths' imports take, whether they load the SDK, and how long exit takes."""
    specs = HardenedSpecs(ctx, "b2-probe", ["true"])
    backend = BenchBackend(ctx.client)
    before = os.environ.get(BEFORE_IMAGE_ENV, "")
    variants: dict[str, tuple[str, str]] = {label: (code, "") for label, code in PROBES.items()}
    if before:
        variants |= {f"{label} [{before}]": (PROBES[label], before) for label in BEFORE_PROBES}
    imports: dict[str, list[float]] = {label: [] for label in variants}
    lags: dict[str, list[float]] = {label: [] for label in variants}
    cycles: dict[str, list[float]] = {label: [] for label in variants}
    loaded: dict[str, bool] = {}
    for _ in iter_with_budget(repetitions, budget):
        for label, (code, image) in variants.items():
            spec = specs.spec(["python", "-c", code])
            if image:
                spec = spec.model_copy(update={"image": image})
            began = time.perf_counter()
            handle = backend.create(spec)
            try:
                backend.start(handle)
                outcome = backend.wait(handle, timeout_seconds=60)
                exited = time.time()
            finally:
                backend.remove(handle)
            cycles[label].append(time.perf_counter() - began)
            fields = outcome.log_tail.split()
            expect(outcome.exit_code == 0 and len(fields) == 3, f"{label}: {outcome.log_tail!r}")
            imports[label].append(float(fields[0]))
            lags[label].append(exited - float(fields[1]))
            loaded[label] = fields[2] == "True"
    rows = []
    data: dict[str, dict[str, float | bool]] = {}
    for label in variants:
        imported, lag = Stats.of_seconds(imports[label]), Stats.of_seconds(lags[label])
        data[label] = {
            "import_median_ms": imported.median_ms,
            "exit_lag_median_ms": lag.median_ms,
            "sdk_loaded": loaded.get(label, False),
            "cycle_median_ms": Stats.of_seconds(cycles[label]).median_ms,
        }
        rows.append(
            [
                label,
                str(lag.n),
                fmt_ms(imported.median_ms),
                "yes" if loaded.get(label) else "no",
                fmt_ms(lag.median_ms),
                fmt_ms(lag.p95_ms),
                fmt_ms(data[label]["cycle_median_ms"]),
            ]
        )
    table = Table(
        title="The runner's interpreter in the hardened sandbox, isolated",
        headers=[
            "probe",
            "n",
            "import median ms",
            "model SDK loaded",
            "last print → exit seen, median ms",
            "p95 ms",
            "create → removed, median ms",
        ],
        rows=rows,
    )
    return table, data


def _stage_rows(
    runs: list[Marks], stages: list[tuple[str, str, str]], total_median: float
) -> tuple[list[list[str]], dict[str, dict[str, float]], list[str]]:
    """Median/p95 of each stage over the runs, its share of the median total, and the stages with no marks."""
    rows: list[list[str]] = []
    data: dict[str, dict[str, float]] = {}
    missing: list[str] = []
    for label, begin, end in stages:
        spans = [s for s in (_span(m, begin, end) for m in runs) if s is not None]
        if not spans:
            missing.append(label.strip(" ="))
            continue
        stats = Stats.of_seconds(spans)
        share = stats.median_ms / total_median * 100 if total_median else math.nan
        rows.append([label, fmt_ms(stats.median_ms), fmt_ms(stats.p95_ms), f"{share:.0f}%"])
        data[label.strip(" =")] = {
            "median_ms": stats.median_ms,
            "p95_ms": stats.p95_ms,
            "share_percent": round(share, 1),
        }
    return rows, data, missing


def _ratio_rows(runs: list[Marks]) -> tuple[list[list[str]], dict[str, float]]:
    """Each ratio of RATIOS taken per task (same run, same tree), then its median and range."""
    rows: list[list[str]] = []
    data: dict[str, float] = {}
    for label, (_, b0, b1), (_, d0, d1) in RATIOS:
        values = []
        for marks in runs:
            top, bottom = _span(marks, b0, b1), _span(marks, d0, d1)
            if top is not None and bottom:
                values.append(top / bottom)
        if not values:
            continue
        median = round(statistics.median(values), 3)
        data[label] = median
        rows.append([label, f"{median:.2f}x", f"{min(values):.2f}x", f"{max(values):.2f}x"])
    return rows, data


class _ImagesAs(DockerImages):
    """The engine's images, with the sandbox image's tag answered by another image (the "before" one)."""

    def __init__(self, client: docker.DockerClient, instead: str) -> None:
        super().__init__(client)
        self._instead = instead

    def image_id(self, ref: str) -> str | None:
        """The content id of ``ref``, or of the stand-in when ``ref`` is the sandbox image."""
        return super().image_id(self._instead if ref == SANDBOX_IMAGE else ref)


def _sdk_waits(runs_dir: Path) -> list[float]:
    """Seconds each agent runner waited for the model SDK's background import (its own log line)."""
    waits = []
    for log_file in sorted(runs_dir.rglob("sandbox.log")):
        found = SDK_WAIT.search(log_file.read_text(errors="replace"))
        if found:
            waits.append(int(found.group(1)) / 1000)
    return waits


def _compare_table(variants: dict[str, list[Marks]]) -> tuple[Table, dict[str, dict[str, float]]]:
    """The agent's boot and the task, per variant (round-robin in the same run)."""
    parts = [BOOT_STAGE, FIRST_REPLY[0], CONTAINER_RUN[0], AGENT_PHASE[0], TOTAL[0]]
    spans = {label: (b, e) for label, b, e in [*STAGES, *SUMMARY]}
    rows: list[list[str]] = []
    data: dict[str, dict[str, float]] = {}
    for part in parts:
        begin, end = spans[part]
        medians = {
            name: Stats.of_seconds(
                [s for s in (_span(m, begin, end) for m in runs) if s is not None]
            ).median_ms
            for name, runs in variants.items()
        }
        data[part.strip(" =")] = medians
        rows.append([part.strip(" "), *(fmt_ms(medians[name]) for name in variants)])
    table = Table(
        title="The runner's boot: variants round-robin in the same run (median ms)",
        headers=["part", *variants],
        rows=rows,
    )
    return table, data


def _run_tasks(
    ctx: BenchContext, root: Path, before: str, budget: Budget
) -> tuple[dict[str, list[Marks]], list[str]]:
    """Warm-up plus N rounds of the trivial task, one per image variant a round; the marks of each."""
    repetitions, warmup = ctx.reps(5, 1), ctx.reps(1, 0)
    repo = example_repo(root / "repo")
    script = trivial_script(root / "script.jsonl")
    backend = BenchBackend(ctx.client, log_marks=LOG_MARKS)
    # name -> (images, environment added to the containers): the same image with the SDK's
    # background import switched off is the A/B of the runner's boot; "before" an older image.
    setups: dict[str, tuple[DockerImages, dict[str, str]]] = {
        CURRENT: (DockerImages(ctx.client), {}),
        NO_PRELOAD: (DockerImages(ctx.client), {PRELOAD_ENV: "0"}),
    }
    if before:
        setups[BEFORE] = (_ImagesAs(ctx.client, before), {})
    runners = {
        name: TaskRunner(
            ctx.settings.model_copy(update={"runs_dir": root / f"runs-{index}"}),
            backend,
            images,
            model=f"scripted:{script}",
            controller_id=CONTROLLER_ID,
        )
        for index, (name, (images, _)) in enumerate(setups.items())
    }
    variants: dict[str, list[Marks]] = {name: [] for name in runners}
    statuses: list[str] = []
    for index in iter_with_budget(warmup + repetitions, budget):
        for variant, (name, runner) in enumerate(runners.items()):
            marks = backend.marks = Marks()
            backend.extra_env = setups[name][1]
            task = trivial_task(f"BENCH-{index}-{variant}")

            def emit(event: RunEvent, marks: Marks = marks) -> None:
                from_sandbox = event.data.get("from") == "sandbox"
                marks.mark(f"sandbox:{event.stage}" if from_sandbox else event.stage)

            marks.mark("execute:begin")
            result = runner.execute(
                run_id=new_run_id(task.task_key), task=task, repo=repo, base_ref="HEAD", emit=emit
            )
            marks.mark("execute:end")
            backend.marks, backend.extra_env = None, {}
            expect(
                result.status == "succeeded",
                f"the trivial task ({name}) ended {result.status}: {result.reason}",
            )
            statuses.append(result.status)
            if index >= warmup:
                variants[name].append(marks)
    return variants, statuses


JUDGE_WORK_RATIO = "the judge's checks / the agent's verify(), both on the host"


def _floor_table(
    floor: dict[str, list[float]],
    probes: dict[str, dict[str, float | bool]],
    measured: dict[str, float],
) -> tuple[Table, dict[str, float]]:
    """The floor of the task and of the judge phase (host checks + one container cycle a phase), and the ratios."""
    host = {label: Stats.of_seconds(samples).median_ms for label, samples in floor.items()}
    cycle = float(probes["python, nothing imported"]["cycle_median_ms"])
    per_phase = host[b2_floor.IMPORT] + cycle
    judge_work = host[b2_floor.JUDGE_STATIC] + host[b2_floor.JUDGE_TESTS]
    floor_judge = per_phase + judge_work
    floor_task = per_phase + host[b2_floor.AGENT_VERIFY] + floor_judge
    rows = [[f"host: {label}", fmt_ms(value), ""] for label, value in host.items()]
    rows.append(
        ["hardened container cycle (create → removed, `python -c` nothing)", fmt_ms(cycle), ""]
    )
    ratios = {
        "whole task / its floor": measured["task"] / floor_task,
        "judge phase / its floor": measured["judge"] / floor_judge,
        "agent's last verification / host verify()": measured["agent_verify"]
        / host[b2_floor.AGENT_VERIFY],
        JUDGE_WORK_RATIO: judge_work / host[b2_floor.AGENT_VERIFY],
    }
    rows += [
        ["floor of the task: 2 x (import + cycle) + the three checks", fmt_ms(floor_task), ""],
        [
            "floor of the judge phase: import + cycle + its static and dynamic checks",
            fmt_ms(floor_judge),
            "",
        ],
        *([label, "", f"{value:.2f}x"] for label, value in ratios.items()),
    ]
    table = Table(
        title=f"The floor: the same checks on the host (fresh process each, N={len(floor[b2_floor.IMPORT])})",
        headers=["part", "median ms", "ratio"],
        rows=rows,
    )
    data = {
        **{f"host_ms:{label}": value for label, value in host.items()},
        "container_cycle_ms": cycle,
        "floor_task_ms": round(floor_task, 1),
        "floor_judge_ms": round(floor_judge, 1),
        **{label: round(value, 3) for label, value in ratios.items()},
    }
    return table, data


def _notes(
    data: dict[str, dict[str, float]],
    summary: dict[str, dict[str, float]],
    *,
    ratios: dict[str, float],
    probes: dict[str, dict[str, float | bool]],
    waits: list[float],
    missing: list[str],
) -> list[str]:
    """The result's notes: where the task's time goes, the judge's ratio, the boot."""

    def median(label: str) -> float:
        return (data.get(label) or summary.get(label) or {}).get("median_ms", math.nan)

    container = median(CONTAINER_RUN[0].strip(" ="))
    agent, judge = median(AGENT_PHASE[0].strip(" =")), median(JUDGE_PHASE[0].strip(" ="))
    notes = [
        (
            f"Median task {data[TOTAL[0]]['median_ms']:.0f} ms: agent phase {agent:.0f} ms, ingestion and judge staging "
            f"{median(INGESTION[0].strip(' =')):.0f} ms, judge phase {judge:.0f} ms "
            f"({judge / data[TOTAL[0]]['median_ms'] * 100:.0f}% of the task); the agent's container runs {container:.0f} ms."
        ),
        *(
            f"{label}: {value:.2f}x (target for the judge phase: ≤ 1.3x the agent's last verification)."
            for label, value in ratios.items()
            if label.startswith("judge phase / agent's")
        ),
    ]
    for label in (BOOT_STAGE, VERIFY_STAGE):
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
    if waits:
        notes.append(
            f"The agent's runner waited {statistics.median(waits) * 1000:.0f} ms (median) for the model SDK's "
            "background import when it made the client: what the overlap with the set-up did not hide."
        )
    if missing:
        notes.append(
            "No mark for: " + "; ".join(missing) + " (the runner's or judge's log lines changed?)."
        )
    return notes


def run(ctx: BenchContext) -> BenchResult:
    """N trivial tasks end to end, both phases; the per-stage table, the judge's ratios, the probes."""
    started_at, budget = datetime.now(UTC), Budget(330)
    root = ctx.folder("b2")
    before = os.environ.get(BEFORE_IMAGE_ENV, "")
    variants, statuses = _run_tasks(ctx, root, before, budget)
    runs = variants[CURRENT]

    totals = [_span(m, *TOTAL[1:]) or math.nan for m in runs]
    total_median = Stats.of_seconds(totals).median_ms
    rows, data, missing = _stage_rows(runs, [*STAGES, TOTAL], total_median)
    summary_rows, summary, missing_summary = _stage_rows(runs, SUMMARY, total_median)
    ratio_rows, ratios = _ratio_rows(runs)
    probe_table, probes = _probe_boot_and_exit(ctx, ctx.reps(5, 1), Budget(90))
    floor = b2_floor.host_floor(root / "floor", ctx.reps(3, 1), Budget(90))
    floor_table, floor_data = _floor_table(
        floor,
        probes,
        {
            "task": total_median,
            "judge": summary[JUDGE_PHASE[0].strip(" =")]["median_ms"],
            "agent_verify": data[VERIFY_STAGE]["median_ms"],
        },
    )
    tables = [
        Table(
            title=f"One trivial task through TaskRunner.execute, both phases, N={len(runs)} (stages are consecutive)",
            headers=["stage", "median ms", "p95 ms", "share of median total"],
            rows=rows,
        ),
        Table(
            title="The phases, and what the judge is compared with",
            headers=["part", "median ms", "p95 ms", "share of median total"],
            rows=summary_rows,
        ),
        Table(
            title="The judge's cost, ratios per task (median, min, max)",
            headers=["ratio", "median", "min", "max"],
            rows=ratio_rows,
        ),
        floor_table,
        probe_table,
    ]
    compare_table, compare = _compare_table(variants)
    tables.insert(4, compare_table)

    waits = _sdk_waits(root / "runs-0")
    notes = _notes(
        data,
        summary,
        ratios=ratios,
        probes=probes,
        waits=waits,
        missing=[*missing, *missing_summary],
    )
    notes.append(
        f"Against the floor (the same checks on the host, one container cycle a phase): the whole task "
        f"{floor_data['whole task / its floor']:.2f}x (target ≤ 1.3x), the judge phase "
        f"{floor_data['judge phase / its floor']:.2f}x; on the host the judge's checks alone are "
        f"{floor_data[JUDGE_WORK_RATIO]:.2f}x the agent's verify()."
    )
    return BenchResult(
        key="B2",
        title="one whole task, both phases",
        started_at=started_at,
        duration_seconds=round(budget.elapsed(), 1),
        tables=tables,
        notes=notes,
        data={
            "stages": to_json(data),
            "phases": to_json(summary),
            "ratios": to_json(ratios),
            "interpreter_probes": to_json(probes),
            "before_after": to_json(compare),
            "floor": to_json(floor_data),
            "sdk_wait_seconds": to_json(waits),
            "statuses": list(statuses),
            "repetitions": len(runs),
        },
    )
