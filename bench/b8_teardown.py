"""B8: teardown and leaks: 50 sandbox runs the way ``taskbox sandbox run`` does them, then count what is left.

Each run plans, stages, runs ``python3 -c 'print(1)'`` in the hardened
sandbox and removes container and staging folder. Before and after: the
bench's own containers, the engine's containers and volumes (others' tests may move these), the memory cgroups under docker/, containerd
shims, this process's open files and threads, and the staging folders.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bench.harness import (
    CONTROLLER_ID,
    BenchBackend,
    BenchContext,
    BenchResult,
    Budget,
    Marks,
    Table,
    bench_containers,
    expect,
    iter_with_budget,
    timing_table,
)
from bench.projects import tiny_repo, tiny_task
from controller.sandbox.task_sandbox import run_in_task_sandbox

if TYPE_CHECKING:
    import docker

log = logging.getLogger("bench.b8")

RUNS = 50
COMMAND = ["python3", "-c", "print(1)"]
CGROUP_MEMORY = Path("/sys/fs/cgroup/memory/docker")


def _shims() -> int:
    count = 0
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"containerd-shim" in (proc / "cmdline").read_bytes().split(b"\0")[0]:
                    count += 1
            except (OSError, IndexError):
                continue
    return count


def _cgroups() -> int:
    try:
        return sum(1 for p in CGROUP_MEMORY.iterdir() if p.is_dir())
    except OSError:
        return 0


def census(client: docker.DockerClient, runs_dir: Path) -> dict[str, int]:
    """What exists now that a sandbox could leave behind."""
    return {
        "bench containers (labelled)": len(bench_containers(client)),
        "containers (all, engine)": len(client.api.containers(all=True)),
        "volumes (engine)": len(client.api.volumes().get("Volumes") or []),
        "memory cgroups under docker/": _cgroups(),
        "containerd shims": _shims(),
        "staging folders (runs/*/stage)": sum(1 for _ in runs_dir.glob("*/stage")),
        "open files of the bench process": sum(1 for _ in Path("/proc/self/fd").iterdir()),
        "threads of the bench process": threading.active_count(),
    }


def run(ctx: BenchContext) -> BenchResult:
    """50 runs, the census before and after, and the remove latency of each run."""
    started_at, budget = datetime.now(UTC), Budget(90)
    runs = ctx.reps(RUNS, 5)
    root = ctx.folder("b8")
    repo, task = tiny_repo(root / "repo"), tiny_task()
    runs_dir = root / "runs"
    runs_dir.mkdir()
    backend = BenchBackend(ctx.client)

    def one() -> float | None:
        marks = backend.marks = Marks()
        result = run_in_task_sandbox(
            task,
            repo=repo,
            command=COMMAND,
            backend=backend,
            policies_dir=ctx.settings.policies_dir,
            runs_dir=runs_dir,
            controller_id=CONTROLLER_ID,
        )
        backend.marks = None
        expect(result.run.outcome.exit_code == 0, f"run ended {result.run.outcome.describe()}")
        begin, end = marks.first("remove:begin"), marks.last("remove:end")
        return None if begin is None or end is None else end - begin

    # One run first: the engine client's connection pool opens its sockets once, not per run.
    one()
    before = census(ctx.client, runs_dir)
    removes: list[float] = []
    done = 0
    for _ in iter_with_budget(runs, budget):
        seconds = one()
        if seconds is not None:
            removes.append(seconds)
        done += 1
    after = census(ctx.client, runs_dir)
    orphans = backend.find_orphans(CONTROLLER_ID)
    rows = [
        [name, str(before[name]), str(after[name]), f"{after[name] - before[name]:+d}"]
        for name in before
    ]
    rows.append(["Taskbox orphans (find_orphans)", "", str(len(orphans)), ""])
    table = Table(
        title=f"After {done} sandbox runs",
        headers=["resource", "before", "after", "change"],
        rows=rows,
    )
    remove_table, remove_data = timing_table(
        "DockerBackend.remove after the command exited", {"remove (exited)": removes}
    )
    # Only growth is a leak; engine-wide counts also move with other people's containers.
    leaks = {name: after[name] - before[name] for name in before if after[name] > before[name]}
    notes = [
        "No leak: nothing grew over the runs, and no orphan is left."
        if not leaks and not orphans
        else f"Grew over the runs: {leaks}; orphans: {[o.name for o in orphans]}.",
        "Engine-wide counts (containers, volumes, cgroups, shims) include other users of the engine.",
    ]
    return BenchResult(
        key="B8",
        title="teardown and leaks",
        started_at=started_at,
        duration_seconds=round(budget.elapsed(), 1),
        tables=[table, remove_table],
        notes=notes,
        data={
            "runs": done,
            "before": dict(before),
            "after": dict(after),
            "orphans": [o.name for o in orphans],
            "remove": remove_data,
        },
    )
