"""B3/B7: N trivial tasks at once (1, 2, 4, 8): throughput, task time, memory per running sandbox, errors.

Each level starts N trivial tasks (bench.projects, both phases) together on
worker threads through one ``TaskRunner``, as the task service's workers do,
and waits for all of them. Per level: the makespan, tasks per minute, p50/p95
task time, failures, the host's CPU use over the level (/proc/stat), and the
memory cgroup usage of the running sandboxes, sampled every half second.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Self

from docker.errors import DockerException

from bench.b6_memory import MIB, cgroup_usage
from bench.harness import (
    BENCH_LABEL,
    CONTROLLER_ID,
    BenchBackend,
    BenchContext,
    BenchResult,
    Budget,
    Stats,
    Table,
    fmt_ms,
    to_json,
)
from bench.projects import example_repo, trivial_script, trivial_task
from controller.runs import TaskRunner, new_run_id
from controller.sandbox.docker import DockerImages

if TYPE_CHECKING:
    import docker

log = logging.getLogger("bench.b3")

LEVELS = (1, 2, 4, 8)
QUICK_LEVELS = (1, 2)
SAMPLE_SECONDS = 0.5


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


class MemorySampler:
    """Samples the memory cgroup usage of the running bench sandboxes until stopped."""

    def __init__(self, client: docker.DockerClient) -> None:
        self._client = client
        self._stop = threading.Event()
        self.per_sandbox: list[int] = []
        self.totals: list[int] = []
        self.running: list[int] = []
        self._thread = threading.Thread(target=self._loop, name="b3-memory", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            try:
                items = self._client.api.containers(filters={"label": [f"{BENCH_LABEL}=1"]})
            except DockerException:  # a missed sample, not a failed benchmark
                log.debug("could not list the running sandboxes", exc_info=True)
                continue
            usages = [u for u in (cgroup_usage(item["Id"]) for item in items) if u is not None]
            self.running.append(len(items))
            if usages:
                self.per_sandbox += usages
                self.totals.append(sum(usages))


def _level(
    runner: TaskRunner, repo: Path, client: docker.DockerClient, count: int, tag: str
) -> tuple[dict[str, float], list[str]]:
    """``count`` trivial tasks at once; what the level measured, and its errors."""
    durations: list[float] = []
    errors: list[str] = []

    def one(index: int) -> None:
        task = trivial_task(f"B3-{tag}-{index}")
        started = time.perf_counter()
        try:
            result = runner.execute(
                run_id=new_run_id(task.task_key), task=task, repo=repo, base_ref="HEAD"
            )
        except Exception as exc:  # noqa: BLE001 - counted as an error of the level
            errors.append(f"{type(exc).__name__}: {exc}")
            return
        durations.append(time.perf_counter() - started)
        if result.status != "succeeded":
            errors.append(f"{result.status}: {result.reason}")

    busy0, total0 = cpu_times()
    began = time.perf_counter()
    with MemorySampler(client) as memory, ThreadPoolExecutor(count) as pool:
        list(pool.map(one, range(count)))
    makespan = time.perf_counter() - began
    busy1, total1 = cpu_times()
    stats = Stats.of_seconds(durations)
    if errors:
        log.warning("B3 level %d: %d errors: %s", count, len(errors), "; ".join(errors[:3]))
    return {
        "tasks": count,
        "makespan_s": round(makespan, 2),
        "tasks_per_minute": round(count / makespan * 60, 2),
        "p50_ms": stats.median_ms,
        "p95_ms": stats.p95_ms,
        "errors": len(errors),
        "cpu_percent": round((busy1 - busy0) / max(1, total1 - total0) * 100, 1),
        "peak_running_sandboxes": max(memory.running, default=0),
        "memory_per_sandbox_median_mib": round(statistics.median(memory.per_sandbox) / MIB, 1)
        if memory.per_sandbox
        else float("nan"),
        "memory_peak_total_mib": round(max(memory.totals, default=0) / MIB, 1),
    }, errors


def run(ctx: BenchContext) -> BenchResult:
    """Each level in turn, while the budget lasts."""
    started_at, budget = datetime.now(UTC), Budget(420)
    root = ctx.folder("b3")
    repo = example_repo(root / "repo")
    script = trivial_script(root / "script.jsonl")
    runner = TaskRunner(
        ctx.settings.model_copy(update={"runs_dir": root / "runs"}),
        BenchBackend(ctx.client),
        DockerImages(ctx.client),
        model=f"scripted:{script}",
        controller_id=CONTROLLER_ID,
    )
    levels: list[dict[str, float]] = []
    errors: list[str] = []
    for count in QUICK_LEVELS if ctx.quick else LEVELS:
        if budget.spent():
            log.warning("budget of %.0f s spent before %d tasks at once", budget.seconds, count)
            break
        log.info("B3: %d tasks at once", count)
        level, failed = _level(runner, repo, ctx.client, count, f"{count}")
        levels.append(level)
        errors += [f"{count} at once: {error}" for error in failed]
    rows = [
        [
            str(int(level["tasks"])),
            f"{level['makespan_s']:.1f}",
            f"{level['tasks_per_minute']:.1f}",
            fmt_ms(level["p50_ms"]),
            fmt_ms(level["p95_ms"]),
            str(int(level["errors"])),
            f"{level['cpu_percent']:.0f}%",
            str(int(level["peak_running_sandboxes"])),
            f"{level['memory_per_sandbox_median_mib']:.0f}",
            f"{level['memory_peak_total_mib']:.0f}",
        ]
        for level in levels
    ]
    table = Table(
        title="N trivial tasks at once through TaskRunner (threads), both phases",
        headers=[
            "tasks at once",
            "makespan s",
            "tasks/min",
            "p50 ms",
            "p95 ms",
            "errors",
            "host CPU busy",
            "peak sandboxes running",
            "MiB per running sandbox (median)",
            "peak MiB, all sandboxes",
        ],
        rows=rows,
    )
    notes = []
    if levels:
        best = max(levels, key=lambda level: level["tasks_per_minute"])
        notes.append(
            f"Throughput peaks at {best['tasks_per_minute']:.1f} tasks/min with {best['tasks']:.0f} at once "
            f"({best['tasks_per_minute'] / (ctx.client.info().get('NCPU') or 1):.1f} tasks/min per core); "
            f"errors over all levels: {sum(int(level['errors']) for level in levels)}."
        )
    notes += [f"Error: {error}" for error in errors[:5]]
    return BenchResult(
        key="B3",
        title="concurrent tasks: throughput and scaling",
        started_at=started_at,
        duration_seconds=round(budget.elapsed(), 1),
        tables=[table],
        notes=notes,
        data={"levels": to_json(levels), "errors": to_json(errors)},
    )
