"""B6: memory per idle sandbox: 8 hardened sandboxes running ``sleep``, host memory before and after.

Three views: the drop in the host's MemAvailable divided by 8 (everything:
runc's leftovers, the shim, the cgroup, page cache), the cgroup's own usage
per container (tini + sleep + its share of the page cache), and the RSS of each
container's containerd shim (outside the cgroup).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bench.harness import (
    BenchBackend,
    BenchContext,
    BenchResult,
    Budget,
    Stats,
    Table,
    expect,
    iter_with_budget,
    timing_table,
)
from bench.specs import HardenedSpecs

if TYPE_CHECKING:
    from controller.sandbox.backend import SandboxHandle

log = logging.getLogger("bench.b6")

SANDBOXES = 8
CYCLES = 3
MIB = 1024 * 1024
CGROUP_MEMORY = Path("/sys/fs/cgroup/memory/docker")


def mem_available() -> int:
    """MemAvailable of /proc/meminfo, in bytes (median of 5 reads, 0.1 s apart)."""
    reads: list[int] = []
    for _ in range(5):
        lines = Path("/proc/meminfo").read_text().splitlines()
        reads += [int(x.split()[1]) * 1024 for x in lines if x.startswith("MemAvailable:")]
        time.sleep(0.1)
    return int(statistics.median(reads))


def cgroup_usage(container_id: str) -> int | None:
    """The container's memory cgroup usage (cgroup v1, cgroupfs driver), or None elsewhere."""
    path = CGROUP_MEMORY / container_id / "memory.usage_in_bytes"
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def shim_rss(container_id: str) -> int | None:
    """RSS of the containerd shim serving ``container_id`` (found by its ``-id`` argument)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            if not args or b"containerd-shim" not in args[0] or container_id.encode() not in args:
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            continue
    return None


@dataclass
class _Cycle:
    """One start-measure-remove cycle of ``count`` idle sandboxes."""

    drop: int
    """MemAvailable before minus while they idle, in bytes."""
    returned: int
    """MemAvailable after removal minus before (about 0 when all is given back)."""
    cgroups: list[int]
    shims: list[int]
    removals: list[float]


def _cycle(backend: BenchBackend, specs: HardenedSpecs, count: int) -> _Cycle:
    handles: list[SandboxHandle] = []
    removals: list[float] = []
    before = mem_available()
    try:
        for _ in range(count):
            handle = backend.create(specs.spec())
            handles.append(handle)
            backend.start(handle)
        time.sleep(2)  # let the shims and sleeps settle
        for handle in handles:
            expect(backend.inspect(handle)["State"]["Running"], f"{handle.name} is not running")
        during = mem_available()
        cgroups = [u for u in (cgroup_usage(h.id) for h in handles) if u is not None]
        shims = [r for r in (shim_rss(h.id) for h in handles) if r is not None]
    finally:
        for handle in handles:
            began = time.perf_counter()
            backend.remove(handle)
            removals.append(time.perf_counter() - began)
    time.sleep(1)
    return _Cycle(before - during, mem_available() - before, cgroups, shims, removals)


def run(ctx: BenchContext) -> BenchResult:
    """Three cycles of 8 idle sandboxes: medians of the memory views; removal of running ones, timed."""
    started_at, budget = datetime.now(UTC), Budget(60)
    count = ctx.reps(SANDBOXES, 2)
    specs = HardenedSpecs(ctx, "b6", ["sleep", "600"])
    backend = BenchBackend(ctx.client)
    cycles = [_cycle(backend, specs, count) for _ in iter_with_budget(ctx.reps(CYCLES, 1), budget)]
    drops = [c.drop / count / MIB for c in cycles]
    per_sandbox = statistics.median(drops)
    cgroups = [u for c in cycles for u in c.cgroups]
    shims = [r for c in cycles for r in c.shims]
    removals = [r for c in cycles for r in c.removals]
    returned = statistics.median(c.returned for c in cycles) / MIB
    cgroup_mib = statistics.median(cgroups) / MIB if cgroups else math.nan
    shim_mib = statistics.median(shims) / MIB if shims else math.nan
    rows = [
        [
            "cgroup memory usage / sandbox (median)",
            f"{cgroup_mib:.1f}",
            "tini + sleep + page cache charged to the container",
        ],
        [
            "containerd shim RSS / sandbox (median)",
            f"{shim_mib:.1f}",
            "outside the container's cgroup",
        ],
        ["attributable total / sandbox", f"{cgroup_mib + shim_mib:.1f}", "cgroup + shim"],
        [
            "host MemAvailable drop / sandbox (median of cycles)",
            f"{per_sandbox:.1f}",
            "per cycle: "
            + ", ".join(f"{d:.1f}" for d in drops)
            + "; skewed by anything else running",
        ],
        ["MemAvailable after removal minus before", f"{returned:+.1f}", "total, median of cycles"],
    ]
    table = Table(
        title=f"{count} idle hardened sandboxes (`sleep 600`), {len(cycles)} cycles",
        headers=["measure", "MiB", "note"],
        rows=rows,
    )
    remove_table, remove_data = timing_table(
        "Removing a running sandbox (kill + remove)", {"DockerBackend.remove": removals}
    )
    removal = Stats.of_seconds(removals)
    notes = [
        (
            f"An idle sandbox costs about {cgroup_mib + shim_mib:.0f} MiB that can be attributed to it, most of it "
            f"the containerd shim ({shim_mib:.0f} MiB); the host's MemAvailable moved by {-per_sandbox:+.1f} MiB a "
            "sandbox, within the noise of everything else on the machine. The 2 GiB limit of the be-python "
            "policy is a ceiling, not a reservation."
        ),
        (
            f"Removing a running sandbox takes {removal.median_ms:.0f} ms median ({removal.p95_ms:.0f} ms p95): "
            "init + SIGKILL, so no 10 s stop grace."
        ),
    ]
    return BenchResult(
        key="B6",
        title="memory per idle sandbox",
        started_at=started_at,
        duration_seconds=round(budget.elapsed(), 1),
        tables=[table, remove_table],
        notes=notes,
        data={
            "sandboxes": count,
            "cycles": len(cycles),
            "mem_available_drop_per_sandbox_mib": [round(d, 2) for d in drops],
            "cgroup_usage_mib": [round(u / MIB, 2) for u in cgroups],
            "shim_rss_mib": [round(r / MIB, 2) for r in shims],
            "remove_running": remove_data,
        },
    )
