"""B9: the verify stage on the finished example project, this checkout's checks against an earlier revision's.

Issue "The ten checks, measured on code nobody here wrote" asks that the stronger
checks (the contract run above all) keep the verify stage within 1.5x of what it
was. Both variants run B4's verify script on the host, interleaved, each in a
fresh process on a fresh copy of the finished example (hello-api with the
greetings task done): the baseline from ``git archive`` of a revision
(``TASKBOX_BENCH_VERIFY_BASELINE``, default the last commit before this round's
checks), the current one from this checkout. The ratio of medians is the answer;
absolute times move with the machine's load.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bench.b4_verify import RESULT_PREFIX, VERIFY_SCRIPT
from bench.harness import BenchContext, BenchResult, Budget, expect, iter_with_budget, timing_table
from bench.projects import example_task, finished_example_repo
from controller.settings import PROJECT_ROOT

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger("bench.b9")

#: The revision whose checks are the "before": the last commit of the first round.
DEFAULT_BASELINE = "5e81a43"
BEFORE = "before: verify()"
AFTER = "after: verify()"
BEFORE_PROCESS = "before: python process"
AFTER_PROCESS = "after: python process"


def _export(revision: str, where: Path) -> Path:
    """The tree of ``revision`` of this checkout, unpacked with the stdlib's safe tar filter."""
    archive = subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "archive", "--format=tar", revision],
        capture_output=True,
        check=True,
    ).stdout
    where.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(where, filter="data")
    return where


def _path_for(tree: Path) -> str:
    """PYTHONPATH that makes ``tree``'s controller, wire package and runner the ones imported."""
    return os.pathsep.join([str(tree), str(tree / "sandbox-image" / "runner")])


def _run(tree: Path, repo: Path, work: Path, args: list[str]) -> tuple[float, dict[str, Any]]:
    """One fresh process verifying a fresh copy of the finished example with ``tree``'s checks."""
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(repo, work, ignore=shutil.ignore_patterns(".git"))
    scratch = work.parent / f"{work.name}-scratch"
    if scratch.exists():
        shutil.rmtree(scratch)
    env = {**os.environ, "PYTHONPATH": _path_for(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-P", "-c", VERIFY_SCRIPT, str(scratch), *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    elapsed = time.perf_counter() - started
    line = next((x for x in done.stdout.splitlines() if x.startswith(RESULT_PREFIX)), None)
    expect(line is not None, f"the verify script printed no result: {done.stderr[-800:]}")
    answer: dict[str, Any] = json.loads(str(line)[len(RESULT_PREFIX) :])
    expect(answer["passed"], f"verification of the finished example failed with {tree}: {answer}")
    return elapsed, answer


def run(ctx: BenchContext) -> BenchResult:
    """Interleave the two variants N times; report medians and the after/before ratio."""
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    root = ctx.folder("b9")
    baseline = os.environ.get("TASKBOX_BENCH_VERIFY_BASELINE", DEFAULT_BASELINE)
    before_tree = _export(baseline, root / "before-tree")
    repo, changed = finished_example_repo(root / "repo")
    args = [json.dumps(example_task().owns_paths), json.dumps(changed)]
    variants = {"before": before_tree, "after": PROJECT_ROOT}
    for name, tree in variants.items():  # warm-up: bytecode, page cache
        _run(tree, repo, root / f"work-{name}", args)
    series: dict[str, list[float]] = {BEFORE: [], AFTER: [], BEFORE_PROCESS: [], AFTER_PROCESS: []}
    budget = Budget(seconds=300)
    for _ in iter_with_budget(ctx.reps(5, 2), budget):
        for name, tree in variants.items():
            elapsed, answer = _run(tree, repo, root / f"work-{name}", args)
            series[f"{name}: verify()"].append(float(answer["verify_s"]))
            series[f"{name}: python process"].append(elapsed)
    table, data = timing_table(
        f"B9: verify() on the finished example, {baseline} (before) vs this checkout (after)",
        series,
        floor=BEFORE,
    )
    return BenchResult(
        key="b9",
        title="The verify stage before and after a change of the checks",
        started_at=started_at,
        duration_seconds=round(time.perf_counter() - started, 1),
        tables=[table],
        notes=[
            (
                f"before = `git archive {baseline}`, after = this checkout; both on the host, "
                "interleaved, each a fresh process on a fresh copy of the finished example."
            ),
            "Target (issue 11): after / before <= 1.5 for verify().",
        ],
        data={"baseline": baseline, "series": data},
    )
